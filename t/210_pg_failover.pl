# Copyright (c) pg2redis developers
#
# PostgreSQL failover (issue 15, item 3).  A primary streams to Redis; a
# streaming standby made from its backup preloads pg2redis too.  The
# standby's worker waits (state standby) without touching Redis.  The
# standby then stops receiving WAL while the primary goes on, so that the
# old primary streams rows (inserts and deletes) the standby never gets;
# the primary is stopped (immediate) in the middle of a workload and the
# standby promoted.  Its worker makes a new slot, loads every table again
# and sweeps the keys no row renders: Redis then equals the new primary,
# without the keys of rows it never had or deleted before its slot
# existed.  Before, the standby's worker did not run at all (status
# stopped) and the new primary's load left those keys in Redis.  Last, the
# old primary restarted as it was does not stream over the new one.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use Pg2RedisTest;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $redis = start_redis();
my $primary = new_node('primary', redis => $redis, flush_interval => '5ms');
$primary->safe_psql('postgres', q{
	CREATE TABLE t (id int PRIMARY KEY, v text, n int);
	SELECT pg2redis_add_rule('t', op, ARRAY['HSET', 't:{id}', '{pairs:*}'])
	  FROM unnest(ARRAY['insert', 'update']) op;
	SELECT pg2redis_add_rule('t', 'delete', 'DEL t:{id}');
	SELECT pg2redis_add_rule('t', 'insert', 'INCR inserts');
	INSERT INTO t SELECT g, 'row ' || g, 0 FROM generate_series(1, 300) g;
});
wait_for_redis($primary);

$primary->backup('b');
my $standby = PostgreSQL::Test::Cluster->new('standby');
$standby->init_from_backup($primary, 'b', has_streaming => 1);
$standby->start;
$primary->wait_for_catchup($standby);

# The standby's worker waits, and says so where pg2redis_status() runs.
wait_for_status($standby, 'state', 'standby', 30,
	'the standby\'s worker waits in state standby');
is($standby->safe_psql('postgres',
		'SELECT worker_pid IS NOT NULL AND NOT redis_connected FROM pg2redis_status()'),
	't', 'it runs, without a Redis connection');
ok($standby->log_contains('the server is a standby; the worker waits for its promotion'),
	'and logs that it waits');

# The standby stops receiving WAL: what the primary does from now on
# reaches Redis but not the standby.
$standby->append_conf('postgresql.conf', "primary_conninfo = ''");
$standby->reload;
ok(poll_until(30, sub {
	$standby->safe_psql('postgres', 'SELECT count(*) FROM pg_stat_wal_receiver') eq '0'
}), 'the standby\'s WAL receiver stopped');
$primary->safe_psql('postgres', q{
	INSERT INTO t SELECT g, 'lost ' || g, 0 FROM generate_series(10001, 10050) g;
	DELETE FROM t WHERE id <= 20;
	UPDATE t SET v = 'updated on the old primary' WHERE id BETWEEN 21 AND 40;
});

# A workload in the middle of which the primary stops.
my $work = '';
for my $i (0 .. 400)
{
	my $id = 20001 + $i;
	$work .= "INSERT INTO t VALUES ($id, 'work $id', 0);\n";
	$work .= "UPDATE t SET n = n + 1 WHERE id = " . (50 + $i % 100) . ";\n";
	$work .= "DELETE FROM t WHERE id = " . (200 + $i % 50) . ";\n";
	$work .= "SELECT pg_sleep(0.005);\n";
}
my $bg = start_psql_script($primary, $work, timeout => 60);
ok(poll_until(30, sub { $redis->call('EXISTS', 't:20100') }),
	'the workload streams from the old primary');
is($redis->call('EXISTS', 't:10001'), 1,
	'Redis has rows the standby never received');
$primary->stop('immediate');
finish_psql_script($bg);

# Promotion; the new primary's users go on at once, before its worker has
# a slot: their deletes must not leave keys behind either.
my $log_offset = -s $standby->logfile;
$standby->promote;
$standby->safe_psql('postgres', q{
	DELETE FROM t WHERE id BETWEEN 100 AND 120;
	INSERT INTO t SELECT g, 'new ' || g, 1 FROM generate_series(30001, 30020) g;
	UPDATE t SET v = 'new primary' WHERE id BETWEEN 121 AND 130;
});
wait_for_status($standby, 'state', 'streaming', 60,
	'the promoted standby\'s worker streams');
$standby->safe_psql('postgres', q{
	DELETE FROM t WHERE id BETWEEN 131 AND 140;
	UPDATE t SET v = 'streamed' WHERE id BETWEEN 141 AND 150;
	INSERT INTO t VALUES (40001, 'after the load', 2);
});
wait_for_redis($standby);
check_table_in_redis($standby, $redis, 't', 't',
	'Redis equals the new primary\'s table');
is($redis->call('EXISTS', 't:10001', 't:10050', 't:100', 't:131'), 0,
	'keys of rows the new primary never had or deleted are gone');
is($redis->call('HGET', 't:1', 'v'), 'row 1',
	'rows the old primary deleted after the standby stopped are back');
ok($redis->call('GET', 'inserts') > 0, 'a key outside the table\'s pattern is kept');
my @swept = log_lines($standby,
	qr/sweep after the initial load removed (\d+) keys/, $log_offset);
my ($nswept) = @swept ? $swept[0] =~ /removed (\d+) keys/ : (0);
note("swept: @swept");
ok($nswept >= 50, 'the sweep is logged with its count (at least the 50 rows the standby never had)')
  or diag(@swept);
ok($standby->log_contains('Redis holds the stream of another server or timeline', $log_offset),
	'the worker saw the stream came from another timeline');

# The old primary, restarted as it was, finds Redis following a later
# timeline of its system: it does not stream.
$primary->start;
wait_for_status($primary, 'last_error', qr/later timeline/, 30,
	'the old primary\'s worker does not stream over the new primary');
$primary->safe_psql('postgres', q{INSERT INTO t VALUES (50001, 'split brain', 0)});
$standby->safe_psql('postgres', q{INSERT INTO t VALUES (40002, 'still streamed', 2)});
wait_for_redis($standby);
is($redis->call('EXISTS', 't:50001'), 0,
	'a row of the old primary does not reach Redis');
check_table_in_redis($standby, $redis, 't', 't',
	'Redis still equals the new primary\'s table');

$primary->stop;
$standby->stop;
done_testing();
