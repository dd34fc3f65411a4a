# Copyright (c) pg2redis developers
#
# When a new slot's initial load sweeps the keys no row renders
# (pg2redis.load_sweep, issue 15 item 3).  A first start leaves keys that
# were in Redis before any stream alone; a slot made again over an earlier
# stream (here pg2redis_resync(); a failover is t/210) removes the keys of
# the table's patterns that no row renders, and only those; "never" never
# sweeps, "always" sweeps on a first start too.  A slot found while Redis
# holds another system's stream is made again.  Redis records which server
# and timeline made the slot (pg2redis:<slot>:origin).

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use Pg2RedisTest;
use PostgreSQL::Test::Utils;
use Test::More;

my $redis = start_redis();
# keys that were there before: one of the table's pattern, others not
$redis->call('HSET', 't:999', 'v', 'before');
$redis->call('SET', 'other:1', 'x');
$redis->call('SET', 'count', '1000');

my $node = new_node('sweep', redis => $redis, flush_interval => '5ms',
	create_extension => 0);
$node->safe_psql('postgres', q{
	CREATE EXTENSION pg2redis;
	CREATE TABLE t (id int PRIMARY KEY, v text);
	INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 20) g;
	SELECT pg2redis_add_rule('t', op, ARRAY['HSET', 't:{id}', '{pairs:*}'])
	  FROM unnest(ARRAY['insert', 'update']) op;
	SELECT pg2redis_add_rule('t', 'delete', 'DEL t:{id}');
	SELECT pg2redis_add_rule('t', 'insert', 'INCR count');
});
wait_for_status($node, 'state', 'streaming', 60, 'the worker streams');
$node->safe_psql('postgres', "INSERT INTO t VALUES (21, 'v21')");
wait_for_redis($node);
is($redis->call('EXISTS', 't:999'), 1,
	'a first start leaves a key that was there before alone');
my $sysid = $node->safe_psql('postgres',
	'SELECT system_identifier FROM pg_control_system()');
is($redis->call('GET', 'pg2redis:pg2redis:origin'), "$sysid:1",
	'Redis records the system identifier and timeline of the stream');

# resync: pg2redis_resync() makes a new slot; wait_resynced waits for it
# to stream again, past a row inserted after the call
sub resync
{
	my ($label) = @_;
	my $offset = -s $node->logfile;
	$node->safe_psql('postgres', 'SELECT pg2redis_resync()');
	ok(poll_until(60, sub {
		$node->log_contains('replication slot "pg2redis" created', $offset)
	}), "$label: the slot is made again");
	wait_for_status($node, 'state', 'streaming', 60, "$label: streaming");
	wait_for_redis($node);
	return $offset;
}

# A slot found while Redis holds the origin of another system (a server
# restored with its slot) belongs to a history Redis does not follow: it is
# made again (here without a sweep: "never").
$node->append_conf('postgresql.conf', "pg2redis.load_sweep = never\n");
$redis->call('SET', 'pg2redis:pg2redis:origin', '12345:1');
my $offset = -s $node->logfile;
$node->restart;
ok(poll_until(60, sub {
	$node->log_contains('replication slot "pg2redis" created', $offset)
}), 'a slot of another history is made again');
ok($node->log_contains('does not belong to the stream Redis holds', $offset),
	'with a WARNING');
wait_for_status($node, 'state', 'streaming', 60, 'never: streaming');
wait_for_redis($node);
is($redis->call('GET', 'pg2redis:pg2redis:origin'), "$sysid:1",
	'the origin is this server again');
is($redis->call('EXISTS', 't:999'), 1, 'load_sweep = never: nothing is swept');
ok(!$node->log_contains(qr/followed by a sweep|the sweep after/, $offset),
	'and no sweep is logged');

$node->append_conf('postgresql.conf', "pg2redis.load_sweep = auto\n");
$node->reload;
$node->safe_psql('postgres', 'SELECT pg2redis_wait()');
$offset = resync('auto');
is($redis->call('EXISTS', 't:999'), 0,
	'load_sweep = auto: a resync over an earlier stream sweeps the orphan');
is($redis->call('EXISTS', 'other:1'), 1, 'a key of no pattern is kept');
ok($redis->call('GET', 'count') > 1000, 'a counter of the table is kept');
check_table_in_redis($node, $redis, 't', 't');
ok($node->log_contains(qr/the sweep after the initial load removed 1 keys/, $offset),
	'the sweep logs its count');

# "always": also when Redis holds no stream (as on a first start)
$redis->call('HSET', 't:998', 'v', 'before');
$redis->call('DEL', 'pg2redis:pg2redis:origin', 'pg2redis:pg2redis:lsn');
$node->append_conf('postgresql.conf', "pg2redis.load_sweep = always\n");
$node->reload;
$offset = resync('always');
ok($node->log_contains('pg2redis.load_sweep = always', $offset),
	'load_sweep = always: a load without an earlier stream sweeps');
is($redis->call('EXISTS', 't:998'), 0, 'and removes the orphan');
check_table_in_redis($node, $redis, 't', 't');

$node->stop;
done_testing();
