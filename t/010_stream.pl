# Copyright (c) pg2redis developers
#
# End-to-end streaming: committed inserts, updates, deletes, a primary-key
# change, multi-statement transactions and truncate reach Redis through the
# rules; rolled-back work does not; unicode and NULL values arrive intact;
# a counter rule ({diff:qty}) stays equal to sum(qty).  Then the worker's
# observable surface: pg2redis_status(), the slot, pg_stat_activity and
# pg2redis_redis().

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Pg2RedisTest;
use Test::More;

my $redis = start_redis(name => 'main');
my $node = new_node('stream', redis => $redis, flush_interval => '5ms');

$node->safe_psql(
	'postgres', q{
	CREATE TABLE items (id int PRIMARY KEY, name text, qty int);
	ALTER TABLE items REPLICA IDENTITY FULL;
	SELECT pg2redis_add_rule('items', 'insert', ARRAY['HSET', 'item:{id}', '{pairs:*}']);
	SELECT pg2redis_add_rule('items', 'update', ARRAY['HSET', 'item:{id}', '{pairs:*}']);
	SELECT pg2redis_add_rule('items', 'insert', 'SADD items {id}');
	SELECT pg2redis_add_rule('items', 'delete', 'DEL item:{id}');
	SELECT pg2redis_add_rule('items', 'delete', 'SREM items {id}');
	SELECT pg2redis_add_rule('items', 'truncate', 'DEL items');
	SELECT pg2redis_add_rule('items', op, 'INCRBY qty:total {diff:qty}')
	  FROM unnest(ARRAY['insert', 'update', 'delete']) op;
});

# A first row, alone: an idle stream flushes at once.
$node->safe_psql('postgres',
	"INSERT INTO items VALUES (1, 'apple', 10)");
wait_for_redis($node, 30, 'a single insert is applied');
is_deeply(redis_hash($redis, 'item:1'),
	{ id => '1', name => 'apple', qty => '10' },
	'item:1 is a hash of the row');
is($redis->call('SISMEMBER', 'items', '1'), '1', 'items set has 1');
is($redis->call('GET', 'qty:total'), '10', 'qty:total counts the insert');

# Single statements, each its own transaction.
$node->safe_psql(
	'postgres', q{
	INSERT INTO items VALUES (2, 'banana', 20);
	INSERT INTO items VALUES (3, 'cherry', NULL);
	INSERT INTO items VALUES (4, NULL, 5);
	INSERT INTO items VALUES (5, 'negative', -15);
	UPDATE items SET qty = qty + 5 WHERE id = 1;
	UPDATE items SET name = 'banana split' WHERE id = 2;
	UPDATE items SET qty = 7 WHERE id = 3;          -- NULL to a value
	UPDATE items SET qty = NULL WHERE id = 5;       -- a value to NULL
	DELETE FROM items WHERE id = 3;
	UPDATE items SET id = 40 WHERE id = 4;          -- primary key change
});

# A multi-statement transaction, with its own key change and delete.
$node->safe_psql(
	'postgres', q{
	BEGIN;
	INSERT INTO items SELECT g, 'item ' || g, g FROM generate_series(10, 19) g;
	UPDATE items SET qty = qty * 2 WHERE id BETWEEN 10 AND 14;
	DELETE FROM items WHERE id = 19;
	UPDATE items SET id = 118, name = 'renamed' WHERE id = 18;
	UPDATE items SET qty = qty + 1 WHERE id = 118;
	COMMIT;
});

# Rolled-back work never reaches Redis, nor does a rolled-back savepoint.
$node->safe_psql(
	'postgres', q{
	BEGIN;
	INSERT INTO items VALUES (900, 'rolled back', 900);
	UPDATE items SET qty = 1000 WHERE id = 1;
	DELETE FROM items WHERE id = 2;
	ROLLBACK;
	BEGIN;
	INSERT INTO items VALUES (50, 'kept', 1);
	SAVEPOINT s;
	INSERT INTO items VALUES (51, 'rolled back to savepoint', 51);
	UPDATE items SET qty = 500 WHERE id = 50;
	ROLLBACK TO s;
	UPDATE items SET qty = qty + 6 WHERE id = 50;
	COMMIT;
});

# Values that need care: unicode, quotes, braces, spaces, control
# characters, the empty string (rendered like NULL, as '').
$node->safe_psql(
	'postgres', q{
	INSERT INTO items VALUES
	  (60, 'Grüße, 日本語, emoji 🚀', 3),
	  (61, 'with "quotes", ''apostrophes'', {braces} and  spaces', 4),
	  (62, '', 0),
	  (63, E'tab\there\nnew line \\\\ backslash', 1),
	  (64, 'x', 2147483647 - 100);
	UPDATE items SET name = name || ' ✓' WHERE id = 60;
});

# Order: one row updated 100 times in 100 transactions ends at the last.
$node->safe_psql('postgres',
	join('', map { "UPDATE items SET qty = $_ WHERE id = 61;\n" } 1 .. 100));

# More rows than a pipeline batch, in one transaction.
$node->safe_psql('postgres',
	"INSERT INTO items SELECT g, 'bulk ' || g, g % 10 FROM generate_series(1000, 5999) g"
);

wait_for_redis($node, 60);

