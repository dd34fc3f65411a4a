# Copyright (c) pg2redis developers
#
# Redis slow or gone never blocks PostgreSQL users (issue 13, item 3;
# streaming-core review finding 5).  The initial load (and so
# pg2redis_resync()) read every mapped table in one transaction holding an
# AccessShareLock on each table it read (on every partition of a
# partitioned one, for the whole load) while it waited for Redis, with no
# time limit: an ALTER TABLE then waited as long as Redis was down, and
# every query on the table queued behind it.  Now each chunk of a table is
# read in a subtransaction that releases its locks before the load waits
# for Redis, and the load gives up after pg2redis.load_stall_timeout
# without an acknowledgement, leaving the tables Redis lacks to snapshots
# on demand (or, with a table that has no key, starting over).
#
# Redis is stopped (SIGSTOP) in the middle of a load: ALTER TABLE on mapped
# tables (plain, partitioned, with a snapshot filter) and VACUUM FULL
# complete within seconds, the worker holds no lock on them, and once Redis
# is back it equals PostgreSQL, also after rows were updated and deleted
# while it was stopped.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use Pg2RedisTest;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);

my $redis = start_redis();
my $node  = new_node(
	'load_stalled',
	redis => $redis,
	conf  => [paused_load_conf()],
	wait_streaming => 0);

$node->safe_psql('postgres', q{
	CREATE TABLE big (id int PRIMARY KEY, v text);
	INSERT INTO big SELECT g, 'v' || g FROM generate_series(1, 60000) g;
	CREATE TABLE parts (id int PRIMARY KEY, v text) PARTITION BY RANGE (id);
	CREATE TABLE parts_1 PARTITION OF parts FOR VALUES FROM (1) TO (15001);
	CREATE TABLE parts_2 PARTITION OF parts FOR VALUES FROM (15001) TO (30001);
	INSERT INTO parts SELECT g, 'p' || g FROM generate_series(1, 30000) g;
	CREATE TABLE filt (id int PRIMARY KEY, v text);
	INSERT INTO filt SELECT g, 'f' || g FROM generate_series(1, 10000) g;
	INSERT INTO pg2redis.snapshot_filters VALUES ('filt', 'id % 2 = 0');
});
foreach my $t ([ 'big', 'big' ], [ 'parts', 'part' ], [ 'filt', 'filt' ])
{
	my ($table, $prefix) = @$t;
	$node->safe_psql('postgres', qq{
		SELECT pg2redis_add_rule('$table', 'insert', 'HSET $prefix:{id} id {id} v {v}');
		SELECT pg2redis_add_rule('$table', 'update', 'HSET $prefix:{id} id {id} v {v}');
		SELECT pg2redis_add_rule('$table', 'delete', 'DEL $prefix:{id}');
	});
}

# check_redis compares every mapped table with Redis (the columns the rules
# write; the filtered table's rows that its filter keeps).
sub check_redis
{
	my ($label) = @_;
	check_table_in_redis($node, $redis, '(SELECT id, v FROM big)', 'big',
		"$label: big");
	check_table_in_redis($node, $redis, '(SELECT id, v FROM parts)', 'part',
		"$label: parts");
	check_table_in_redis($node, $redis, '(SELECT id, v FROM filt)', 'filt',
		"$label: filt", where => 'id % 2 = 0', ignore_extra => 0);
}

# stop_redis_mid_load waits for the worker to start loading, stops Redis,
# and checks that the load is still under way.
sub stop_redis_mid_load
{
	my ($label) = @_;
	ok(wait_for_load_start($node, 120),
		"$label: the load starts");
	$redis->pause;
	sleep(1);
	is(_state(), 'snapshotting', "$label: Redis stopped in the middle of the load")
	  or diag(status_text($node));
}

sub _state
{
	return $node->safe_psql('postgres', 'SELECT state FROM pg2redis_status()');
}

# timed runs SQL in a new session with a generous lock_timeout, and returns
# its duration in seconds and whether it succeeded.
sub timed
{
	my ($sql) = @_;
	my $t0 = time();
	my ($ret, $out, $err) = $node->psql('postgres',
		"SET lock_timeout = '20s'; $sql", timeout => 60);
	my $took = time() - $t0;
	diag("$sql: $err") if $ret != 0;
	return ($took, $ret == 0);
}

# worker_locks returns the relation locks the worker holds on the tables.
sub worker_locks
{
	return $node->safe_psql('postgres', q{
		SELECT coalesce(string_agg(l.relation::regclass::text || ' ' || l.mode, ', '), '')
		  FROM pg_locks l, pg2redis_status() s
		 WHERE l.pid = s.worker_pid AND l.locktype = 'relation'
		   AND l.relation IN ('big'::regclass, 'parts'::regclass, 'parts_1'::regclass,
		                      'parts_2'::regclass, 'filt'::regclass)});
}

