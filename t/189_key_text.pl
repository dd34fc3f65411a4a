# Copyright (c) pg2redis developers
#
# Attack on the key text of pg2redis.snapshots (commit f4d1aea), found
# not to happen: a load that gives up records the last key Redis has as
# text, made by the key type's output function, and the snapshot on demand
# that reads on parses it back.  With extra_float_digits = 0 (a legacy
# setting still found in postgresql.conf) a float8 key would print with 15
# digits and not parse back to itself (1.3333333333333333 recorded as
# 1.33333333333333, smaller: the row with that key read again, an INCRBY
# load rule counting it twice).  The worker pins the settings that shape
# output (worker.c: DateStyle ISO, TimeZone UTC, IntervalStyle postgres,
# extra_float_digits 1), so keys round-trip whatever the server's settings:
# every key g + 1/3 here is recorded with all its digits and each row is
# counted once.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use Pg2RedisTest;
use PostgreSQL::Test::Utils;
use Test::More;

my $redis = start_redis();
my $node  = new_node(
	'key_text',
	redis => $redis,
	conf  => [
		paused_load_conf(stall => '3s'),
		'extra_float_digits = 0',
	],
	wait_streaming => 0);

my $rows = 40000;
# every key g + 1/3 prints as 15 digits, less than itself
$node->safe_psql('postgres', qq{
	CREATE TABLE f (k float8 PRIMARY KEY, v text);
	INSERT INTO f SELECT g + 1/3.0::float8, 'v' || g FROM generate_series(1, $rows) g;
	SELECT pg2redis_add_rule('f', 'insert', 'INCRBY count:f 1');
});

sub _state
{
	return $node->safe_psql('postgres', 'SELECT state FROM pg2redis_status()');
}

$node->safe_psql('postgres', 'ALTER SYSTEM SET pg2redis.enabled = on');
$node->reload;
# some chunks acknowledged first, so that a last key is recorded
ok(poll_until(120, sub {
		$node->safe_psql('postgres', 'SELECT coalesce(load_rows, 0) >= 2000 FROM pg2redis_status()') eq 't' }, 0.02),
	'the load starts');
$redis->pause;
ok(poll_until(60, sub { log_lines($node, qr/Redis acknowledged nothing for 3000 ms during the initial load/) }),
	'the load gives up after pg2redis.load_stall_timeout');
is($node->safe_psql('postgres',
		'SELECT count(*) FROM f, pg2redis.snapshots s WHERE f.k = coalesce(s.last_key[1], '
		  . 's.resume_keys[array_length(s.resume_keys, 1)][2])::float8'),
	'1', 'the last key is recorded as text that parses back to a key of the table');
$redis->resume;
wait_for_status($node, 'state', 'streaming', 120, 'streaming once Redis is back');
ok(poll_until(120, sub {
		$node->safe_psql('postgres',
			q{SELECT count(*) FROM pg2redis_snapshots WHERE state NOT IN ('done', 'failed')}) eq '0' }),
	'the snapshot on demand of the rest ends');
wait_for_redis($node);
is($redis->call('GET', 'count:f'), $rows, 'the INCRBY counter counts each row once');
diag('count:f = ' . ($redis->call('GET', 'count:f') // 'nil') . " for $rows rows");

$node->stop;
done_testing();
