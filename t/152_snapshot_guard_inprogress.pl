# Copyright (c) pg2redis developers
#
# Guard 1 of on-demand snapshots (streaming-core review, finding 12).  A
# commit can be in the WAL, decoded and applied to Redis, while its
# transaction is still in the proc array: here a synchronous replication
# wait for a standby that never comes holds transaction T there.  A chunk
# selected under a snapshot that does not see T would write the row as it
# was before T over T's change.  The worker remembered only the last 8192
# decoded transactions, so after 9000 more it selected the chunk anyway,
# and Redis kept the stale row.  Now the request waits for T to leave the
# proc array, while the stream goes on; once T is released, the snapshot
# sees T's row.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Pg2RedisTest;
use Test::More;

my $redis = start_redis(name => 'odguard');
my $node = new_node(
	'odguard',
	redis          => $redis,
	flush_interval => '5ms',
	# only a session that asks for it waits for the (missing) standby
	conf => [ "synchronous_standby_names = 'nosuchstandby'", 'synchronous_commit = local' ]);

$node->safe_psql(
	'postgres', q{
	CREATE TABLE t12 (id int PRIMARY KEY, v text);
	INSERT INTO t12 SELECT g, 'old' FROM generate_series(1, 10) g;
	SELECT pg2redis_add_rule('t12', op, ARRAY['HSET', 't12:{id}', '{pairs:*}'])
	  FROM unnest(ARRAY['insert', 'update']) op;
	CREATE TABLE filler (i int);
});
wait_for_redis($node, 60, 'set up');
my $first = $node->safe_psql('postgres', "SELECT pg2redis_snapshot('t12')");
ok(snapshot_reaches($node, $first, 'done', 60), 'a first snapshot is done');
wait_for_redis($node, 60, 'a first snapshot applied');
is($redis->call('HGET', 't12:1', 'v'), 'old', 'row 1 is in Redis');

# T commits locally and waits for the standby: its commit is decoded and
# applied, but it stays in the proc array.
my $t = start_psql_script($node,
	"SET synchronous_commit = on;\nUPDATE t12 SET v = 'T' WHERE id = 1;\n");
ok(poll_until(60, sub { $redis->call('HGET', 't12:1', 'v') eq 'T' }),
	"T's change is streamed while T waits for synchronous replication");
is( $node->safe_psql('postgres',
		"SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'SyncRep'"),
	'1',
	'T is still waiting');

# More decoded transactions than the old guard remembered.
$node->safe_psql('postgres',
	'DO $$ BEGIN FOR i IN 1..9000 LOOP INSERT INTO filler VALUES (i); COMMIT; END LOOP; END $$');
wait_for_redis($node, 120, '9000 transactions decoded');

my $rid = $node->safe_psql('postgres', "SELECT pg2redis_snapshot('t12')");
sleep 3;
is($node->safe_psql('postgres', "SELECT state, rows FROM pg2redis_snapshots WHERE id = $rid"),
	'running|0', 'the request waits for T to leave the proc array');
$node->safe_psql('postgres', "INSERT INTO t12 VALUES (100, 'during')");
ok(poll_until(30, sub { $redis->call('HGET', 't12:100', 'v') eq 'during' }),
	'the stream goes on meanwhile');

# Release T: no synchronous standby any more.
$node->safe_psql('postgres', "ALTER SYSTEM SET synchronous_standby_names = ''");
$node->reload;
my ($rc, $out, $err) = finish_psql_script($t);
is($rc, 0, 'T ended') or diag($err);
ok(snapshot_reaches($node, $rid, 'done', 60), 'the request is done once T has ended');
wait_for_redis($node, 60, 'caught up');
is($redis->call('HGET', 't12:1', 'v'), 'T', "the snapshot did not write the row as it was before T");
check_table_in_redis($node, $redis, 't12', 't12', 'Redis equals PostgreSQL');

$node->stop;
done_testing();
