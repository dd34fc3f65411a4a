# Copyright (c) pg2redis developers
#
# A large redrive: N dead letters of one table (PG2REDIS_REDRIVE_KEYS,
# 20000 by default) redriven in one call.  The worker records the keys a
# request has left after each chunk (pg2redis.snapshot_batch_size keys), so
# a single request of all N keys rewrote O(N^2 / batch) keys and held them
# all in memory (200,000 keys: 132 MB of WAL).  pg2redis_redrive() queues
# requests of at most snapshot_batch_size keys each.  Prints the times and
# the WAL written.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use Pg2RedisTest;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);

my $n = $ENV{PG2REDIS_REDRIVE_KEYS} // 20000;
my $redis = start_redis(name => 'redrive_many');
my $batch = 2000;
my $node = new_node(
	'redrive_many',
	redis => $redis,
	flush_interval => '5ms',
	conf => ["pg2redis.snapshot_batch_size = $batch"]);

$node->safe_psql(
	'postgres', qq{
	CREATE TABLE big (id int PRIMARY KEY, v text);
	INSERT INTO big SELECT g, 'v' || g FROM generate_series(1, $n) g;
	SELECT pg2redis_add_rule('big', 'snapshot', 'HSET big:{id} v {v}');
	INSERT INTO pg2redis.dead_letters (relation, op, command, error, key_index, key)
	SELECT 'big', 'insert', '{}', 'WRONGTYPE', 'big_pkey'::regclass, ARRAY[g::text]
	  FROM generate_series(1, $n) g;
});
wait_for_redis($node);
my $lsn0 = $node->safe_psql('postgres', 'SELECT pg_current_wal_lsn()');
my $t0 = time;
my $reqs = $node->safe_psql('postgres',
	"SELECT count(*) || ' ' || max(keys) FROM pg2redis_redrive(relation => 'big')");
my $t1 = time;
my $parts = int(($n + $batch - 1) / $batch);
is($reqs, "$parts " . ($n < $batch ? $n : $batch),
	"$n keys in $parts requests of at most $batch keys");
ok( $node->poll_query_until(
		'postgres',
		"SELECT count(*) > 0 AND bool_and(state = 'done') FROM pg2redis.snapshots"),
	"the redrive of $n keys is done");
my $t2 = time;
my $wal = $node->safe_psql('postgres',
	"SELECT pg_size_pretty(pg_current_wal_lsn() - '$lsn0')");
is(scalar(redis_keys($redis, 'big:*')), $n, 'every row written');
diag(sprintf("%d keys: pg2redis_redrive() %.2f s, request %.2f s, WAL %s",
	$n, $t1 - $t0, $t2 - $t1, $wal));

$node->stop;
$redis->stop;
done_testing();
