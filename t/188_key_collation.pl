# Copyright (c) pg2redis developers
#
# Attack on key-ordered reading (src/snapshot/keyorder.c, commit f4d1aea): chunks are
# read "ORDER BY key" and "WHERE key > last key", in the collation of the
# key column, not of the key index.  A replica identity index in a
# deterministic collation (here "C") on a column whose collation is
# nondeterministic (case-insensitive ICU) holds 'k1' and 'K1' as two keys,
# which the column's collation finds equal: when a chunk ends between them,
# the next chunk's "> 'k1'" skips 'K1'.  Rows are missed, by the initial
# load and by a snapshot on demand alike.
#
# Expected: every row is in Redis.  The key is compared and ordered in its
# index's collation (COLLATE), in which it is unique.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use Pg2RedisTest;
use PostgreSQL::Test::Utils;
use Test::More;

my $redis = start_redis();
my $node  = new_node(
	'key_collation',
	redis => $redis,
	conf  => ['pg2redis.enabled = off', 'pg2redis.snapshot_batch_size = 10'],
	wait_streaming => 0);

# 'a0', then 50 pairs a case-insensitive collation finds equal: a chunk of
# 10 rows ends on the first of a pair
$node->safe_psql('postgres', q{
	CREATE COLLATION ci (provider = icu, locale = 'und-u-ks-level2', deterministic = false);
	CREATE TABLE words (k text COLLATE ci NOT NULL, n int);
	CREATE UNIQUE INDEX words_k_c ON words (k COLLATE "C");
	ALTER TABLE words REPLICA IDENTITY USING INDEX words_k_c;
	INSERT INTO words VALUES ('a0', 0);
	INSERT INTO words SELECT 'k' || lpad(g::text, 3, '0'), g FROM generate_series(1, 50) g;
	INSERT INTO words SELECT 'K' || lpad(g::text, 3, '0'), g FROM generate_series(1, 50) g;
	SELECT pg2redis_add_rule('words', 'insert', 'SADD words {k}');
});
# A table with a key is read by a key-ordered query; run as its owner, it
# would be bound by FORCE ROW LEVEL SECURITY: a multi-tenant table whose
# policies bind its owner too (a tenant setting the worker never has) was
# loaded with no row, silently (commit f4d1aea), where the heap scan of the
# load read every row.  Without a filter the query runs no one's code, and
# runs as the worker: every row, in the load and in a snapshot on demand.
$node->safe_psql('postgres', q{
	CREATE ROLE alice LOGIN;
	CREATE TABLE private (id int PRIMARY KEY, tenant text NOT NULL);
	INSERT INTO private SELECT g, 't' || (g % 3) FROM generate_series(1, 30) g;
	ALTER TABLE private OWNER TO alice;
	ALTER TABLE private ENABLE ROW LEVEL SECURITY;
	ALTER TABLE private FORCE ROW LEVEL SECURITY;
	CREATE POLICY by_tenant ON private
		USING (tenant = current_setting('app.tenant', true));
	SELECT pg2redis_add_rule('private', 'insert', 'SADD private {id}');
});
my $rows = $node->safe_psql('postgres', 'SELECT count(*) FROM words');
is($rows, '101', 'the table holds 101 keys');

$node->safe_psql('postgres', 'ALTER SYSTEM SET pg2redis.enabled = on');
$node->reload;
wait_for_status($node, 'state', 'streaming', 60, 'the initial load is done');
wait_for_redis($node);
is($redis->call('SCARD', 'words'), $rows, 'the initial load sends every row');
is($redis->call('SCARD', 'private'), 30,
	'the initial load sends every row of a table with FORCE ROW LEVEL SECURITY');

$redis->call('DEL', 'words', 'private');
$node->safe_psql('postgres', q{SELECT pg2redis_snapshot('words')});
$node->safe_psql('postgres', q{SELECT pg2redis_snapshot('private')});
ok(poll_until(60, sub {
		$node->safe_psql('postgres',
			q{SELECT count(*) FROM pg2redis_snapshots WHERE state NOT IN ('done', 'failed')}) eq '0' }),
	'the snapshot on demand ends');
is($node->safe_psql('postgres', q{SELECT string_agg(state, ',') FROM pg2redis_snapshots}),
	'done,done', 'the snapshots on demand are done');
wait_for_redis($node);
is($redis->call('SCARD', 'words'), $rows, 'the snapshot on demand sends every row');
is($redis->call('SCARD', 'private'), 30,
	'a snapshot on demand sends every row of a table with FORCE ROW LEVEL SECURITY');

# The initial load renders the tables without a key into a temporary file
# before it sends them (commit 8e2dd3c); with a temp_file_limit below their
# rendered size (here 1 MB for 3.5 MB of commands) every load failed with
# "temporary file size exceeds temp_file_limit", and no table ever reached
# Redis while the setting stayed.  The file now stops at half the limit,
# and the rest is read chunk by chunk, as any table (a rewrite of it during
# the load then makes the load start over).
$node->safe_psql('postgres', q{
	CREATE TABLE logs (v text);
	INSERT INTO logs SELECT repeat('x', 100) || g FROM generate_series(1, 30000) g;
	SELECT pg2redis_add_rule('logs', 'insert', 'SADD logs {v}');
	ALTER SYSTEM SET temp_file_limit = '1MB';
	SELECT pg_reload_conf();
});
$node->safe_psql('postgres', 'SELECT pg2redis_resync()');
ok(poll_until(60, sub {
		($redis->call('SCARD', 'logs') // 0) == 30000 }),
	'temp_file_limit below the keyless tables\' size: the load ends');
ok(log_lines($node, qr/tables without a key take more than half of temp_file_limit/),
	'the load says it reads the rest chunk by chunk');
$node->safe_psql('postgres', 'ALTER SYSTEM RESET temp_file_limit');
$node->reload;
wait_for_status($node, 'state', 'streaming', 60, 'the load ends without temp_file_limit');
wait_for_redis($node);
is($redis->call('SCARD', 'logs'), 30000, 'and sends every row');

$node->stop;
done_testing();
