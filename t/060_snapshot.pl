# Copyright (c) pg2redis developers
#
# Snapshots.  The initial load at slot creation is exact: rows committed
# before and while the slot is being created are loaded once, by the load
# or by the stream, never both (a counter proves it).  On-demand snapshots
# (pg2redis_snapshot()) of a 50k-row table whose Redis copy was emptied,
# under concurrent updates, deletes, inserts and primary-key changes, end
# equal to PostgreSQL.  Filters keep their rows only; a failing request is
# marked failed and the stream goes on.  Prints the snapshot rows/s of a
# 200k-row, 6-column table with one HSET rule.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Pg2RedisTest;
use Test::More;
use Time::HiRes qw(time);

# --- initial load racing with commits -----------------------------------

# Redis is down at first: the worker waits before creating its slot.
my $port = PostgreSQL::Test::Cluster::get_free_port();
my $node = new_node(
	'snap',
	redis_url => "redis://127.0.0.1:$port/0",
	flush_interval => '5ms');
$node->safe_psql(
	'postgres', q{
	CREATE TABLE acc (id int PRIMARY KEY, amount int, note text);
	ALTER TABLE acc REPLICA IDENTITY FULL;
	SELECT pg2redis_add_rule('acc', op, ARRAY['HSET', 'acc:{id}', '{pairs:*}'])
	  FROM unnest(ARRAY['insert', 'update']) op;
	SELECT pg2redis_add_rule('acc', 'delete', 'DEL acc:{id}');
	SELECT pg2redis_add_rule('acc', op, 'INCRBY total:acc {diff:amount}')
	  FROM unnest(ARRAY['insert', 'update', 'delete']) op;
	INSERT INTO acc SELECT g, g % 100, 'before' FROM generate_series(1, 20000) g;
});

# A workload commits while the worker creates its slot and loads.
my $sql = '';
for my $i (1 .. 150)
{
	my $id = 20000 + $i;
	$sql .= "BEGIN; INSERT INTO acc VALUES ($id, $i, 'during'); "
	  . "UPDATE acc SET amount = amount + 1 WHERE id = " . ($i * 97 % 20000 + 1) . "; "
	  . "DELETE FROM acc WHERE id = " . ($i * 13 % 20000 + 1) . "; COMMIT;\n"
	  . "SELECT pg_sleep(0.01);\n";
}
my $work = start_psql_script($node, $sql);
select(undef, undef, undef, 0.3);
my $redis = start_redis(name => 'snap', port => $port);
my ($rc, $out, $err) = finish_psql_script($work);
is($rc, 0, 'the workload during slot creation ran') or diag($err);
wait_for_redis($node, 120, 'initial load and stream caught up');
check_table_in_redis($node, $redis, 'acc', 'acc',
	'initial load + stream: Redis equals PostgreSQL');
is($redis->call('GET', 'total:acc'),
	$node->safe_psql('postgres', 'SELECT sum(amount) FROM acc'),
	'the counter counts every row exactly once (load or stream, never both)');
ok(log_lines($node, qr/initial load sent \d+ rows/), 'the worker logged the initial load');

# --- on demand, under a concurrent workload, Redis emptied first --------

$node->safe_psql(
	'postgres', q{
	CREATE TABLE od (id int PRIMARY KEY, v int, w text);
	ALTER TABLE od REPLICA IDENTITY FULL;
	INSERT INTO od SELECT g, g, 'x' || g FROM generate_series(1, 50000) g;
	SELECT pg2redis_add_rule('od', op, ARRAY['HSET', 'od:{id}', '{pairs:*}'])
	  FROM unnest(ARRAY['insert', 'update']) op;
	SELECT pg2redis_add_rule('od', 'delete', 'DEL od:{id}');
	-- only inserts (and so snapshots) add to the set: rows a chunk drops
	-- because the stream updated them must be read again
	SELECT pg2redis_add_rule('od', 'insert', 'SADD all:od {id}');
	SELECT pg2redis_add_rule('od', 'delete', 'SREM all:od {id}');
});
wait_for_redis($node, 60, 'od rows streamed');
$node->append_conf('postgresql.conf', "pg2redis.snapshot_batch_size = 2000");
$node->reload;

