# Copyright (c) pg2redis developers
#
# A random workload with everything at once — multi-statement transactions,
# primary-key changes, NULLs, unicode, large TOASTed text (changed and
# unchanged), rollbacks and savepoints, an INCRBY counter and an XADD stream —
# interrupted by a SIGKILL of the worker, a Redis restart (AOF) and an
# immediate PostgreSQL stop.  At the end Redis equals PostgreSQL, the counter
# equals the SQL sum, and the stream holds exactly one entry per committed
# insert.  The seed is printed, so a failure can be replayed
# (PG2REDIS_CHAOS_SEED).

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Pg2RedisTest;
use ChaosWorkload;
use Test::More;

my $seed = $ENV{PG2REDIS_CHAOS_SEED} // time();
srand($seed);
diag("chaos seed $seed");

my $redis = start_redis(name => 'chaos', appendonly => 'yes', appendfsync => 'always');
my $node = new_node('chaos', redis => $redis, flush_interval => '5ms',
	conf => [ "pg2redis.max_transaction_commands = 10",    # split bigger transactions
		"restart_after_crash = on" ]);

$node->safe_psql('postgres', ChaosWorkload->schema_sql);

my $chaos = ChaosWorkload->new;

sub run_batch
{
	my ($n, $label) = @_;
	my $sql = $chaos->batch_sql($n);
	my ($rc, $out, $err) = run_psql_script($node, $sql, timeout => 300);
	is($rc, 0, "workload batch: $label") or diag($err);
}

run_batch(100, 'before any fault');

# the worker dies mid-stream
my $pid = worker_pid($node);
kill 'KILL', $pid if $pid;
# a killed background worker makes the postmaster restart every backend
$node->poll_query_until('postgres', 'SELECT true')
  or die 'the server did not come back after the worker was killed';
run_batch(100, 'after SIGKILL of the worker');
$node->poll_query_until('postgres', "SELECT state = 'streaming' FROM pg2redis_status()")
  or diag(status_text($node));

# Redis restarts (AOF keeps its data)
$redis->restart;
run_batch(100, 'after a Redis restart');

# PostgreSQL crashes
$node->stop('immediate');
$node->start;
run_batch(100, 'after an immediate stop');

wait_for_redis($node, 120, 'caught up after every fault');
$chaos->check($node, $redis, 'after every fault');

$node->stop;
done_testing();
