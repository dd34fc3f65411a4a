# Copyright (c) pg2redis developers
#
# The worker's memory stays bounded under the workloads that used to grow
# it (issue 13, item 2, streaming-core review finding 4): its peak resident
# size (VmHWM of /proc/<pid>/status) stays under 128 MiB for
#
#  (c) an on-demand snapshot of a 1,000,000-row table (chunks of up to
#      100,000 rows, pg2redis.snapshot_batch_size) while an UPDATE of every
#      row commits inside a chunk's window.  Before, each chunk row was
#      rendered in the chunk's memory and kept there, about 4 kB a row
#      whatever its size (464 MiB here), and each change decoded while a
#      chunk was open left its key in the chunk's memory (about 25 MiB per
#      million changes here: with that alone, 110 MiB, and 205 MiB with
#      PG2REDIS_SOAK=1).  Now a change's key is looked up in scratch
#      memory, a row is rendered in scratch memory and only its commands
#      are kept, and a chunk ends at pg2redis.batch_bytes of them (its rows
#      fetched 64 at a time): 85 MiB, at either size;
#  (d) one row with a 190 MB value whose {json:*} form would pass 1 GB
#      (control characters, six bytes each once escaped): a dead letter,
#      by its raw size, before any output function runs.  PostgreSQL's
#      decoder itself allocates the raw size of an out-of-line value, zeroed,
#      to put its TOAST chunks back together (ReorderBufferToastReplace in
#      reorderbuffer.c; pgoutput's backend peaks at 214 MB on the same
#      row), before any output plugin sees the change: the check is that
#      the worker adds less than 128 MiB to that one copy.
#
# (a), a 1,000,000-row transaction, is t/040_big_txn.pl; (b), one
# transaction of 10,000 rows of 110 kB, is t/134_poison.pl.
#
# The figures are printed; they are checks, not benchmarks.  VmHWM counts
# the pages of shared memory the worker touched too (shared buffers read by
# the snapshot's index scans), which are not the worker's own: the node runs
# with shared_buffers = 32MB so that they cannot hide or fake a growth of the
# worker's memory; RssAnon (its private memory), sampled, is printed beside.
# Each phase starts from a reset peak (clear_refs), or from a new worker
# where the kernel does not allow that.  About a minute on 2 cores.
#
# PG2REDIS_SOAK=1 triples the table and the update of (c).

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Pg2RedisTest;
use Test::More;
use Time::HiRes qw(time usleep);

my $limit_kb = 128 * 1024;
my $soak = $ENV{PG2REDIS_SOAK} ? 3 : 1;
my $rows_c = 1_000_000 * $soak;
my $t_start = time;

my $redis = start_redis(name => 'mem');
my $node = new_node(
	'mem',
	redis => $redis,
	create_extension => 0,
	conf => [
		"shared_buffers = '32MB'", "max_wal_size = '4GB'",
		"pg2redis.snapshot_statement_timeout = '5min'",
		"pg2redis.snapshot_batch_size = 100000"
	]);

# The snapshot's table is filled before the slot exists: its rows reach
# Redis only through the snapshot.
$node->safe_psql('postgres', qq{
	CREATE TABLE big (id int PRIMARY KEY, v int);
	ALTER TABLE big REPLICA IDENTITY FULL;
	INSERT INTO big SELECT g, g FROM generate_series(1, $rows_c) g;
	CREATE TABLE jdocs (id int PRIMARY KEY, body text);
	CREATE EXTENSION pg2redis;
}, timeout => 600);
wait_for_status($node, 'state', 'streaming', 60, 'the worker streams');
$node->safe_psql('postgres', q{
	SELECT pg2redis_add_rule('jdocs', 'insert', 'SET jdoc:{id} {json:*}');
	SELECT pg2redis_add_rule('big', op, 'SET big:{id} {v}')
	  FROM unnest(ARRAY['insert', 'update']) op;
});

my $pid;

# memory() returns the worker's memory figures (process_memory).
sub memory
{
	return process_memory($pid);
}

my %peak;

# start_phase resets the worker's peak (or starts a new worker) and the
# sampled maxima.
sub start_phase
{
	$pid = worker_pid($node);
	if (!reset_peak_memory($pid))
	{
		$node->safe_psql('postgres', "SELECT pg_terminate_backend($pid)");
		ok(poll_until(60, sub { my $p = worker_pid($node); defined $p && $p ne $pid }),
			'a new worker for the next phase');
		wait_for_status($node, 'state', 'streaming', 60, 'streaming again');
		$pid = worker_pid($node);
	}
	%peak = (VmRSS => 0, RssAnon => 0);
	sample();
}