# 1. The first load, Redis stopped in its middle: DDL goes through at once.
$node->safe_psql('postgres', 'ALTER SYSTEM SET pg2redis.enabled = on');
$node->reload;
stop_redis_mid_load('first load');
is(worker_locks(), '', 'the worker holds no lock on a mapped table while Redis is stopped');
foreach my $sql (
	'ALTER TABLE big ADD COLUMN x int',
	'ALTER TABLE parts ADD COLUMN x int',
	'ALTER TABLE filt ADD COLUMN x int',
	'VACUUM FULL filt')
{
	my ($took, $ok) = timed($sql);
	ok($ok && $took < 10, sprintf("'%s' completes while Redis is stopped (%.1f s)", $sql, $took));
}
$node->safe_psql('postgres', q{
	UPDATE big SET v = 'changed' WHERE id <= 10;
	DELETE FROM big WHERE id BETWEEN 11 AND 20;
	UPDATE parts SET v = 'changed' WHERE id IN (1, 20000);
});
$redis->resume;
wait_for_status($node, 'state', 'streaming', 120, 'first load: streaming once Redis is back');
ok(poll_until(120, sub {
		$node->safe_psql('postgres',
			q{SELECT count(*) FROM pg2redis_snapshots WHERE state NOT IN ('done')}) eq '0' }),
	'first load: the snapshot of the rewritten table is done');
wait_for_redis($node);
check_redis('first load');
is($redis->call('HGET', 'big:1', 'v'), 'changed', 'an update made while Redis was stopped arrives');
is($redis->call('EXISTS', 'big:15'), '0', 'a delete made while Redis was stopped arrives');

# 2. A resync whose load gives up: Redis stalls longer than
# pg2redis.load_stall_timeout.  The tables Redis lacks are left to
# snapshots on demand; rows deleted meanwhile do not come back.
$node->safe_psql('postgres', "ALTER SYSTEM SET pg2redis.load_stall_timeout = '3s'");
$node->reload;
$redis->call('FLUSHALL');
my $offset = -s $node->logfile;
$node->safe_psql('postgres', 'SELECT pg2redis_resync()');
stop_redis_mid_load('resync');
is(worker_locks(), '', 'the worker holds no lock on a mapped table during the resync either');
my ($took, $ok) = timed('ALTER TABLE big ADD COLUMN y int');
ok($ok && $took < 10, sprintf("ALTER TABLE completes while Redis is stopped (%.1f s)", $took));
$node->safe_psql('postgres', q{
	UPDATE big SET v = 'again' WHERE id <= 100;
	DELETE FROM big WHERE id BETWEEN 101 AND 200;
	DELETE FROM parts WHERE id BETWEEN 1 AND 50;
});
ok(poll_until(60, sub { log_lines($node, qr/Redis acknowledged nothing for 3000 ms during the initial load/, $offset) }),
	'the load gives up after pg2redis.load_stall_timeout');
ok(poll_until(60, sub {
		$node->safe_psql('postgres',
			q{SELECT count(*) FROM pg2redis_snapshots WHERE state = 'pending'}) ne '0' }),
	'and leaves what Redis lacks to snapshots on demand');
like(status_row($node)->{last_error} // '', qr/initial load gave up/, 'last_error says so');
sleep(2);
$redis->resume;
wait_for_status($node, 'state', 'streaming', 120, 'resync: streaming once Redis is back');
ok(poll_until(180, sub {
		$node->safe_psql('postgres',
			q{SELECT count(*) FROM pg2redis_snapshots WHERE state NOT IN ('done')}) eq '0' }),
	'resync: the snapshots on demand are done')
  or diag($node->safe_psql('postgres', 'SELECT * FROM pg2redis_snapshots'));
wait_for_redis($node);
check_redis('resync that gave up');
is($redis->call('EXISTS', 'big:150'), '0', 'a row deleted while Redis was stopped does not come back');
is($redis->call('HGET', 'big:50', 'v'), 'again', 'an update made meanwhile is there');

# 3. A table without a key cannot be snapshotted on demand: a load that
# gives up while Redis lacks it starts over.  Such tables are now sent
# first, whole, so Redis stopped after that leaves only keyed tables to
# snapshots on demand; either way it ends equal.
$node->safe_psql('postgres', q{
	CREATE TABLE nokey (id int, v text);
	INSERT INTO nokey SELECT g, 'n' || g FROM generate_series(1, 10000) g;
	SELECT pg2redis_add_rule('nokey', 'insert', 'HSET nokey:{id} id {id} v {v}');
});
wait_for_redis($node);
$redis->call('FLUSHALL');
$offset = -s $node->logfile;
$node->safe_psql('postgres', 'SELECT pg2redis_resync()');
stop_redis_mid_load('resync with a keyless table');
ok(poll_until(60, sub {
		log_lines($node, qr/the next start loads every table again|snapshots on demand load the tables Redis does not have whole/, $offset) }),
	'the load gives up');
$redis->resume;
wait_for_status($node, 'state', 'streaming', 180, 'streaming after the load gave up');
ok(poll_until(180, sub {
		$node->safe_psql('postgres',
			q{SELECT count(*) FROM pg2redis_snapshots WHERE state NOT IN ('done', 'failed')}) eq '0' }),
	'the snapshots on demand, if any, are done');
wait_for_redis($node);
check_redis('load started over');
check_table_in_redis($node, $redis, 'nokey', 'nokey', 'load started over: nokey');

$node->stop;
done_testing();
