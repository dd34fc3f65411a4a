# Copyright (c) pg2redis developers
#
# pg2redis.enabled = off means no write to Redis at all, from the first
# start: the worker makes no slot, loads nothing and serves no snapshot
# request while paused (before, the first start created the slot and wrote
# every row of the initial load while pg2redis_status() said "paused").
# Turning it on starts everything in order: the slot with the initial load,
# then the stream, then the snapshot request made while paused.  A resync
# requested while paused waits as well.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use Pg2RedisTest;
use PostgreSQL::Test::Utils;
use Test::More;

my $redis = start_redis();
my $node  = new_node(
	'paused',
	redis          => $redis,
	conf           => [ 'pg2redis.enabled = off' ],
	wait_streaming => 0);

$node->safe_psql('postgres', q{
	CREATE TABLE items (id int PRIMARY KEY, name text);
	INSERT INTO items SELECT g, 'before ' || g FROM generate_series(1, 100) g;
	SELECT pg2redis_add_rule('items', 'insert', 'SET item:{id} {name}');
	SELECT pg2redis_add_rule('items', 'update', 'SET item:{id} {name}');
	INSERT INTO items SELECT g, 'after ' || g FROM generate_series(101, 110) g;
});
my $request = $node->safe_psql('postgres', 'SELECT pg2redis_snapshot()');

wait_for_status($node, 'state', 'paused', 30, 'the worker says paused');
sleep(3);
is($node->safe_psql('postgres', q{SELECT count(*) FROM pg_replication_slots}),
	'0', 'no slot is made while paused');
is($redis->call('DBSIZE'), '0', 'nothing is written to Redis while paused');
is($node->safe_psql('postgres', qq{SELECT state FROM pg2redis_snapshots WHERE id = $request}),
	'pending', 'the snapshot request waits');
is(status_row($node)->{state}, 'paused', 'still paused');

# On: the initial load, the stream, the snapshot request.
$node->append_conf('postgresql.conf', "pg2redis.enabled = on\n");
$node->reload;
wait_for_status($node, 'state', 'streaming', 60, 'streaming once enabled');
$node->safe_psql('postgres', q{UPDATE items SET name = 'changed' WHERE id = 1});
wait_for_redis($node);
is(scalar(redis_keys($redis, 'item:*')), 110, 'every row arrives once enabled');
is($redis->call('GET', 'item:1'), 'changed', 'and the stream goes on after the load');
ok(snapshot_reaches($node, $request, 'done', 60), 'the request made while paused is served');

# A resync requested while paused waits too.
$node->append_conf('postgresql.conf', "pg2redis.enabled = off\n");
$node->reload;
wait_for_status($node, 'state', 'paused', 30, 'paused again');
$redis->call('FLUSHALL');
$node->safe_psql('postgres', 'SELECT pg2redis_resync()');
# the worker drops its slot and restarts (after 5 s) to make a new one
ok(poll_until(30, sub { $node->safe_psql('postgres', 'SELECT count(*) FROM pg_replication_slots') eq '0' }),
	'the resync drops the slot');
wait_for_status($node, 'state', 'paused', 30, 'the restarted worker is paused');
sleep(2);
is($redis->call('DBSIZE'), '0', 'a resync while paused writes nothing');
is($node->safe_psql('postgres', 'SELECT count(*) FROM pg_replication_slots'), '0',
	'and makes no slot');
$node->append_conf('postgresql.conf', "pg2redis.enabled = on\n");
$node->reload;
wait_for_status($node, 'state', 'streaming', 60, 'streaming once enabled again');
wait_for_redis($node);
is(scalar(redis_keys($redis, 'item:*')), 110, 'the resync loads every row once enabled');

$node->stop;
done_testing();