for my $round (1 .. 2)
{
	$redis->call('FLUSHALL');
	my $w = '';
	for my $i (1 .. 300)
	{
		my $k = $round * 1000 + $i;
		$w .= "UPDATE od SET v = v + 1, w = 'u$k' WHERE id % 997 = " . ($i % 997) . ";\n"
		  . "DELETE FROM od WHERE id = " . (($i * 211 + $round) % 50000 + 1) . ";\n"
		  . "UPDATE od SET id = id + 100000 WHERE id = " . (($i * 131 + $round) % 50000 + 1) . ";\n"
		  . "INSERT INTO od VALUES (" . (200000 + $k) . ", $i, 'new') ON CONFLICT DO NOTHING;\n"
		  . "SELECT pg_sleep(0.005);\n";
	}
	my $bg = start_psql_script($node, $w);
	select(undef, undef, undef, 0.1);
	my $id = $node->safe_psql('postgres', "SELECT pg2redis_snapshot('od')");
	($rc, $out, $err) = finish_psql_script($bg);
	is($rc, 0, "round $round: the concurrent workload ran") or diag($err);
	ok(snapshot_reaches($node, $id, 'done', 120), "round $round: the snapshot request is done");
	wait_for_redis($node, 60, "round $round: stream caught up");
	check_table_in_redis($node, $redis, 'od', 'od',
		"round $round: after an on-demand snapshot under load, Redis equals PostgreSQL");
	is_deeply(
		[ redis_smembers($redis, 'all:od') ],
		[ split /\n/, $node->safe_psql('postgres', 'SELECT id FROM od ORDER BY id') ],
		"round $round: rows updated while their chunk was open were read again (insert-only SADD)");
}

# --- filters and failures -----------------------------------------------

$node->safe_psql('postgres',
	"INSERT INTO pg2redis.snapshot_filters VALUES ('od', 'id <= 100')");
$redis->call('FLUSHALL');
my $fid = $node->safe_psql('postgres', "SELECT pg2redis_snapshot('od')");
snapshot_reaches($node, $fid, 'done', 60);
wait_for_redis($node, 30, 'filtered snapshot done');
is(scalar(redis_keys($redis, 'od:*')),
	$node->safe_psql('postgres', 'SELECT count(*) FROM od WHERE id <= 100'),
	'a filtered snapshot writes only the rows the filter keeps');

$node->safe_psql('postgres',
	"UPDATE pg2redis.snapshot_filters SET filter = 'w::int > 0' WHERE relation = 'od'::regclass");
my $bad = $node->safe_psql('postgres', "SELECT pg2redis_snapshot('od')");
ok(snapshot_reaches($node, $bad, 'failed', 60),
	'a request whose filter fails at run time is marked failed');
like(
	$node->safe_psql('postgres', "SELECT error FROM pg2redis_snapshots WHERE id = $bad"),
	qr/invalid input syntax/,
	'the failed request says why');
$node->safe_psql('postgres', "INSERT INTO od VALUES (999999, 1, 'after')");
wait_for_redis($node, 30, 'the stream goes on after a failed request');
is($redis->call('HGET', 'od:999999', 'w'), 'after', 'a change after the failure arrives');
$node->safe_psql('postgres', "DELETE FROM pg2redis.snapshot_filters");

# --- a snapshot whose rows produce no command -----------------------------

# Every row fails the rule's condition: no block carries the chunks' fences,
# and on a quiet database the request must still end.
$node->safe_psql('postgres', q{
	CREATE TABLE quiet (id int PRIMARY KEY, v int);
	INSERT INTO quiet SELECT g, g FROM generate_series(1, 5000) g;
	SELECT pg2redis_add_rule('quiet', 'insert', 'SET quiet:{id} {v}',
		'{"column": "v", "op": "<", "value": 0}');
});
wait_for_redis($node, 30, 'quiet table settled');
my $qid = $node->safe_psql('postgres', "SELECT pg2redis_snapshot('quiet')");
ok(snapshot_reaches($node, $qid, 'done', 30),
	'a snapshot whose rows produce no command ends on a quiet database');
