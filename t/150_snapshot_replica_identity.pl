# Copyright (c) pg2redis developers
#
# On-demand snapshots key their chunks by what a decoded change carries
# (streaming-core review, finding 7).  A decoded delete carries only the
# replica identity's columns: a chunk keyed by the primary key of a table
# whose identity is another index never saw its rows deleted in the chunk's
# window, and wrote them back after the stream had deleted them.  Here rows
# are deleted while a chunk is held open (its filter waits on an advisory
# lock the test holds), for a table with REPLICA IDENTITY USING INDEX on a
# unique column and for one with REPLICA IDENTITY NOTHING; afterwards no
# deleted row is in Redis.  Last, the identity of a table changes (to an
# index of another type) while its snapshot runs: the request reads the
# table again from its start, and Redis equals PostgreSQL.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Pg2RedisTest;
use Test::More;

my $redis = start_redis(name => 'odrid');
my $node = new_node(
	'odrid',
	redis          => $redis,
	flush_interval => '5ms',
	conf           => ['pg2redis.snapshot_batch_size = 1000']);

# The filter of every table here: a row whose id is in gate waits for the
# advisory lock gate names (shared, so that it passes once the test lets
# go), which holds the chunk's window open while the test changes rows.
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

	CREATE TABLE products (id int PRIMARY KEY, sku text UNIQUE NOT NULL, name text);
	ALTER TABLE products REPLICA IDENTITY USING INDEX products_sku_key;
	INSERT INTO products SELECT g, 'sku-' || g, 'p' || g FROM generate_series(1, 200) g;
	SELECT pg2redis_add_rule('products', op, ARRAY['HSET', 'product:{sku}', '{pairs:*}'])
	  FROM unnest(ARRAY['snapshot', 'insert', 'update']) op;
	SELECT pg2redis_add_rule('products', 'delete', 'DEL product:{sku}');
	INSERT INTO pg2redis.snapshot_filters VALUES ('products', 'public.gate_wait(id)');

	CREATE TABLE logs (id int PRIMARY KEY, v text);
	ALTER TABLE logs REPLICA IDENTITY NOTHING;
	INSERT INTO logs SELECT g, 'v' || g FROM generate_series(1001, 1200) g;
	SELECT pg2redis_add_rule('logs', 'insert', ARRAY['HSET', 'log:{id}', '{pairs:*}']);
	INSERT INTO pg2redis.snapshot_filters VALUES ('logs', 'public.gate_wait(id)');
});
wait_for_redis($node, 60, 'the tables are set up');

# held_open runs $change (SQL) while a chunk of $table is open: the test
# holds advisory lock $lock, gates row $gate_id on it, requests a snapshot,
# waits until the worker's chunk query waits for the lock, runs $change,
# then lets go.  Returns the request id once it is done.
sub held_open
{
	my ($table, $gate_id, $lock, $change) = @_;
	my $holder = $node->background_psql('postgres');
	$holder->query_safe("SELECT pg_advisory_lock($lock)");
	$node->safe_psql('postgres', "INSERT INTO gate VALUES ($gate_id, $lock)");
	my $id = $node->safe_psql('postgres', "SELECT pg2redis_snapshot('$table')");
	ok( poll_until(
			60,
			sub {
				$node->safe_psql('postgres',
					"SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
					  . "AND objid = $lock AND NOT granted") eq '1';
			}),
		"$table: the chunk's query waits with the window open");
	$node->safe_psql('postgres', $change);
	$holder->query_safe("SELECT pg_advisory_unlock($lock)");
	$holder->quit;
	ok(snapshot_reaches($node, $id, 'done', 60), "$table: the snapshot request is done");
	$node->safe_psql('postgres', "DELETE FROM gate WHERE id = $gate_id");
	wait_for_redis($node, 60, "$table: stream caught up");
	return $id;
}

# --- REPLICA IDENTITY USING INDEX on a column that is not the primary key --

