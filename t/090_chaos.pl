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
use Test::More;

my $seed = $ENV{PG2REDIS_CHAOS_SEED} // time();
srand($seed);
diag("chaos seed $seed");

my $redis = start_redis(name => 'chaos', appendonly => 'yes', appendfsync => 'always');
my $node = new_node('chaos', redis => $redis, flush_interval => '5ms',
	conf => [ "pg2redis.max_transaction_commands = 10",    # split bigger transactions
		"restart_after_crash = on" ]);

$node->safe_psql(
	'postgres', q{
	CREATE TABLE chaos (id int PRIMARY KEY, name text, qty int, big text);
	ALTER TABLE chaos REPLICA IDENTITY FULL;
	CREATE TABLE inserted (id int);
	SELECT pg2redis_add_rule('chaos', op, ARRAY['HSET', 'chaos:{id}', '{pairs:id,name,qty}'])
	  FROM unnest(ARRAY['insert', 'update']) op;
	SELECT pg2redis_add_rule('chaos', op, 'SET big:{id} {big}')
	  FROM unnest(ARRAY['insert', 'update']) op;
	SELECT pg2redis_add_rule('chaos', 'delete', 'DEL chaos:{id} big:{id}');
	SELECT pg2redis_add_rule('chaos', op, 'INCRBY total:chaos {diff:qty}')
	  FROM unnest(ARRAY['insert', 'update', 'delete']) op;
	SELECT pg2redis_add_rule('chaos', 'insert', 'XADD events:chaos * id {id}');
});

my @names = ('plain', 'ünïcødé ☃', 'quote "x"', "tab\there", 'braces {id}', '');
my $next_id = 1;
my %live;

sub rand_name
{
	my $n = $names[ int(rand(@names)) ];
	return int(rand(8)) == 0 ? 'NULL' : "'" . ($n =~ s/'/''/gr) . " " . int(rand(1000)) . "'";
}

sub rand_big
{
	# 0: NULL, 1: short, 2: about 6 kB of md5 text (TOASTed, stored out of line)
	my $k = int(rand(3));
	return 'NULL' if $k == 0;
	return "'short " . int(rand(1000)) . "'" if $k == 1;
	my $salt = int(rand(1_000_000));
	return "(SELECT string_agg(md5(g::text || '$salt'), '') FROM generate_series(1, 200) g)";
}

sub rand_live
{
	my @ids = keys %live;
	return @ids ? $ids[ int(rand(@ids)) ] : undef;
}

# one transaction of random statements; committed or rolled back
sub transaction
{
	my $sql = "BEGIN;\n";
	my $commit = int(rand(6)) != 0;
	my %added;
	my %removed;
	for (1 .. 1 + int(rand(6)))
	{
		my $op = int(rand(10));
		if ($op < 4 || !%live)
		{
			my $id = $next_id++;
			my $qty = int(rand(3)) == 0 ? 'NULL' : int(rand(100)) - 20;
			$sql .= "INSERT INTO chaos VALUES ($id, " . rand_name() . ", $qty, " . rand_big() . ");\n";
			$sql .= "INSERT INTO inserted VALUES ($id);\n";
			$added{$id} = 1;
		}
		elsif ($op < 6)
		{
			my $id = rand_live() // next;
			$sql .= "UPDATE chaos SET qty = coalesce(qty, 0) + " . (int(rand(21)) - 10) . " WHERE id = $id;\n";
		}
		elsif ($op == 6)
		{
			my $id = rand_live() // next;
			$sql .= "UPDATE chaos SET name = " . rand_name() . " WHERE id = $id;\n";  # big unchanged
		}
		elsif ($op == 7)
		{
			my $id = rand_live() // next;
			$sql .= "UPDATE chaos SET big = " . rand_big() . " WHERE id = $id;\n";
		}
		elsif ($op == 8)
		{
			my $id = rand_live() // next;
			next if $removed{$id};
			my $new = $next_id++;
			$sql .= "UPDATE chaos SET id = $new WHERE id = $id;\n";
			# a key change runs the insert rules: one more stream entry
			$sql .= "INSERT INTO inserted VALUES ($new);\n";
			$removed{$id} = 1;
			$added{$new} = 1;
		}
		else
		{
			my $id = rand_live() // next;
			next if $removed{$id};
			$sql .= "SAVEPOINT s; DELETE FROM chaos WHERE id = $id;\n";
			if (int(rand(3)) == 0) { $sql .= "ROLLBACK TO SAVEPOINT s;\n"; }
			else { $removed{$id} = 1; }
		}
	}
	$sql .= $commit ? "COMMIT;\n" : "ROLLBACK;\n";
	if ($commit)
	{
		delete $live{$_} for keys %removed;
		$live{$_} = 1 for keys %added;
	}
	return $sql;
}

sub run_batch
{
	my ($n, $label) = @_;
	my $sql = join('', map { transaction() } 1 .. $n);
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
check_table_in_redis($node, $redis, '(SELECT id, name, qty FROM chaos)', 'chaos',
	'every row is in Redis as it is in PostgreSQL');
my $bad_big = $node->safe_psql('postgres',
	"SELECT count(*) FROM chaos WHERE big IS NOT NULL AND "
	  . "pg2redis_redis('GET', 'big:' || id) <> to_jsonb(big)");
is($bad_big, '0', 'every TOASTed value is in Redis, changed or not');
is($redis->call('GET', 'total:chaos') // '0',
	$node->safe_psql('postgres', 'SELECT coalesce(sum(qty), 0) FROM chaos'),
	'the INCRBY counter equals the SQL sum');
is($redis->call('XLEN', 'events:chaos'),
	$node->safe_psql('postgres', 'SELECT count(*) FROM inserted'),
	'the stream holds one entry per committed insert');

$node->stop;
done_testing();
