# Copyright (c) pg2redis developers
#
# A snapshot watermark read from WAL and copied cannot stand in for the
# real one (attack review of the F7 fix: a role that may decode WAL saw the
# nonce in a test_decoding slot, and an unprivileged role emitted the next
# chunk's high watermark ahead of time).  The worker now recognizes its
# watermarks by the WAL position it wrote them at, and the high one only
# after the low one.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use Pg2RedisTest;
use PostgreSQL::Test::Utils;
use Test::More;

my $redis = start_redis();
my $node  = new_node('wmwal', redis => $redis,
	conf => [ "wal_level = logical" ]);
$node->safe_psql('postgres', q{
	CREATE TABLE acct (id int PRIMARY KEY, balance int);
	ALTER TABLE acct REPLICA IDENTITY FULL;
	CREATE TABLE junk (i int, pad text);
	SELECT pg2redis_add_rule('acct', 'snapshot', ARRAY['HSET', 'a:{id}', 'balance', '{balance}']);
	SELECT pg2redis_add_rule('acct', 'insert', ARRAY['HSET', 'a:{id}', 'balance', '{balance}']);
	SELECT pg2redis_add_rule('acct', 'update', ARRAY['HINCRBY', 'a:{id}', 'balance', '{diff:balance}']);
	INSERT INTO acct VALUES (1, 120);
	CREATE ROLE dave LOGIN;
	SELECT 'init' FROM pg_create_logical_replication_slot('spy', 'test_decoding');
});
wait_for_redis($node);

# One snapshot request, to learn the nonce and the numbering from WAL.
my $r1 = $node->safe_psql('postgres', q{SELECT pg2redis_snapshot('acct')});
ok(snapshot_reaches($node, $r1, 'done', 60), 'a first snapshot is done');
my $seen = $node->safe_psql('postgres',
	q{SELECT string_agg(data, E'\n') FROM pg_logical_slot_get_changes('spy', NULL, NULL)
	  WHERE data LIKE 'message:%pg2redis%H:%'});
my ($seq, $nonce) = $seen =~ /H:\Q$r1\E:(\d+):([0-9a-f]+)/;
ok(defined $nonce, 'the high watermark and its nonce can be read from WAL');

# Forge the next request's high watermark ahead of it, behind a backlog.
my $next = $r1 + 1;
my $nseq = $seq + 1;
$node->safe_psql('postgres', q{
	INSERT INTO junk SELECT g, repeat('x', 50) FROM generate_series(1, 300000) g;
});
$node->safe_psql('postgres',
	"SELECT pg_logical_emit_message(false, 'pg2redis', 'H:$next:$nseq:$nonce')",
	extra_params => [ '-U', 'dave' ]);
$node->safe_psql('postgres', q{UPDATE acct SET balance = 150 WHERE id = 1});
my $r2 = $node->safe_psql('postgres', q{SELECT pg2redis_snapshot('acct')});
is($r2, $next, 'the request got the number the forger predicted');
ok(snapshot_reaches($node, $r2, 'done', 120), 'the snapshot is done');
wait_for_redis($node, 120);
is($redis->call('HGET', 'a:1', 'balance'), '150',
	'the update was applied once: the forged watermark was ignored');

$node->safe_psql('postgres', q{SELECT pg_drop_replication_slot('spy')});
$node->stop;
done_testing();
