# Copyright (c) pg2redis developers
#
# Exactly once under crashes: while a workload runs (each transaction inserts
# 50 items and their log rows, adds 1 to the qty of random items and deletes
# random items), the worker is killed with SIGKILL (the postmaster then
# restarts every process after crash recovery) or PostgreSQL is stopped in
# immediate mode; both also while Redis is stalled, so that Redis runs
# commands the worker sent but PostgreSQL never confirmed.  Afterwards Redis
# equals PostgreSQL, the INCRBY counter equals sum(qty) and the XADD stream
# has exactly one entry per committed insert.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Pg2RedisTest;
use Test::More;

my $redis = start_redis(name => 'crash');
my $node = new_node(
	'crash',
	redis          => $redis,
	flush_interval => '5ms',
	conf           => [
		'restart_after_crash = on',
		"pg2redis.retry_initial_backoff = '50ms'",
		"pg2redis.retry_max_backoff = '500ms'"
	]);
create_items_schema($node, xadd => 1);

sub committed_inserts
{
	return $node->safe_psql('postgres', 'SELECT count(*) FROM log');
}

# $crash->() is called while a background workload runs, once it has
# committed some transactions; the node is then back and streaming, another
# (foreground) workload runs, and Redis must equal PostgreSQL exactly.
my $base = 1;

sub crash_during_workload
{
	my ($label, $crash) = @_;

	my $before = committed_inserts();
	my $h = start_psql_script($node,
		items_workload_sql(base => $base, txns => 60, sleep => 0.03));
	$base += 100_000;
	ok(poll_until(60, sub { committed_inserts() >= $before + 500 }),
		"$label: the workload is running");

	$crash->();

	my ($rc, $out, $err) = finish_psql_script($h);
	note("$label: workload psql exit status " . ($rc // 'undef') . ": $err");

	ok(poll_until(120, sub { $node->safe_psql('postgres', 'SELECT 1') eq '1' }),
		"$label: the server accepts connections again");
	wait_for_status($node, 'state', 'streaming', 60,
		"$label: the worker streams again");

	($rc, $out, $err) = run_psql_script($node,
		items_workload_sql(base => $base, txns => 5, sleep => 0));
	$base += 100_000;
	is($rc, 0, "$label: a workload after recovery commits") or diag($err);

	wait_for_redis($node, 120, "$label: caught up");
	check_items_in_redis($node, $redis, $label, xadd => 1);
	return;
}

# Kills the worker with SIGKILL and checks that the postmaster restarted.
sub kill_worker
{
	my ($label) = @_;
	my $pid = worker_pid($node) // 0;
	# Never kill(0), which would signal our whole process group, nor a
	# process that is not one of the server's.
	my $cmdline = $pid > 0 ? eval { slurp_file("/proc/$pid/cmdline") } // '' : '';
	ok($pid > 0 && $cmdline =~ /^postgres/, "$label: worker pid known")
	  or return diag("worker_pid '$pid', cmdline '$cmdline'");
	my $offset = -s $node->logfile;
	kill 'KILL', $pid;
	ok( poll_until(
			30,
			sub {
				slurp_file($node->logfile, $offset) =~
				  /all server processes terminated; reinitializing/;
			}),
		"$label: the postmaster restarts after the worker's crash");
	return $pid;
}

my $old_pid;

# (a) The worker killed while it streams.
crash_during_workload(
	'(a) worker SIGKILL',
	sub {
		$old_pid = kill_worker('(a) worker SIGKILL');
	});
isnt(worker_pid($node), $old_pid, '(a) a new worker runs');

# (a2) The worker killed while Redis is stalled: what it sent is still in
# Redis' socket buffer and runs when Redis resumes, but it was never
# confirmed; the new worker must skip it.
crash_during_workload(
	'(a2) worker SIGKILL with Redis stalled',
	sub {
		$redis->pause;
		sleep 1;
		kill_worker('(a2) worker SIGKILL with Redis stalled');
		$redis->resume;
	});

# (b) PostgreSQL stopped in immediate mode while the worker streams.
crash_during_workload(
	'(b) immediate stop',
	sub {
		$node->stop('immediate');
		$node->start;
	});

# (b2) The same with Redis stalled.
crash_during_workload(
	'(b2) immediate stop with Redis stalled',
	sub {
		$redis->pause;
		sleep 1;
		$node->stop('immediate');
		$redis->resume;
		$node->start;
	});

$node->stop;
is_deeply([ log_lines($node, qr/PANIC|was terminated by signal (?!9:)/) ],
	[], 'no crash other than the SIGKILLs the test sent');

done_testing();
