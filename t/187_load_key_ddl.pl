# Copyright (c) pg2redis developers
#
# Attack on the key-ordered initial load (commit f4d1aea): the load reads
# a keyed table chunk by chunk, releasing its lock between chunks, and
# checks before each chunk that the table still has "the key the load read
# it by" (the key index's OID), with the key columns' names taken once, at
# the first chunk.  A table owner's routine DDL between two chunks, with no
# change to the rows the load's snapshot sees, then makes the load count
# rows twice with an INCRBY load rule:
#  A. ALTER TABLE ... RENAME COLUMN of the key: the next chunk's query names
#     the old column and fails; the worker exits and the next load sends
#     every table again.
#  B. ALTER TABLE ... DROP CONSTRAINT of the primary key: "the key changed",
#     the table is left to a snapshot on demand, which needs a key, so the
#     load starts over and sends every table again.
#  C. ALTER TABLE ... REPLICA IDENTITY USING INDEX another unique index: the
#     snapshot on demand left the rest is told the last key of the old
#     index, "its key changed", and reads the table again from its start.
#
# Expected: each row counted once.  The rows the load's snapshot sees are
# unique by the key the load started with whatever index the table has now,
# so the load reads on by those columns while the storage is the same.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use Pg2RedisTest;
use PostgreSQL::Test::Utils;
use Test::More;

my $redis = start_redis();
my $node  = new_node(
	'load_key_ddl',
	redis => $redis,
	conf  => [paused_load_conf()],
	wait_streaming => 0);

my $rows = 40000;
$node->safe_psql('postgres', qq{
	CREATE TABLE big (id int PRIMARY KEY, v text NOT NULL UNIQUE);
	INSERT INTO big SELECT g, 'v' || g FROM generate_series(1, $rows) g;
	SELECT pg2redis_add_rule('big', 'insert', 'INCRBY count:big 1');
});

sub _state
{
	return $node->safe_psql('postgres', 'SELECT state FROM pg2redis_status()');
}

# Runs a load (the first, or a resync), stops Redis in its middle, runs
# $ddl, and checks that the counter counts each row once.
sub load_with_ddl
{
	my ($name, $ddl, $first, $expected) = @_;

	$expected //= $rows;

	$redis->call('FLUSHALL');
	if ($first)
	{
		$node->safe_psql('postgres', 'ALTER SYSTEM SET pg2redis.enabled = on');
		$node->reload;
	}
	else
	{
		$node->safe_psql('postgres', 'SELECT pg2redis_resync()');
	}
	ok(wait_for_load_start($node, 120), "$name: the load starts");
	$redis->pause;
	sleep(1);
	is(_state(), 'snapshotting', "$name: Redis stopped in the middle of the load");
	$node->safe_psql('postgres', $_) foreach (ref $ddl ? @$ddl : ($ddl));
	$redis->resume;
	wait_for_status($node, 'state', 'streaming', 120, "$name: streaming once Redis is back");
	ok(poll_until(120, sub {
			$node->safe_psql('postgres',
				q{SELECT count(*) FROM pg2redis_snapshots WHERE state NOT IN ('done', 'failed')}) eq '0' }),
		"$name: no snapshot on demand left");
	wait_for_redis($node);
	is($redis->call('GET', 'count:big'), $expected, "$name: the INCRBY counter counts each row once");
	diag("$name: count:big = " . ($redis->call('GET', 'count:big') // 'nil') . " for $expected rows");
}

load_with_ddl('rename', 'ALTER TABLE big RENAME COLUMN id TO ident', 1);
load_with_ddl('drop key', 'ALTER TABLE big DROP CONSTRAINT big_pkey', 0);
$node->safe_psql('postgres', 'ALTER TABLE big ADD PRIMARY KEY (ident)');
load_with_ddl('replica identity', 'ALTER TABLE big REPLICA IDENTITY USING INDEX big_v_key', 0);

# D. (with PG2REDIS_SOAK=1) Rows inserted after the load's start point into
# a table rewritten during the load: the stream applies them and the
# snapshot on demand that reads the rest does not count them again.
if ($ENV{PG2REDIS_SOAK})
{
	load_with_ddl('insert and rewrite',
		[ "INSERT INTO big SELECT g, 'n' || g FROM generate_series($rows + 1, $rows + 100) g",
		  'VACUUM FULL big' ],
		0, $rows + 100);
}

$node->stop;
done_testing();
