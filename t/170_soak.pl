# Copyright (c) pg2redis developers
#
# Soak: the random workload of t/ChaosWorkload.pm streamed in cycles while
# faults come one per cycle, in turn: a Redis restart (kill -9, AOF keeps
# its data) mid-batch, Redis stalled (SIGSTOP) for 3 s mid-batch, a SIGKILL
# of the worker between batches, and a cycle without fault.  Every second
# the worker's memory (VmRSS, VmHWM) and pg2redis_status().lag_bytes are
# sampled.  Checks: after every cycle the stream catches up (lag back to
# zero) within 60 s; the worker's RSS shows no growth trend (the mean of the
# last quarter of samples is within 25% + 8 MiB of the second quarter's);
# at the end Redis equals PostgreSQL, the counter is exact and the stream
# holds one entry per insert.
#
# CI runs it for 24 seconds (a cycle of each fault or so).  PG2REDIS_SOAK=1 runs it for 30 minutes
# (PG2REDIS_SOAK_MINUTES=N for N); the samples are written as CSV to
# tmp_check/soak_samples.csv and a summary is printed (docs/soak.md keeps
# the output of a 30-minute run).  The seed is printed
# (PG2REDIS_CHAOS_SEED replays it).

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Pg2RedisTest;
use ChaosWorkload;
use Test::More;
use Time::HiRes qw(time sleep);

my $minutes =
  $ENV{PG2REDIS_SOAK} ? ($ENV{PG2REDIS_SOAK_MINUTES} // 30) : 0.4;
my $seed = $ENV{PG2REDIS_CHAOS_SEED} // time();
srand($seed);
diag(sprintf('soak: %.2f minutes, seed %d', $minutes, $seed));

my $redis = start_redis(
	name => 'soak',
	appendonly => 'yes',
	appendfsync => 'always');
my $node = new_node(
	'soak',
	redis => $redis,
	flush_interval => '5ms',
	conf => [
		'restart_after_crash = on', 'pg2redis.retry_max_backoff = 1s',
		'pg2redis.redis_timeout = 2s'
	]);
$node->safe_psql('postgres', ChaosWorkload->schema_sql);
my $chaos = ChaosWorkload->new;

my $csv = "$PostgreSQL::Test::Utils::tmp_check/soak_samples.csv";
open(my $out, '>', $csv) or die "cannot write $csv: $!";
print $out "seconds,cycle,fault,worker_pid,vmrss_kb,vmhwm_kb,lag_bytes\n";

my $t0 = time();
my $deadline = $t0 + $minutes * 60;
my @samples;    # [seconds, rss_kb]
my @faults = ('redis restart', 'redis stall', 'worker kill', 'none');
my ($cycle, $worst_catchup, $fault) = (0, 0, 'none');
my %catchup;    # fault => [seconds...]

# sample() reads the worker's memory and the lag once, and records them.
sub sample
{
	my $pid = worker_pid($node) // 0;
	my ($rss, $hwm) = (0, 0);
	if ($pid && open(my $st, '<', "/proc/$pid/status"))
	{
		while (<$st>)
		{
			$rss = $1 if /^VmRSS:\s+(\d+)/;
			$hwm = $1 if /^VmHWM:\s+(\d+)/;
		}
		close $st;
	}
	my $lag = $node->safe_psql('postgres',
		'SELECT coalesce(lag_bytes, -1) FROM pg2redis_status()');
	my $s = time() - $t0;
	printf $out "%.1f,%d,%s,%d,%d,%d,%s\n", $s, $cycle, $fault, $pid, $rss,
	  $hwm, $lag;
	push @samples, [ $s, $rss ] if $rss;
	return $lag;
}

# run_batch_sampling() runs n random transactions in the background, with a
# short pause between them, sampling every second; $during is called once,
# two seconds in.
sub run_batch_sampling
{
	my ($n, $during) = @_;
	my $sql = join('', map { $chaos->transaction . "SELECT pg_sleep(0.02);\n" } 1 .. $n);
	my $h = start_psql_script($node, $sql, timeout => 600);
	my $started = time();
	while ($h->{h}->pumpable)
	{
		sample();
		if ($during && time() - $started >= 2)
		{
			$during->();
			$during = undef;
		}
		$h->{h}->pump_nb;
		sleep(1) if $h->{h}->pumpable;
	}
	$during->() if $during;
	my ($rc, undef, $err) = finish_psql_script($h);
	return ($rc, $err);
}

my $failures = 0;
while (time() < $deadline)
{
	$fault = $faults[ $cycle % @faults ];
	my $during;
	if ($fault eq 'redis restart')
	{
		$during = sub { $redis->restart(kill9 => 1) };
	}
	elsif ($fault eq 'redis stall')
	{
		$during = sub { $redis->pause; sleep(3); $redis->resume };
	}
	elsif ($fault eq 'worker kill')
	{
		my $pid = worker_pid($node);
		kill 'KILL', $pid if $pid;
		$node->poll_query_until('postgres', 'SELECT true')
		  or die 'the server did not come back after the worker was killed';
	}
	my ($rc, $err) = run_batch_sampling(150, $during);
	if (!defined $rc || $rc != 0)
	{
		$failures++;
		diag("cycle $cycle ($fault): the workload failed: " . ($err // ''));
	}

	# the stream catches up: lag back to zero
	my $end = time();
	my $caught = 0;
	while (time() - $end < 60)
	{
		my $lag = sample();
		if ($lag eq '0')
		{
			$caught = 1;
			last;
		}
		sleep(1);
	}
	my $secs = time() - $end;
	push @{ $catchup{$fault} }, $secs;
	$worst_catchup = $secs if $secs > $worst_catchup;
	if (!$caught)
	{
		$failures++;
		diag("cycle $cycle ($fault): lag not back to zero after 60 s\n"
			  . status_text($node));
	}
	$cycle++;
}
close $out;

is($failures, 0,
	"$cycle cycles: every workload batch ran and the lag came back to zero after each fault"
);

# memory: no growth trend
my $n = @samples;
ok($n >= 8, "$n memory samples taken");
my $mean = sub {
	my @s = @_;
	my $t = 0;
	$t += $_->[1] for @s;
	return @s ? $t / @s : 0;
};
my $q2 = $mean->(@samples[ int($n / 4) .. int($n / 2) - 1 ]);
my $q4 = $mean->(@samples[ int(3 * $n / 4) .. $n - 1 ]);
my ($max) = sort { $b <=> $a } map { $_->[1] } @samples;
diag(sprintf(
		'soak summary: %.1f min, %d cycles, %d samples; worker VmRSS mean 2nd quarter %.1f MiB, last quarter %.1f MiB, max %.1f MiB; slowest catch-up %.1f s',
		(time() - $t0) / 60, $cycle, $n, $q2 / 1024, $q4 / 1024,
		($max // 0) / 1024, $worst_catchup));
for my $f (@faults)
{
	next unless $catchup{$f};
	my @c = sort { $a <=> $b } @{ $catchup{$f} };
	diag(sprintf('catch-up after %-13s: %d cycles, median %.1f s, max %.1f s',
			$f, scalar @c, $c[ int($#c / 2) ], $c[-1]));
}
ok($q4 <= $q2 * 1.25 + 8 * 1024,
	'the worker\'s memory shows no growth trend (last quarter within 25% + 8 MiB of the second)'
);

wait_for_redis($node, 120, 'caught up at the end');
$chaos->check($node, $redis, 'after the soak');

$node->stop;
done_testing();
