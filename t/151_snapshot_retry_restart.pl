# Copyright (c) pg2redis developers
#
# The rows an on-demand snapshot must read again survive a restart
# (streaming-core review, finding 8).  A row the stream updates while its
# chunk is open is left out of the chunk and read again later, because the
# update rules may do less than the snapshot/insert rules (here the insert
# rule SADD products:all {id}).  The chunk's progress moves the last key past
# that row; the keys to read again were kept in memory only, so a worker
# killed between that progress and the reread lost them: the row never got
# its insert rules.
#
# The windows are made deterministic with the table's snapshot filter, which
# waits on an advisory lock the test holds while a row is gated: the test
# updates row 5 while its chunk is open, and again while its first reread
# is open, so that a second reread is needed; it kills the worker while that
# one waits (the first chunk's progress is recorded by then), and checks
# that after the restart row 5 is read again.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Pg2RedisTest;
use Test::More;

my $redis = start_redis(name => 'odretry');
my $node = new_node(
	'odretry',
	redis          => $redis,
	flush_interval => '5ms',
	conf           => [ 'pg2redis.snapshot_batch_size = 10', 'restart_after_crash = on' ]);

$node->safe_psql(
	'postgres', q{
	CREATE TABLE gate (id int PRIMARY KEY, lockkey bigint NOT NULL);
	CREATE FUNCTION gate_wait(i int) RETURNS boolean LANGUAGE plpgsql AS $$
	DECLARE
		k bigint;
	BEGIN
		SELECT g.lockkey INTO k FROM public.gate g WHERE g.id = i;
		IF k IS NOT NULL THEN
			PERFORM pg_catalog.pg_advisory_xact_lock_shared(k);
		END IF;
		RETURN true;
	END
	$$;
	CREATE TABLE products (id int PRIMARY KEY, v int);
	INSERT INTO products SELECT g, 0 FROM generate_series(1, 30) g;
	SELECT pg2redis_add_rule('products', op, ARRAY['HSET', 'p:{id}', '{pairs:*}'])
	  FROM unnest(ARRAY['insert', 'update']) op;
	SELECT pg2redis_add_rule('products', 'insert', 'SADD products:all {id}');
	INSERT INTO pg2redis.snapshot_filters VALUES ('products', 'public.gate_wait(id)');
});
wait_for_redis($node, 60, 'set up');
$redis->call('FLUSHALL');

# waiting_on tells whether a query waits for advisory lock $lock.
sub waiting_on
{
	my ($lock) = @_;
	return $node->safe_psql('postgres',
		"SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = $lock AND NOT granted"
	) eq '1';
}

my $holder = $node->background_psql('postgres', on_error_stop => 0);
$holder->query_safe('SELECT pg_advisory_lock(8001), pg_advisory_lock(8002), pg_advisory_lock(8003)');
$node->safe_psql('postgres', 'INSERT INTO gate VALUES (5, 8001)');
my $rid = $node->safe_psql('postgres', "SELECT pg2redis_snapshot('products')");

# the first chunk (ids 1-10) waits at row 5: update it in the window
ok(poll_until(60, sub { waiting_on(8001) }), 'the first chunk waits with its window open');
$node->safe_psql('postgres', q{
	UPDATE products SET v = v + 1 WHERE id = 5;
	UPDATE gate SET lockkey = 8002 WHERE id = 5;
});
$holder->query_safe('SELECT pg_advisory_unlock(8001)');

# the chunk is sent without row 5, which is read again: update it again
ok(poll_until(60, sub { waiting_on(8002) }), 'row 5 is read again, and that waits');
$node->safe_psql('postgres', q{
	UPDATE products SET v = v + 1 WHERE id = 5;
	UPDATE gate SET lockkey = 8003 WHERE id = 5;
});
$holder->query_safe('SELECT pg_advisory_unlock(8002)');

# the second reread waits; the first chunk's progress is recorded by now
ok(poll_until(60, sub { waiting_on(8003) }), 'row 5 is read again a second time, and that waits');
is($node->safe_psql('postgres', "SELECT state, rows FROM pg2redis_snapshots WHERE id = $rid"),
	'running|9', 'the first chunk (without row 5) is recorded as progress');
ok(!grep({ $_ eq '5' } redis_smembers($redis, 'products:all')), 'row 5 is not in the set yet');

my $wpid = worker_pid($node);
my $offset = -s $node->logfile;
kill 'KILL', $wpid;
ok(poll_until(30, sub { slurp_file($node->logfile, $offset) =~ /reinitializing/ }),
	'the postmaster restarts after the worker was killed');
eval { $holder->quit };    # its session ended with the restart

ok(snapshot_reaches($node, $rid, 'done', 120), 'the request is done after the restart');
wait_for_redis($node, 60, 'caught up after the restart');
is_deeply(
	[ redis_smembers($redis, 'products:all') ],
	[ split /\n/, $node->safe_psql('postgres', 'SELECT id FROM products ORDER BY id') ],
	'the row to read again was read after the restart (insert-only SADD)');
check_table_in_redis($node, $redis, 'products', 'p', 'Redis equals PostgreSQL');

$node->stop;
done_testing();