is(scalar(redis_keys($redis, 'quiet:*')), 0, 'and writes nothing');

# --- throughput: 200k rows, 6 columns, one HSET ---------------------------

$node->safe_psql(
	'postgres', q{
	CREATE TABLE wide (id int PRIMARY KEY, a text, b int, c text, d bigint, e text);
	INSERT INTO wide SELECT g, 'a' || g, g, 'c' || g, g * 2, 'e' FROM generate_series(1, 200000) g;
	SELECT pg2redis_add_rule('wide', 'insert', ARRAY['HSET', 'wide:{id}', '{pairs:*}']);
});
$node->append_conf('postgresql.conf', "pg2redis.snapshot_batch_size = 10000");
$node->reload;
wait_for_redis($node, 60, 'wide rows committed before the rule are not streamed');
$redis->call('FLUSHALL');
my $t0 = time;
my $wid = $node->safe_psql('postgres', "SELECT pg2redis_snapshot('wide')");
snapshot_reaches($node, $wid, 'done', 300, 0.02);
wait_for_redis($node, 60, 'wide snapshot applied');
my $secs = time - $t0;
is(scalar(redis_keys($redis, 'wide:*')), 200000, 'the 200k-row snapshot wrote every row');
my ($run, $pickup) = split /\|/, $node->safe_psql('postgres',
	"SELECT extract(epoch FROM finished_at - started_at), extract(epoch FROM started_at - requested_at) "
	  . "FROM pg2redis_snapshots WHERE id = $wid");
diag(sprintf('on-demand snapshot of 200000 rows (6 columns, one HSET): %.0f rows/s '
		  . '(%.2f s from start to done; %.2f s from request to start; %.2f s as the client saw it)',
		200000 / $run, $run, $pickup, $secs));

# --- resume: the worker killed half-way through a request ----------------

# Small chunks, so that the request is still running when the worker dies.
# The recorded progress trails what Redis has applied, so the request goes on
# from there after the restart instead of starting over, and loses nothing.
$node->append_conf('postgresql.conf',
	"pg2redis.snapshot_batch_size = 1000\nrestart_after_crash = on\n");
$node->reload;
wait_for_redis($node, 60, 'settled before the resume test');
$redis->call('FLUSHALL');
my $rid = $node->safe_psql('postgres', "SELECT pg2redis_snapshot('wide')");
ok( poll_until(
		60,
		sub {
			$node->safe_psql('postgres',
				"SELECT state = 'running' AND rows >= 40000 FROM pg2redis_snapshots WHERE id = $rid") eq 't';
		},
		0.01),
	'the request records progress as it goes');
my $at_kill = $node->safe_psql('postgres', "SELECT rows FROM pg2redis_snapshots WHERE id = $rid");
cmp_ok(scalar(redis_keys($redis, 'wide:*')), '>=', $at_kill,
	'the progress recorded is applied in Redis');
my $wpid = worker_pid($node) // 0;
my $cmdline = $wpid > 0 ? eval { slurp_file("/proc/$wpid/cmdline") } // '' : '';
ok($wpid > 0 && $cmdline =~ /^postgres/, 'worker pid known') or BAIL_OUT('no worker');
my $offset = -s $node->logfile;
kill 'KILL', $wpid;
ok(poll_until(30, sub { slurp_file($node->logfile, $offset) =~ /reinitializing/ }),
	'the postmaster restarts after the worker was killed');
ok(snapshot_reaches($node, $rid, 'done', 120), 'the request is done after the restart');
wait_for_redis($node, 60, 'resumed snapshot applied');
is(scalar(redis_keys($redis, 'wide:*')), 200000, 'every row is in Redis after the resume');
my $rows = $node->safe_psql('postgres', "SELECT rows FROM pg2redis_snapshots WHERE id = $rid");
cmp_ok($rows, '<', 200000 + $at_kill,
	"the request went on from its progress ($at_kill rows at the kill, $rows in all), not from the start");

$node->stop;
done_testing();
