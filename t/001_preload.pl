# Copyright (c) pg2redis developers
#
# pg2redis only works preloaded: without shared_preload_libraries, CREATE
# EXTENSION and LOAD must fail with a clear error and a hint (never a crash);
# once preloaded with wal_level = logical, the extension installs and its
# rules table starts empty.

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('preload');
$node->init;

# wal_level = logical from the start, so that the only thing missing in the
# first part is the preload (the library also checks wal_level).
$node->append_conf('postgresql.conf', "wal_level = logical\n");
$node->start;

# (a) Not preloaded: both ways of loading the library are refused.
my $preload_error = qr/must be loaded via "shared_preload_libraries"/;
my $preload_hint  = qr/^HINT:.*shared_preload_libraries/m;

foreach my $sql ('CREATE EXTENSION pg2redis', "LOAD 'pg2redis'")
{
	my ($ret, $stdout, $stderr) = $node->psql('postgres', "$sql;");
	isnt($ret, 0, "$sql fails without shared_preload_libraries");
	like($stderr, $preload_error, "$sql: error names shared_preload_libraries");
	like($stderr, $preload_hint, "$sql: hint says how to preload");
}

is($node->safe_psql('postgres',
		"SELECT count(*) FROM pg_extension WHERE extname = 'pg2redis'"),
	'0', 'the failed CREATE EXTENSION left nothing behind');

# (b) Preloaded: the extension installs and starts with no rules.
$node->append_conf('postgresql.conf',
	"shared_preload_libraries = 'pg2redis'\n");
$node->restart;

my ($ret, $stdout, $stderr) =
  $node->psql('postgres', 'CREATE EXTENSION pg2redis;');
is($ret, 0, 'CREATE EXTENSION succeeds when preloaded')
  or diag("stderr: $stderr");
is($node->safe_psql('postgres', 'SELECT count(*) FROM pg2redis.rules'),
	'0', 'pg2redis.rules starts empty');

# (c) wal_level below logical: the worker says why it cannot stream, and
# stays stopped instead of restarting in a loop.
$node->append_conf('postgresql.conf', "wal_level = replica\nmax_wal_senders = 0\n");
$node->restart;
my $found = 0;
foreach (1 .. 100)
{
	$found = 1, last
	  if slurp_file($node->logfile) =~ /the worker cannot stream: "wal_level" is "replica"/;
	select(undef, undef, undef, 0.1);
}
ok($found, 'with wal_level = replica the worker logs why it cannot stream');
like(slurp_file($node->logfile), qr/HINT:  Set wal_level = logical/,
	'and how to fix it');
is($node->safe_psql('postgres', 'SELECT state FROM pg2redis_status()'),
	'stopped', 'pg2redis_status() says stopped');
like($node->safe_psql('postgres', 'SELECT last_error FROM pg2redis_status()'),
	qr/wal_level/, 'last_error names wal_level');

# (d) No backend or worker died along the way.
$node->stop;
unlike(
	slurp_file($node->logfile),
	qr/terminated by signal/,
	'no process was terminated by a signal');

done_testing();
