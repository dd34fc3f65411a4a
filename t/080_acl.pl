# Copyright (c) pg2redis developers
#
# An ACL user limited to some commands and key patterns: what it may do is
# applied; a command it may not run, or a key outside its patterns, is
# refused by Redis (NOPERM) and becomes a dead letter, and the stream goes
# on.  The password never shows in the status or the log.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Pg2RedisTest;
use Test::More;

my $redis = start_redis(name => 'acl');
# the user may run MULTI/EXEC/GET/SET/SADD on t:* and its own position key
$redis->call('ACL', 'SETUSER', 'app', 'on', '>app-secret', 'resetkeys',
	'~t:*', '~pg2redis:*', '-@all', '+multi', '+exec', '+get', '+set', '+sadd',
	'+ping');

my $node = new_node(
	'acl',
	redis_url => 'redis://app:app-secret@127.0.0.1:' . $redis->port . '/0',
	flush_interval => '5ms');
wait_for_status($node, 'state', 'streaming', 60, 'an ACL user connects');

$node->safe_psql(
	'postgres', q{
	CREATE TABLE t (id int PRIMARY KEY, v text);
	SELECT pg2redis_add_rule('t', 'insert', 'SET t:{id} {v}');
	SELECT pg2redis_add_rule('t', 'insert', 'SADD other:{id} {v}');   -- key outside ~t:*
	SELECT pg2redis_add_rule('t', 'insert', 'HSET t:h:{id} v {v}');    -- command not granted
	SELECT pg2redis_add_rule('t', 'insert', 'SADD t:ids {id}');
	INSERT INTO t VALUES (1, 'one'), (2, 'two');
	INSERT INTO t VALUES (3, 'three');
});
wait_for_redis($node, 60, 'the allowed commands are applied');
is($redis->call('GET', 't:3'), 'three', 'SET on an allowed key is applied');
is_deeply([ redis_smembers($redis, 't:ids') ], [ 1, 2, 3 ],
	'the other allowed command of the same transactions is applied');
is($redis->call('EXISTS', 'other:1'), '0', 'nothing was written outside the key patterns');
# dead letters are recorded between decoding batches, shortly after
ok( $node->poll_query_until('postgres',
		"SELECT count(*) = 6 FROM pg2redis.dead_letters WHERE error LIKE 'NOPERM%'"),
	'each denied command (2 per row) is a dead letter with Redis\'s NOPERM error');
like(
	$node->safe_psql('postgres',
		"SELECT string_agg(DISTINCT command[1], ',' ORDER BY command[1]) FROM pg2redis.dead_letters"),
	qr/^HSET,SADD$/,
	'the dead letters hold the denied commands');
is($node->safe_psql('postgres', "SELECT pg2redis_redis('PING')"),
	'"PONG"', 'pg2redis_redis() authenticates as the ACL user');

$node->safe_psql('postgres', "INSERT INTO t VALUES (4, 'four')");
wait_for_redis($node, 30, 'the stream goes on');
is($redis->call('GET', 't:4'), 'four', 'a later change arrives');

# A slot made again over the stream (a resync, a failover) is followed by a
# sweep, which needs SCAN and DEL: refused, it is a WARNING, and the load
# is not made again for ever.
my $offset = -s $node->logfile;
$node->safe_psql('postgres', 'SELECT pg2redis_resync()');
ok(poll_until(60, sub {
	$node->log_contains('replication slot "pg2redis" created', $offset)
}), 'a resync makes the slot again');
ok($node->log_contains('the sweep after the initial load failed', $offset),
	'the sweep refused by Redis is a WARNING');
$node->safe_psql('postgres', "INSERT INTO t VALUES (5, 'five')");
wait_for_redis($node, 30, 'the stream goes on after the refused sweep');
is($redis->call('GET', 't:5'), 'five', 'a change after the resync arrives');
my @made = log_lines($node, qr/replication slot "pg2redis" created/, $offset);
is(scalar(@made), 1, 'the slot was made once') or diag(@made);

unlike(status_text($node), qr/app-secret/, 'the password is not in pg2redis_status()');
ok(!log_lines($node, qr/app-secret/), 'the password is not in the server log');

$node->stop;
done_testing();