# sample notes the largest RSS and private RSS seen.
sub sample
{
	my %m = memory();
	for my $k (qw(VmRSS RssAnon))
	{
		$peak{$k} = $m{$k} if ($m{$k} // 0) > $peak{$k};
	}
}

# wait_applied waits (sampling) until Redis has everything committed.
sub wait_applied
{
	my ($timeout, $also) = @_;
	my $deadline = time + $timeout;
	while (time < $deadline)
	{
		sample();
		my ($ret, $stdout) =
		  $node->psql('postgres', "SELECT pg2redis_wait('0.2s')", timeout => 60);
		return 1 if $stdout eq 't' && (!$also || $also->());
		sample();
	}
	return 0;
}

# check_peak is the check of a phase: the worker's peak resident size
# (VmHWM, or the sampled peak if higher: the kernel updates VmHWM lazily)
# is under the limit, and the worker is the same.
# $core_kb is memory PostgreSQL's decoder itself takes, allowed on top.
sub check_peak
{
	my ($what, $core_kb) = @_;
	$core_kb //= 0;
	my %m = memory();
	sample();
	my $hwm = $m{VmHWM} // 0;
	$hwm = $peak{VmRSS} if $peak{VmRSS} > $hwm;
	diag(sprintf(
			'VmHWM after %s: %d MiB (sampled peak RssAnon %d MiB; now VmRSS %d MiB, RssShmem %d MiB)',
			$what, $hwm / 1024, $peak{RssAnon} / 1024,
			($m{VmRSS} // 0) / 1024, ($m{RssShmem} // 0) / 1024));
	is(worker_pid($node), $pid, "$what: the same worker did it");
	ok( $m{VmHWM} && $hwm - $core_kb < $limit_kb,
		"$what: the worker's peak RSS ("
		  . int($hwm / 1024) . ' MiB'
		  . ($core_kb ? sprintf(', %d MiB of it the decoder\'s', $core_kb / 1024) : '')
		  . ') is under 128 MiB'
		  . ($core_kb ? ' more than the decoder takes' : ''));
}

# (d) One 190 MB value whose {json:*} form would be 1.1 GB (compressed to
# 2 MB on disk, out of line).
start_phase();
my $t0 = time;
$node->safe_psql('postgres', q{
	INSERT INTO jdocs VALUES (1, repeat(chr(1), 190 * 1024 * 1024));
	INSERT INTO jdocs VALUES (2, 'after');
}, timeout => 300);
ok(wait_applied(120), '(d) the row after the 190 MB value is applied');
is($redis->call('GET', 'jdoc:2'), '{"id":2,"body":"after"}', '(d) and in Redis');
like($node->safe_psql('postgres',
		q{SELECT error FROM pg2redis.dead_letters WHERE relation = 'jdocs'::regclass}),
	qr/max_argument_bytes/, '(d) the 190 MB value is a dead letter');
check_peak('a 190 MB value', 190 * 1024);
note(sprintf('(d) took %.1f s', time - $t0));

# (c) A snapshot of the 1M-row table; an UPDATE of every row commits while
# its first chunk is open.  The table's snapshot filter holds that chunk's
# query until the test opens the gate (the owner's code runs in the
# worker, as any filter's).
$node->safe_psql('postgres', q{
	CREATE TABLE gate (open boolean);
	INSERT INTO gate VALUES (false);
	CREATE FUNCTION gate_wait() RETURNS boolean LANGUAGE plpgsql AS $$
	BEGIN
		FOR i IN 1 .. 6000 LOOP
			EXIT WHEN (SELECT open FROM public.gate);
			PERFORM pg_catalog.pg_sleep(0.02);
		END LOOP;
		RETURN true;
	END
	$$;
	INSERT INTO pg2redis.snapshot_filters VALUES ('big', 'id <> 1 OR public.gate_wait()');
});
start_phase();
$t0 = time;
my $req = $node->safe_psql('postgres', q{SELECT pg2redis_snapshot('big')});
ok( poll_until(
		60,
		sub {
			$node->safe_psql('postgres',
				"SELECT wait_event FROM pg_stat_activity WHERE pid = $pid") eq 'PgSleep';
		}),
	'(c) the first chunk is open, its query held by the gate');
$node->safe_psql('postgres', 'UPDATE big SET v = v + 1', timeout => 600);
my $t_update = time - $t0;
$node->safe_psql('postgres', 'UPDATE gate SET open = true');
ok( wait_applied(
		600,
		sub {
			$node->safe_psql('postgres',
				"SELECT state FROM pg2redis_snapshots WHERE id = $req") eq 'done';
		}),
	'(c) the snapshot is done and the update applied');
is(scalar(redis_keys($redis, 'big:*')), $rows_c, '(c) one key per row');
my @bad;
for my $id (1, 2, 10_000, 10_001, 500_000, $rows_c, map { 1 + int(rand($rows_c)) } 1 .. 20)
{
	my $v = $redis->call('GET', "big:$id") // 'nil';
	push @bad, "big:$id = $v" unless $v eq $id + 1;
}
is(join(', ', @bad), '', '(c) sampled rows hold the updated values');
check_peak("a snapshot of $rows_c rows with an UPDATE of them in a chunk's window");
note(sprintf('(c) took %.1f s (the update %.1f s)', time - $t0, $t_update));

$node->stop;
is_deeply([ log_lines($node, qr/terminated by signal|PANIC|out of memory/) ],
	[], 'no process crashed or ran out of memory');
diag(sprintf('t/160 ran %.0f s', time - $t_start));
done_testing();
