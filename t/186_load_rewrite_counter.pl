# Copyright (c) pg2redis developers
#
# Attack on the chunked initial load (commit 3498a8a): a table rewritten
# during the load (VACUUM FULL while Redis is stopped) is "left to a
# snapshot on demand", but the chunks of it already sent stay in Redis and
# the snapshot on demand reads every row again.  A load rule that is not
# idempotent (an INCRBY counter, as README's own examples use) is then
# applied twice for the rows sent before the rewrite: a routine VACUUM
# FULL, with no action of the user's on pg2redis, corrupts the counter.
# The same happens when the load gives up after
# pg2redis.load_stall_timeout with a table partly acknowledged.
#
# Expected: the counter equals the number of rows.  The load reads a table
# with a key in key order, one atomic part per chunk, and leaves a snapshot
# on demand to read on after the last key Redis has (after the chunk in
# flight when the load gave up, if Redis applied it after all).

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use Pg2RedisTest;
use PostgreSQL::Test::Utils;
use Test::More;

my $redis = start_redis();
my $node  = new_node(
	'load_rewrite_counter',
	redis => $redis,
	conf  => [paused_load_conf()],
	wait_streaming => 0);

my $rows = 60000;
# a table without a key, mapped for part 1b; made first, so that a load in
# OID order reads it first
$node->safe_psql('postgres', q{
	CREATE TABLE logs (v text);
	INSERT INTO logs SELECT 'l' || g FROM generate_series(1, 100000) g;
});
$node->safe_psql('postgres', qq{
	CREATE TABLE big (id int PRIMARY KEY, v text);
	INSERT INTO big SELECT g, 'v' || g FROM generate_series(1, $rows) g;
	SELECT pg2redis_add_rule('big', 'insert', 'HSET big:{id} id {id} v {v}');
	SELECT pg2redis_add_rule('big', 'insert', 'INCRBY count:big 1');
	SELECT pg2redis_add_rule('big', 'delete', 'DEL big:{id}');
});

sub _state
{
	return $node->safe_psql('postgres', 'SELECT state FROM pg2redis_status()');
}

$node->safe_psql('postgres', 'ALTER SYSTEM SET pg2redis.enabled = on');
$node->reload;
ok(wait_for_load_start($node, 120), 'the load starts');
$redis->pause;
sleep(1);
is(_state(), 'snapshotting', 'Redis stopped in the middle of the load');
$node->safe_psql('postgres', 'VACUUM FULL big');
$redis->resume;
wait_for_status($node, 'state', 'streaming', 120, 'streaming once Redis is back');
ok(poll_until(120, sub {
		$node->safe_psql('postgres',
			q{SELECT count(*) FROM pg2redis_snapshots WHERE state NOT IN ('done')}) eq '0' }),
	'the snapshot on demand of the rewritten table is done');
wait_for_redis($node);
check_table_in_redis($node, $redis, '(SELECT id, v FROM big)', 'big', 'the rows are in Redis');
ok(log_lines($node, qr/table "big" was rewritten or truncated during the initial load/),
	'the load left the rewritten table to a snapshot on demand');
is($redis->call('GET', 'count:big'), $rows, 'the INCRBY counter counts each row once');
diag('count:big = ' . ($redis->call('GET', 'count:big') // 'nil') . " for $rows rows");

# 1b. A table without a key cannot be read on after a rewrite.  The load
# reads such tables first, under lock, into a file, then sends them: a
# VACUUM FULL while Redis is stopped waits for that read (not for Redis),
# and the load neither starts over nor sends the table twice.  (It used to
# start over when it came to the rewritten table, sending the part it had
# sent again.)  100,000 one-command rows in parts of 100 commands, so that
# Redis is stopped in the middle of them.
$node->safe_psql('postgres', q{SELECT pg2redis_add_rule('logs', 'insert', 'INCRBY count:logs 1')});
$redis->call('FLUSHALL');
$node->safe_psql('postgres', 'SELECT pg2redis_resync()');
ok(wait_for_load_start($node, 120), 'keyless: the load starts');
$redis->pause;
$node->safe_psql('postgres', 'VACUUM FULL logs');
$redis->resume;
wait_for_status($node, 'state', 'streaming', 120, 'keyless: streaming once Redis is back');
wait_for_redis($node);
is($redis->call('GET', 'count:logs'), 100000, 'keyless: each row counted once');
is($redis->call('GET', 'count:big'), $rows, 'keyless: the other table counted once');
$node->safe_psql('postgres', q{DELETE FROM pg2redis.rules WHERE relation = 'logs'::regclass});

# For part 2: a small table without a key (sent first, whole) and a keyed
# table after big, which the load has not reached when it gives up: it
# must be left to a snapshot on demand too (the leaves of keyed tables were
# once marked done with the keyless ones).
$node->safe_psql('postgres', q{
	CREATE TABLE tiny (v text);
	INSERT INTO tiny SELECT 't' || g FROM generate_series(1, 10) g;
	SELECT pg2redis_add_rule('tiny', 'insert', 'SADD tiny {v}');
	CREATE TABLE later (id int PRIMARY KEY);
	INSERT INTO later SELECT generate_series(1, 1000);
	SELECT pg2redis_add_rule('later', 'insert', 'SADD later {id}');
});

# 2. A resync whose load gives up (Redis stopped past
# pg2redis.load_stall_timeout): the table Redis acknowledged in part is
# left whole to a snapshot on demand, which counts the acknowledged rows
# again; the block Redis had received but not acknowledged when it was
# stopped is applied when it resumes, and counted again too.
$node->safe_psql('postgres', "ALTER SYSTEM SET pg2redis.load_stall_timeout = '3s'");
$node->reload;
$redis->call('FLUSHALL');
my $offset = -s $node->logfile;
$node->safe_psql('postgres', 'SELECT pg2redis_resync()');
ok(wait_for_load_start($node, 120), 'resync: the load starts');
$redis->pause;
ok(poll_until(60, sub { log_lines($node, qr/Redis acknowledged nothing for 3000 ms during the initial load/, $offset) }),
	'resync: the load gives up after pg2redis.load_stall_timeout');
$redis->resume;
wait_for_status($node, 'state', 'streaming', 120, 'resync: streaming once Redis is back');
ok(poll_until(120, sub {
		$node->safe_psql('postgres',
			q{SELECT count(*) FROM pg2redis_snapshots WHERE state NOT IN ('done')}) eq '0' }),
	'resync: the snapshots on demand are done');
wait_for_redis($node);
check_table_in_redis($node, $redis, '(SELECT id, v FROM big)', 'big', 'resync: the rows are in Redis');
is($redis->call('GET', 'count:big'), $rows, 'resync: the INCRBY counter counts each row once');
is($redis->call('SCARD', 'tiny'), 10, 'resync: the table without a key is loaded');
is($redis->call('SCARD', 'later'), 1000, 'resync: the table the load did not reach is loaded by a snapshot on demand');
diag('after the resync that gave up, count:big = ' . ($redis->call('GET', 'count:big') // 'nil') . " for $rows rows");

$node->stop;
done_testing();