$redis->call('FLUSHALL');
held_open(
	'products', 100, 7001, q{
	DELETE FROM products WHERE id <= 20 OR id BETWEEN 150 AND 160;
	UPDATE products SET sku = 'moved-' || sku WHERE id BETWEEN 21 AND 25;
	UPDATE products SET name = 'renamed' WHERE id BETWEEN 26 AND 30;
});
my @ghosts = grep { $redis->call('EXISTS', "product:sku-$_") ne '0' }
  (1 .. 20, 150 .. 160);
is("@ghosts", '', 'no row deleted while its chunk was open is in Redis');
check_table_in_redis($node, $redis, 'products', 'product',
	'identity USING INDEX: Redis equals PostgreSQL', key => 'sku');

# --- REPLICA IDENTITY NOTHING: deletes carry no key at all ------------------

$redis->call('FLUSHALL');
my $offset = -s $node->logfile;
held_open('logs', 1100, 7002, 'DELETE FROM logs WHERE id <= 1010 OR id BETWEEN 1150 AND 1155');
@ghosts = grep { $redis->call('EXISTS', "log:$_") ne '0' } (1001 .. 1010, 1150 .. 1155);
is("@ghosts", '', 'identity NOTHING: no deleted row is in Redis');
check_table_in_redis($node, $redis, 'logs', 'log', 'identity NOTHING: Redis equals PostgreSQL');

# --- the key index changes while a request reads the table ------------------

# Small chunks, and the table's identity moves from a text index to the
# integer primary key between two of them: the recorded keys are of the old
# index, so the request reads the table again from its start.
$node->safe_psql(
	'postgres', q{
	CREATE TABLE kc (id int PRIMARY KEY, code text UNIQUE NOT NULL, v int);
	ALTER TABLE kc REPLICA IDENTITY USING INDEX kc_code_key;
	INSERT INTO kc SELECT g, 'c' || lpad(g::text, 4, '0'), g FROM generate_series(1, 400) g;
	SELECT pg2redis_add_rule('kc', op, ARRAY['HSET', 'kc:{id}', '{pairs:*}'])
	  FROM unnest(ARRAY['insert', 'update']) op;
	INSERT INTO pg2redis.snapshot_filters VALUES ('kc', 'public.gate_wait(id)');
});
$node->append_conf('postgresql.conf', "pg2redis.snapshot_batch_size = 50\n");
$node->reload;
wait_for_redis($node, 60, 'kc set up');
$redis->call('FLUSHALL');
$offset = -s $node->logfile;
{
	my $holder = $node->background_psql('postgres');
	$holder->query_safe('SELECT pg_advisory_lock(7003)');
	# code order: the gate on id 80 stops the second chunk (ids 51-100)
	$node->safe_psql('postgres', 'INSERT INTO gate VALUES (80, 7003)');
	my $id = $node->safe_psql('postgres', "SELECT pg2redis_snapshot('kc')");
	ok( poll_until(
			60,
			sub {
				$node->safe_psql('postgres',
					"SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
					  . "AND objid = 7003 AND NOT granted") eq '1';
			}),
		'kc: a chunk waits');
	# the ALTER waits for the chunk's lock on kc, and goes first after it
	my $alter = start_psql_script($node, 'ALTER TABLE kc REPLICA IDENTITY DEFAULT;');
	ok( poll_until(
			30,
			sub {
				$node->safe_psql('postgres',
					"SELECT count(*) FROM pg_locks WHERE relation = 'kc'::regclass AND NOT granted") eq '1';
			}),
		'kc: the ALTER waits for the chunk');
	$holder->query_safe('SELECT pg_advisory_unlock(7003)');
	$holder->quit;
	my ($rc, $out, $err) = finish_psql_script($alter);
	is($rc, 0, 'kc: the identity changed') or diag($err);
	ok(snapshot_reaches($node, $id, 'done', 60), 'kc: the request is done');
	$node->safe_psql('postgres', 'DELETE FROM gate');
}
wait_for_redis($node, 60, 'kc: stream caught up');
ok(log_lines($node, qr/snapshot request \d+ reads table "kc" again from its start: its key changed/,
		$offset), 'the request noticed the new key and started the table over');
check_table_in_redis($node, $redis, 'kc', 'kc', 'key changed mid-request: Redis equals PostgreSQL');

$node->stop;
done_testing();
