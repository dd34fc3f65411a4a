# Copyright (c) pg2redis developers
#
# Attack review of issue 15's sweep (verify_sweep): what it must not delete.
# - Two tables whose rules write the same key pattern (cats and dogs both
#   write pet:{id}): each key is rendered by one of them.  The orphan search
#   attributed a key to the first of the equally specific patterns and
#   looked it up only in that table's keys, so pg2redis_verify() listed
#   every dog as an orphan and the sweep after a resync DELETED them.
# - A rule whose key has no literal text ({k} alone) matches every key of
#   the Redis database: the sweep would delete every key of any other
#   application sharing it.  The sweep leaves such a pattern alone (a
#   WARNING); pg2redis_verify() still lists its orphans.
# - {%schema%}.{%table%}:{id} (pgwalk's mapping) made the pattern *.*:*:
#   every key with a '.' and a ':' of another application was deleted.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use Pg2RedisTest;
use PostgreSQL::Test::Utils;
use Test::More;

my $redis = start_redis();
my $node = new_node('sweepshared', redis => $redis, flush_interval => '5ms');
$node->safe_psql('postgres', q{
	CREATE TABLE cats (id int PRIMARY KEY, v text);
	CREATE TABLE dogs (id int PRIMARY KEY, v text);
	CREATE TABLE kv (k text PRIMARY KEY, v text);
	INSERT INTO cats SELECT g, 'cat' || g FROM generate_series(1, 10) g;
	INSERT INTO dogs SELECT g, 'dog' || g FROM generate_series(11, 20) g;
	SELECT pg2redis_add_rule('cats', 'insert', 'HSET pet:{id} v {v}');
	SELECT pg2redis_add_rule('dogs', 'insert', 'HSET pet:{id} v {v}');
	SELECT pg2redis_snapshot('cats');
	SELECT pg2redis_snapshot('dogs');
});
wait_for_status($node, 'state', 'streaming', 60, 'the worker streams');
wait_for_redis($node);
ok(poll_until(30, sub { $redis->call('EXISTS', 'pet:15') && $redis->call('EXISTS', 'pet:5') }),
	'the cats and dogs are loaded');

my $orphans = $node->safe_psql('postgres',
	"SELECT count(*) FROM pg2redis_verify() WHERE problem = 'orphan'");
is($orphans, '0',
	'pg2redis_verify(): a key another table with the same pattern renders is no orphan');

# a real orphan of the shared pattern, and keys of another application
$redis->call('HSET', 'pet:99', 'v', 'gone');
$redis->call('SET', 'session:abc', 'another application');

# a resync sweeps (Redis holds an earlier stream)
sub resync
{
	my ($label) = @_;
	my $offset = -s $node->logfile;
	$node->safe_psql('postgres', 'SELECT pg2redis_resync()');
	ok(poll_until(60, sub {
		$node->log_contains('the sweep after the initial load', $offset)
	}), "$label: the load is swept");
	wait_for_status($node, 'state', 'streaming', 60, "$label: streaming");
	wait_for_redis($node);
	return $offset;
}
resync('shared pattern');
my $kept = 0;
$kept += $redis->call('EXISTS', "pet:$_") for 11 .. 20;
is($kept, 10, 'the sweep keeps the keys of the second table of a pattern');
$kept = 0;
$kept += $redis->call('EXISTS', "pet:$_") for 1 .. 10;
is($kept, 10, 'and of the first');
is($redis->call('EXISTS', 'pet:99'), 0, 'it removes the real orphan');
is($redis->call('EXISTS', 'session:abc'), 1, 'a key of no pattern is kept');

# {%schema%} and {%table%} render the rule's table's names: literal text of
# the pattern (public.orders:*), not stars (*.*:*, which matched every key of
# the database with a '.' and a ':')
$redis->call('SET', 'app.cache:1', 'another application');
$redis->call('SET', 'public.orders:99', 'gone');
$node->safe_psql('postgres', q{
	CREATE TABLE orders (id int PRIMARY KEY, v text);
	INSERT INTO orders VALUES (1, 'o1');
	SELECT pg2redis_add_rule('orders', 'insert',
		'HSET {%schema%}.{%table%}:{id} v {v}');
	SELECT pg2redis_snapshot('orders');
});
ok(poll_until(30, sub { $redis->call('EXISTS', 'public.orders:1') }),
	'the orders are in Redis');
resync('{%schema%}.{%table%}');
is($redis->call('EXISTS', 'app.cache:1'), 1,
	'the sweep keeps a key of another application that *.*:* would match');
is($redis->call('EXISTS', 'public.orders:99'), 0,
	'and removes the orphan of public.orders:*');
is($redis->call('EXISTS', 'public.orders:1'), 1, 'and keeps the row\'s key');

# a key of no literal text: the whole database
$node->safe_psql('postgres', q{
	INSERT INTO kv VALUES ('a', '1'), ('b', '2');
	SELECT pg2redis_add_rule('kv', 'insert', 'SET {k} {v}');
	SELECT pg2redis_snapshot('kv');
});
wait_for_redis($node);
ok(poll_until(30, sub { ($redis->call('GET', 'b') // '') eq '2' }),
	'the kv rows are in Redis');
my $offset = resync('a key of no literal text');
is($redis->call('EXISTS', 'session:abc'), 1,
	'the sweep does not delete every key of the database for {k}');
is($redis->call('EXISTS', 'pet:5'), 1, 'nor the keys of other tables');
ok($node->log_contains(qr/has no literal text/, $offset),
	'it says why the pattern is not swept');
is($redis->call('GET', 'a'), '1', 'the kv keys are kept');

# {%op%} in a key: the stream rendered "insert", a sweep's check renders
# "snapshot"; the stream's keys are not orphans (they were deleted)
$node->safe_psql('postgres', q{
	CREATE TABLE ev (id int PRIMARY KEY, v text);
	SELECT pg2redis_add_rule('ev', 'insert', 'SET ev:{%op%}:{id} {v}');
	INSERT INTO ev VALUES (1, 'one'), (2, 'two');
});
wait_for_redis($node);
is($redis->call('GET', 'ev:insert:1'), 'one', 'the stream wrote ev:insert:1');
resync('{%op%}');
is($redis->call('GET', 'ev:insert:1'), 'one', 'the sweep keeps a key the stream wrote with {%op%}');

# a disabled rule's keys: no enabled rule claims them, and an enabled rule's
# broader pattern (dd:*) matches them
$node->safe_psql('postgres', q{
	CREATE TABLE dd (id int PRIMARY KEY, v text);
	SELECT pg2redis_add_rule('dd', 'insert', 'SET dd:{id} {v}');
	SELECT pg2redis_add_rule('dd', 'insert', 'SET dd:x:{id} {v}');
	INSERT INTO dd VALUES (1, 'one');
});
wait_for_redis($node);
is($redis->call('GET', 'dd:x:1'), 'one', 'the stream wrote dd:x:1');
$node->safe_psql('postgres', q{UPDATE pg2redis.rules SET enabled = false WHERE relation = 'dd'::regclass AND command[2] = 'dd:x:{id}'});
$offset = resync('a disabled rule');
is($redis->call('GET', 'dd:x:1'), 'one', 'the sweep keeps the keys of a table with a disabled rule');
ok($node->log_contains(qr/leaves alone the keys of table "dd": it has disabled rules/, $offset),
	'it says so');

$node->stop;
done_testing();
