# Copyright (c) pg2redis developers
#
# One transaction of 1,000,000 rows: every row reaches Redis exactly once,
# and the worker's memory stays bounded (peak RSS under 128 MiB, issue 13
# item 2 (a)) while it decodes and sends it.  On a 2-core machine the insert takes ~1.5 s and the
# test should finish well within 3 minutes; the stream gets 300 s.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Pg2RedisTest;
use Test::More;
use Time::HiRes qw(time usleep);

my $rows = 1_000_000;
my $limit_kb = 128 * 1024;

my $redis = start_redis(name => 'big');
my $node = new_node(
	'big',
	redis => $redis,
	conf  => [ "shared_buffers = '128MB'", "max_wal_size = '2GB'" ]);

$node->safe_psql(
	'postgres', q{
	CREATE TABLE big (id int PRIMARY KEY, name text, qty int);
	SELECT pg2redis_add_rule('big', 'insert', ARRAY['HSET', 'big:{id}', '{pairs:*}']);
	SELECT pg2redis_add_rule('big', 'insert', 'INCR bigcount');
});

my $pid = worker_pid($node);
ok(defined $pid, 'worker pid known');

# memory() returns the worker's memory figures (process_memory).
sub memory
{
	return process_memory($pid);
}

my %start = memory();
note("worker memory before: VmRSS $start{VmRSS} kB, VmHWM $start{VmHWM} kB");

my $t0 = time;
$node->safe_psql(
	'postgres',
	"INSERT INTO big SELECT g, 'name ' || g, g % 100 FROM generate_series(1, $rows) g",
	timeout => 300);
my $t_insert = time - $t0;
diag(sprintf('INSERT of %d rows in one transaction: %.1f s', $rows, $t_insert));

# Follow the worker's RSS until everything is applied.
my ($max_rss, $caught_up, $last_err) = (0, 0, '');
my $deadline = time + 300;
while (time < $deadline)
{
	my %m = memory();
	$max_rss = $m{VmRSS} if ($m{VmRSS} // 0) > $max_rss;
	my ($ret, $stdout, $stderr) =
	  $node->psql('postgres', "SELECT pg2redis_wait('0.25s')", timeout => 60);
	if ($stdout eq 't')
	{
		$caught_up = 1;
		last;
	}
	if ($stderr ne '')
	{
		$last_err = $stderr;
		sleep 1;    # an error returns at once: do not spin on it
	}
}
my $t_stream = time - $t0 - $t_insert;
ok($caught_up, 'the big transaction is applied within 300 s')
  or diag("last pg2redis_wait() error: $last_err\n", status_text($node));
diag(sprintf('applied in Redis %.1f s after the commit', $t_stream));

my %end = memory();
is(worker_pid($node), $pid, 'the same worker did it all (no restart)');
diag("worker memory: sampled peak VmRSS $max_rss kB; at the end VmHWM "
	  . ($end{VmHWM} // '?')
	  . " kB, VmRSS "
	  . ($end{VmRSS} // '?')
	  . " kB (RssAnon "
	  . ($end{RssAnon} // '?')
	  . " kB, RssShmem "
	  . ($end{RssShmem} // '?')
	  . " kB)");
# The kernel updates VmHWM lazily (RSS counters are per-CPU batched), so
# take the larger of it and the sampled peak.
my $peak = $end{VmHWM} // 0;
$peak = $max_rss if $max_rss > $peak;
diag(sprintf('VmHWM after 1M-row txn: %d MiB', $peak / 1024));
ok($end{VmHWM} && $peak < $limit_kb,
	"the worker's peak RSS ($peak kB) stays under 128 MiB");

is($redis->call('GET', 'bigcount'), $rows, 'INCR ran once per row');
is($redis->call('EVAL', q{return #redis.call('KEYS', ARGV[1])}, 0, 'big:*'),
	$rows, 'one big:* hash per row');

my @sample = (1, 2, 499_999, 500_000, $rows - 1, $rows,
	map { 1 + int(rand($rows)) } 1 .. 20);
my @bad;
foreach my $id (@sample)
{
	my $h = redis_hash($redis, "big:$id");
	my $want = { id => $id, name => "name $id", qty => $id % 100 };
	push @bad, "big:$id: " . join(',', map { "$_=$h->{$_}" } sort keys %$h)
	  unless join(',', map { "$_=$h->{$_}" } sort keys %$h) eq
	  join(',', map { "$_=$want->{$_}" } sort keys %$want);
}
is(scalar(@bad), 0, 'sampled hashes equal their rows') or diag(join("\n", @bad));

my $st = status_row($node);
cmp_ok($st->{changes}, '>=', $rows, 'status counts the changes');
is($st->{dead_letters}, '0', 'no dead letters');
is($st->{state}, 'streaming', 'still streaming');

$node->stop;
is_deeply([ log_lines($node, qr/terminated by signal|PANIC|out of memory/) ],
	[], 'no process crashed or ran out of memory');

done_testing();