check_table_in_redis($node, $redis, 'items', 'item');
is_deeply(
	[ redis_smembers($redis, 'items') ],
	[ split /\n/, $node->safe_psql('postgres', 'SELECT id FROM items ORDER BY id') ],
	'the items set holds exactly the ids of the table');
my $sum = $node->safe_psql('postgres', 'SELECT coalesce(sum(qty), 0) FROM items');
is($redis->call('GET', 'qty:total'), $sum, 'qty:total equals sum(qty)');
is($redis->call('EXISTS', 'item:900'), '0', 'a rolled-back insert is absent');
is($redis->call('EXISTS', 'item:51'), '0', 'a rolled-back savepoint is absent');
is($redis->call('EXISTS', 'item:4'), '0', 'the old key of a key change is gone');
is($redis->call('HGET', 'item:61', 'qty'), '100', 'the last of 100 updates wins');
is($redis->call('HGET', 'item:60', 'name'), 'Grüße, 日本語, emoji 🚀 ✓',
	'unicode arrives byte for byte');
is_deeply(redis_hash($redis, 'item:40'), { id => '40', name => '', qty => '5' },
	'NULL is rendered as an empty string');

# pg2redis_redis() runs one command on the configured server.
is($node->safe_psql('postgres', q{SELECT pg2redis_redis('PING') = '"PONG"'::jsonb}),
	't', q{pg2redis_redis('PING') returns "PONG"});
is($node->safe_psql('postgres', q{SELECT pg2redis_redis('GET', 'qty:total')}),
	qq{"$sum"}, q{pg2redis_redis('GET', ...) returns the value as a JSON string});
is($node->safe_psql('postgres', q{SELECT pg2redis_redis('SCARD', 'items')}),
	$node->safe_psql('postgres', 'SELECT count(*) FROM items'),
	'pg2redis_redis() returns an integer reply as a JSON number');

# Status of a healthy, caught-up stream.
my $st = status_row($node);
is($st->{state}, 'streaming', 'status: state is streaming');
is($st->{redis_connected}, 't', 'status: redis_connected');
is($st->{slot_name}, 'pg2redis', 'status: slot_name is the default');
unlike($st->{redis_url} // '', qr/\@/, 'status: redis_url has no credentials');
like($st->{redis_url} // '', qr/\Q${\ $redis->port}\E/, 'status: redis_url names the port');
cmp_ok($st->{transactions} // 0, '>', 0, 'status: transactions counted');
cmp_ok($st->{changes} // 0, '>=', 5000, 'status: changes counted');
cmp_ok($st->{commands} // 0, '>=', 5000, 'status: commands counted');
is($st->{dead_letters}, '0', 'status: no dead letters');
ok(defined $st->{confirmed_lsn}, 'status: confirmed_lsn is set');
ok(defined $st->{last_commit_time}, 'status: last_commit_time is set');
is($node->safe_psql('postgres',
		'SELECT server_lsn >= confirmed_lsn FROM pg2redis_status()'),
	't', 'status: server_lsn is not behind confirmed_lsn');
# Only unrelated WAL (e.g. running-xacts records) may remain unconfirmed.
ok(poll_status($node, 'lag_bytes < 1024 * 1024', 't', 10),
	'status: lag_bytes is small once caught up');
is($node->safe_psql('postgres', 'SELECT count(*) FROM pg2redis.dead_letters'),
	'0', 'no dead letters were written');

# The slot belongs to the worker and decodes with the pg2redis plugin.
is( $node->safe_psql(
		'postgres',
		q{SELECT plugin, slot_type, database, active_pid = (SELECT worker_pid FROM pg2redis_status())
		    FROM pg_replication_slots WHERE slot_name = 'pg2redis'}),
	'pg2redis|logical|postgres|t',
	'slot pg2redis: logical, plugin pg2redis, held by the worker');

# The worker shows in pg_stat_activity, and waits (with a wait event) when
# idle rather than spinning.
my $pid = worker_pid($node) // 0;
ok($pid > 0, 'status: worker_pid is set');
my $activity = $node->safe_psql('postgres',
	"SELECT backend_type, application_name FROM pg_stat_activity WHERE pid = $pid");
like($activity, qr/pg2redis/,
	'the worker is in pg_stat_activity (backend_type or application_name names pg2redis)')
  or diag("pg_stat_activity row for $pid: '$activity'");
ok( poll_until(
		5,
		sub {
			$node->safe_psql('postgres',
				"SELECT wait_event IS NOT NULL FROM pg_stat_activity WHERE pid = $pid"
			) eq 't';
		}),
	'the idle worker reports a wait event');
is(worker_pid($node), $pid, 'the worker did not restart meanwhile');

# TRUNCATE runs the truncate rules.
$node->safe_psql('postgres', 'TRUNCATE items');
wait_for_redis($node, 30);
is($redis->call('EXISTS', 'items'), '0', 'TRUNCATE deleted the items set');

# A row inserted after the truncate arrives: the stream goes on.
$node->safe_psql('postgres', "INSERT INTO items VALUES (7000, 'after truncate', 1)");
wait_for_redis($node, 30);
is_deeply([ redis_smembers($redis, 'items') ], [7000], 'the stream goes on after TRUNCATE');

$node->stop;
is_deeply([ log_lines($node, qr/terminated by signal|PANIC/) ],
	[], 'no process crashed');

done_testing();
