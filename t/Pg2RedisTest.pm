# Copyright (c) pg2redis developers

=pod

=head1 NAME

Pg2RedisTest - helpers for the pg2redis TAP tests

=head1 SYNOPSIS

  use FindBin;
  use lib $FindBin::RealBin;
  use Pg2RedisTest;

  my $redis = start_redis();
  my $node  = new_node('main', redis => $redis, flush_interval => '5ms');
  $node->safe_psql('postgres', 'CREATE TABLE t ...; SELECT pg2redis_add_rule(...)');
  ...
  wait_for_redis($node);
  check_table_in_redis($node, $redis, 't', 't');

=head1 DESCRIPTION

A throwaway Redis server per test (C<start_redis>), a PostgreSQL node with
pg2redis preloaded and pointed at it (C<new_node>), bounded waits on the
worker (C<wait_for_redis>, C<wait_for_status>), a small binary-safe Redis
client (C<< $redis->call >>), comparisons of a table with its Redis copy,
and background psql scripts for workloads.

Every Redis server started here is a child of the test process, recorded by
pid and stopped in an END block, also when the test fails or dies; on Linux it
also gets SIGKILL when the test process itself dies (PR_SET_PDEATHSIG), so
that not even a killed test leaves one behind. Background psql scripts that
are still running at the end are killed the same way.

Everything compares bytes: test files should not C<use utf8>, so that string
literals, psql output and Redis replies are all UTF-8 bytes.

=cut

package Pg2RedisTest;

use strict;
use warnings;

use Carp;
use Exporter 'import';
use File::Basename;
use IPC::Run;
use JSON::PP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);

our @EXPORT = qw(
  start_redis
  start_redis_cluster
  start_sentinel_set
  sentinel_primary
  make_test_certs
  snapshot_reaches
  new_node
  paused_load_conf
  wait_for_load_start
  wait_for_redis
  poll_until
  poll_status
  wait_for_status
  status_row
  status_text
  worker_pid
  process_memory
  reset_peak_memory
  redis_hash
  redis_smembers
  redis_keys
  compare_table_to_redis
  check_table_in_redis
  create_items_schema
  items_workload_sql
  check_items_in_redis
  start_psql_script
  finish_psql_script
  run_psql_script
  log_lines
);

# The test's name, as PostgreSQL::Test::Utils names its logs.
my $test_name = basename($0);
$test_name =~ s/\.[^.]+$//;

=pod

=head2 Redis

=over

=item start_redis(%opts)

Starts C<redis-server> as a child process on 127.0.0.1 and a free port (from
C<PostgreSQL::Test::Cluster::get_free_port>, so no node takes it), without
persistence, and waits (at most 10 s) until it answers PING. Returns a
C<Pg2RedisTest::Redis> object. Options:

  port        => N       use this port (e.g. one a node already points at)
  name        => 'r1'    names the log file tmp_check/log/<test>_redis_<name>.log
  requirepass => 'pw'    start with a password; url() and cli() use it
  appendonly  => 1       AOF on (default off), so data survives restart()
  appendfsync => 'always'  with appendonly (default 'always')
  extra_args  => [...]   more redis-server arguments
  config      => $file   a configuration file, given first (e.g. a sentinel's)

=back

=cut

sub start_redis
{
	my (%opts) = @_;
	my $redis = Pg2RedisTest::Redis->new(%opts);
	$redis->start;
	return $redis;
}

=pod

=over

=item start_redis_cluster(%opts)

Starts a Redis Cluster on 127.0.0.1: C<primaries> (default 3) primaries and
C<replicas> (default 0) replicas per primary, each a C<start_redis> server
with C<--cluster-enabled yes>, joined with C<redis-cli --cluster create>.
Waits (at most 30 s) until every node reports C<cluster_state:ok> and knows
every node. Returns the C<Pg2RedisTest::Redis> objects, primaries first in
the order of the slots they hold, then the replicas.
C<node_timeout> (ms, default 2000) sets C<--cluster-node-timeout>, which
bounds how fast a replica takes over a failed primary.
C<< tls => { ca => $file, cert => $file, key => $file } >> gives every node
a TLS port too (C<< $redis->{tls_port} >>, certificate and key for the
server and for the cluster bus, client certificates not required), which
the cluster announces to its TLS clients (C<tls-cluster yes>); the plain
port stays open for the test's own checks (plain clients are told plain
ports).

=back

=cut

sub start_redis_cluster
{
	my (%opts) = @_;
	my $primaries = $opts{primaries} // 3;
	my $replicas  = $opts{replicas}  // 0;
		my $timeout   = $opts{node_timeout} // 2000;
	my $tls       = $opts{tls};
	my @nodes;

	foreach my $i (1 .. $primaries * (1 + $replicas))
	{
		my $tls_port = $tls ? PostgreSQL::Test::Cluster::get_free_port() : undef;
		my @tls_args = $tls
		  ? (
			'--tls-port', $tls_port, '--tls-cert-file', $tls->{cert},
			'--tls-key-file', $tls->{key}, '--tls-ca-cert-file', $tls->{ca},
			'--tls-auth-clients', 'optional', '--tls-cluster', 'yes',
			'--tls-replication', 'yes')
		  : ();
				# the bus port too from PostgreSQL's allocator: the default (port +
		# 10000) can fall in the kernel's ephemeral range, held by a client
		my $r = start_redis(
			name       => "cluster$i",
			extra_args => [
				'--cluster-enabled', 'yes',
				'--cluster-port', PostgreSQL::Test::Cluster::get_free_port(),
				'--cluster-node-timeout', $timeout,
				'--repl-diskless-sync-delay', '0', @tls_args
			]);
		$r->{tls_port} = $tls_port;
		push @nodes, $r;
	}
	my ($out, $err) = ('', '');
	IPC::Run::run(
		[
			'redis-cli',
			($tls ? ('--tls', '--cacert', $tls->{ca}, '--cert', $tls->{cert},
				'--key', $tls->{key}) : ()),
			'--cluster', 'create',
			(map { '127.0.0.1:' . ($tls ? $_->{tls_port} : $_->port) } @nodes),
			'--cluster-replicas', $replicas, '--cluster-yes'
		],
		'<', \undef, '>', \$out, '2>', \$err,
		IPC::Run::timeout(60))
	  or croak "redis-cli --cluster create failed:\n$out$err";

	my $n = scalar @nodes;
	poll_until(
		30,
		sub {
			foreach my $node (@nodes)
			{
				return 0
				  unless $node->call('CLUSTER', 'INFO') =~
				  /cluster_state:ok.*cluster_known_nodes:$n\b/s;
			}
			return 1;
		},
		0.1) or croak "the Redis Cluster did not become ready within 30 s:\n$out";

	# primaries first, in the order of the slots they hold
		# CLUSTER SLOTS gives plain ports to plain clients, TLS ports over TLS
	my %by_port = map { ($_->port => $_, ($tls ? ($_->{tls_port} => $_) : ())) } @nodes;
	my @primaries =
	  map  { $by_port{ $_->[2][1] } }
	  sort { $a->[0] <=> $b->[0] } @{ $nodes[0]->call('CLUSTER', 'SLOTS') };
	my %is_primary = map { $_->port => 1 } @primaries;
	my @replicas = grep { !$is_primary{ $_->port } } @nodes;

	# replicas in sync, and listed by CLUSTER SLOTS: a failover needs both
	poll_until(
		30,
		sub {
			foreach my $r (@replicas)
			{
				return 0
				  unless $r->call('INFO', 'replication') =~
				  /master_link_status:up/;
			}
			my $listed = 0;
			$listed += @$_ - 3 foreach @{ $nodes[0]->call('CLUSTER', 'SLOTS') };
			return $listed >= @replicas;
		},
		0.1) or croak "the replicas of the Redis Cluster did not sync within 30 s";
	return (@primaries, @replicas);
}

=pod

=over

=item start_sentinel_set(%opts)

Starts a Redis primary, C<replicas> (default 2) replicas of it and
C<sentinels> (default 3) sentinels (C<redis-server E<lt>confE<gt> --sentinel>)
monitoring it as C<mymaster> with quorum 2, all C<start_redis> servers on
127.0.0.1 (stopped by pid at the end like any other). C<down_after> (ms,
default 1000) and C<failover_timeout> (ms, default 4000) bound how fast a
failover goes. C<password> makes the primary and replicas require it (and
the URL carry it), C<sentinel_password> the sentinels require another one.
C<< tls => { ca => $file, cert => $file, key => $file } >> gives every server
a TLS port too (C<< $server->{tls_port} >>), used for replication, by the
sentinels and in the URL (C<rediss-sentinel://>); plain ports stay open for
the test's own checks. Waits (at most 30 s) until the replicas are in sync and every
sentinel knows the replicas and the other sentinels. Returns a hash:
C<primary>, C<replicas> (array), C<sentinels> (array), C<nodes> (primary and
replicas), C<name> and C<url> (C<redis-sentinel://...>, database 0).

=item sentinel_primary($set)

The server of C<< $set->{nodes} >> that the first answering sentinel names as
the primary (or undef).

=back

=cut

sub start_sentinel_set
{
	my (%opts) = @_;
	my $nrep = $opts{replicas} // 2;
	my $nsen = $opts{sentinels} // 3;
	my $down = $opts{down_after} // 1000;
	my $ftimeout = $opts{failover_timeout} // 4000;
	my $name = 'mymaster';
	my $pw = $opts{password};
	my $spw = $opts{sentinel_password};
	my $tls = $opts{tls};
	my @tls_conf = $tls
	  ? ('tls-cert-file', $tls->{cert}, 'tls-key-file', $tls->{key},
		'tls-ca-cert-file', $tls->{ca}, 'tls-auth-clients', 'optional',
		'tls-replication', 'yes')
	  : ();
	my @repl_args = ('--repl-diskless-sync', 'yes',
		'--repl-diskless-sync-delay', '0',
		(defined $pw ? ('--masterauth', $pw) : ()));
	# a TLS port per server (the plain one stays, for the test's own checks)
	my $data_node = sub {
		my ($name, @more) = @_;
		my $tls_port = $tls ? PostgreSQL::Test::Cluster::get_free_port() : undef;
		my $r = start_redis(name => $name, requirepass => $pw,
			extra_args => [ @repl_args, ($tls ? ('--tls-port', $tls_port,
				map { $_ =~ /^tls-/ ? "--$_" : $_ } @tls_conf) : ()), @more ]);
		$r->{tls_port} = $tls_port;
		return $r;
	};
	my $primary = $data_node->('sprimary');
	my $pport = $tls ? $primary->{tls_port} : $primary->port;
	my @replicas = map {
		$data_node->("sreplica$_", '--replicaof', '127.0.0.1', $pport)
	} 1 .. $nrep;
	poll_until(
		30,
		sub {
			foreach my $r (@replicas)
			{
				return 0 unless $r->call('INFO', 'replication') =~ /master_link_status:up/;
			}
			return 1;
		},
		0.1) or croak "the replicas did not sync within 30 s";

	my @sentinels;
	foreach my $i (1 .. $nsen)
	{
		my $dir = PostgreSQL::Test::Utils::tempdir("sentinel$i");
		my $conf = "$dir/sentinel.conf";
		my $tls_port = $tls ? PostgreSQL::Test::Cluster::get_free_port() : undef;
		PostgreSQL::Test::Utils::append_to_file($conf, join("\n",
			($tls ? ("tls-port $tls_port", map { "$tls_conf[2*$_] $tls_conf[2*$_+1]" } 0 .. $#tls_conf / 2) : ()),
			"sentinel monitor $name 127.0.0.1 $pport " . ($nsen < 2 ? 1 : 2),
			"sentinel down-after-milliseconds $name $down",
			"sentinel failover-timeout $name $ftimeout",
			"sentinel parallel-syncs $name $nrep",
			(defined $pw ? ("sentinel auth-pass $name \"$pw\"") : ()),
			(defined $spw ? ("sentinel sentinel-pass \"$spw\"") : ()), ''));
		push @sentinels, start_redis(name => "sentinel$i", config => $conf,
			requirepass => $spw, extra_args => ['--sentinel']);
		$sentinels[-1]{tls_port} = $tls_port;
	}
	poll_until(
		30,
		sub {
			foreach my $s (@sentinels)
			{
				my %m = @{ $s->call('SENTINEL', 'MASTER', $name) };
				return 0 unless $m{'num-slaves'} == $nrep
				  && $m{'num-other-sentinels'} == $nsen - 1;
			}
			return 1;
		},
		0.1) or croak "the sentinels did not find each other within 30 s";
	return {
		primary   => $primary,
		replicas  => \@replicas,
		sentinels => \@sentinels,
		nodes     => [ $primary, @replicas ],
		name      => $name,
		url       => ($tls ? 'rediss-sentinel://' : 'redis-sentinel://')
		  . (defined $pw ? ":$pw\@" : '')
		  . join(',', map { '127.0.0.1:' . ($tls ? $_->{tls_port} : $_->port) } @sentinels)
		  . "/$name/0",
	};
}

sub sentinel_primary
{
	my ($set) = @_;
	foreach my $s (@{ $set->{sentinels} })
	{
		next unless $s->pid;
		my $addr = eval { $s->call('SENTINEL', 'GET-MASTER-ADDR-BY-NAME', $set->{name}) };
		next unless ref $addr eq 'ARRAY';
		my ($node) = grep { $_->port == $addr->[1] || ($_->{tls_port} // 0) == $addr->[1] }
		  @{ $set->{nodes} };
		return $node;
	}
	return undef;
}

=pod

=over

=item make_test_certs($dir, san => 'DNS:localhost')

Makes, with openssl, in C<$dir>: a CA (C<ca.crt>, C<ca.key>), a server
certificate signed by it for C<CN=localhost> with the given subjectAltName
(C<server.crt>, C<server.key>), a client certificate (C<client.crt>,
C<client.key>), and another CA that signed nothing of ours (C<other.crt>).

=back

=cut

sub make_test_certs
{
	my ($dir, %opts) = @_;
	my $san = $opts{san} // 'DNS:localhost';
	my $openssl = sub {
		my ($out, $err);
		IPC::Run::run([ 'openssl', @_ ], '>', \$out, '2>', \$err)
		  or croak "openssl @_ failed: $err";
	};
	foreach my $ca ([ 'ca', 'pg2redis test CA' ], [ 'other', 'another CA' ])
	{
		$openssl->('req', '-x509', '-new', '-nodes', '-newkey', 'rsa:2048',
			'-days', '2', '-keyout', "$dir/$ca->[0].key", '-out',
			"$dir/$ca->[0].crt", '-subj', "/CN=$ca->[1]");
	}
	PostgreSQL::Test::Utils::append_to_file("$dir/server.ext", "subjectAltName=$san\n");
	foreach my $who ([ 'server', 'localhost', "$dir/server.ext" ], [ 'client', 'pg2redis', undef ])
	{
		my ($name, $cn, $ext) = @$who;
		$openssl->('req', '-new', '-nodes', '-newkey', 'rsa:2048', '-keyout',
			"$dir/$name.key", '-out', "$dir/$name.csr", '-subj', "/CN=$cn");
		$openssl->('x509', '-req', '-in', "$dir/$name.csr", '-CA', "$dir/ca.crt",
			'-CAkey', "$dir/ca.key", '-CAcreateserial', '-days', '2',
			'-out', "$dir/$name.crt", ($ext ? ('-extfile', $ext) : ()));
	}
	chmod 0600, "$dir/client.key", "$dir/server.key";
	return;
}

=pod

=head2 PostgreSQL

=over

=item new_node($name, %opts)

A C<PostgreSQL::Test::Cluster> initialised for logical decoding, with
pg2redis preloaded, C<pg2redis.database = 'postgres'> and
C<pg2redis.redis_url> set, started, and with C<CREATE EXTENSION pg2redis>
done in database postgres. Options:

  redis            => $redis  the Redis to stream to (its url())
  redis_url        => '...'   or a URL (e.g. one where nothing listens)
  flush_interval   => '5ms'   sets pg2redis.flush_interval
  conf             => [...]   more postgresql.conf lines (or one string)
  start            => 0       only init and configure
  create_extension => 0       start, but do not create the extension
  wait_streaming   => 0/1     wait until pg2redis_status().state is
                              'streaming' (default: 1 with redis, 0 with
                              redis_url); a failed wait is a failed test

=back

=cut

sub new_node
{
	my ($name, %opts) = @_;

	my $url = $opts{redis_url};
	$url = $opts{redis}->url if !defined $url && $opts{redis};
	croak "new_node: give redis or redis_url" unless defined $url;

	my $node = PostgreSQL::Test::Cluster->new($name);
	$node->init(allows_streaming => 'logical');

	my @conf = (
		"shared_preload_libraries = 'pg2redis'",
		"wal_level = logical",
		"max_replication_slots = 10",
		"pg2redis.database = 'postgres'",
		"pg2redis.redis_url = '$url'");
	push @conf, "pg2redis.flush_interval = '$opts{flush_interval}'"
	  if defined $opts{flush_interval};
	if (ref $opts{conf})
	{
		push @conf, @{ $opts{conf} };
	}
	elsif (defined $opts{conf})
	{
		push @conf, $opts{conf};
	}
	$node->append_conf('postgresql.conf', join("\n", @conf) . "\n");

	return $node if defined $opts{start} && !$opts{start};
	$node->start;

	return $node
	  if defined $opts{create_extension} && !$opts{create_extension};
	$node->safe_psql('postgres', 'CREATE EXTENSION pg2redis');

	my $wait = $opts{wait_streaming};
	$wait = defined $opts{redis} && !defined $opts{redis_url}
	  unless defined $wait;
	wait_for_status($node, 'state', 'streaming', 60,
		"node $name: worker streaming after CREATE EXTENSION")
	  if $wait;
	return $node;
}

=pod

=over

=item paused_load_conf(stall => '10min')

The postgresql.conf lines of the initial-load tests: the worker paused until
the test turns it on, short Redis timeouts and backoff, many small blocks
(max_transaction_commands 100, snapshot_batch_size 1000) so that the load
takes a while and waits for Redis often, and the given
pg2redis.load_stall_timeout.

=back

=cut

sub paused_load_conf
{
	my (%opts) = @_;
	my $stall = $opts{stall} // '10min';

	return (
		'pg2redis.enabled = off',
		'pg2redis.redis_timeout = 2s',
		'pg2redis.retry_max_backoff = 1s',
		'pg2redis.max_transaction_commands = 100',
		'pg2redis.snapshot_batch_size = 1000',
		"pg2redis.load_stall_timeout = '$stall'");
}

=pod

=over

=item wait_for_load_start($node, $timeout)

Waits until the worker of $node is loading (pg2redis_status().state is
'snapshotting'), for at most $timeout seconds; returns whether it is.  The
state is polled every 5 ms by one statement in the server, not by a new
psql per poll, so that a short load is not missed between two polls.

=back

=cut

sub wait_for_load_start
{
	my ($node, $timeout) = @_;
	my $polls = int($timeout * 200);

	return $node->safe_psql('postgres', qq{
		DO \$\$
		BEGIN
			FOR i IN 1 .. $polls LOOP
				EXIT WHEN (SELECT state FROM pg2redis_status()) = 'snapshotting';
				PERFORM pg_sleep(0.005);
			END LOOP;
		END \$\$;
		SELECT state = 'snapshotting' FROM pg2redis_status();
	}) eq 't';
}

=pod

=over

=item snapshot_reaches($node, $id, $state, $timeout, $interval = 0.1)

Polls the state of snapshot request C<$id> (C<pg2redis_snapshots>) until it
is C<$state>; returns whether it got there within C<$timeout> seconds.

=item wait_for_redis($node, $timeout_seconds = 60, $test_name)

A test: C<SELECT pg2redis_wait('<timeout>s')> returns true, i.e. everything
committed before the call is in Redis. On failure, prints
C<pg2redis_status()>. Returns the test's result.

=back

=cut

sub snapshot_reaches
{
	my ($node, $id, $state, $timeout, $interval) = @_;
	return poll_until(
		$timeout,
		sub {
			$node->safe_psql('postgres',
				"SELECT state FROM pg2redis_snapshots WHERE id = $id") eq $state;
		},
		$interval // 0.1);
}

sub wait_for_redis
{
	my ($node, $timeout, $name) = @_;
	$timeout = 60 unless defined $timeout;
	$name = "pg2redis_wait('${timeout}s') on " . $node->name
	  unless defined $name;
	local $Test::Builder::Level = $Test::Builder::Level + 1;

	my ($stdout, $stderr, $timed_out) = ('', '', 0);
	my $ret = $node->psql(
		'postgres', "SELECT pg2redis_wait('${timeout}s')",
		stdout    => \$stdout,
		stderr    => \$stderr,
		timeout   => $timeout + 30,
		timed_out => \$timed_out);
	my $ok = !$timed_out && defined $ret && $ret == 0 && $stdout eq 't';
	ok($ok, $name)
	  or diag(
		$timed_out
		? "pg2redis_wait() did not return within ${timeout}s + 30s\n"
		: "pg2redis_wait() returned '$stdout' (psql exit "
		  . ($ret // 'undef')
		  . ", stderr: $stderr)\n",
		"pg2redis_status():\n",
		status_text($node));
	return $ok;
}

=pod

=over

=item poll_until($timeout_seconds, $sub, $interval_seconds = 0.1)

Calls C<$sub> until it returns true (dying counts as false), at most
C<$timeout_seconds>; returns whether it did.

=item poll_status($node, $column, $value, $timeout = 30)

Polls C<SELECT $column FROM pg2redis_status()> (a column or an expression
over the columns) until it equals C<$value>
(as psql prints it: C<t>/C<f> for booleans, '' for NULL) or matches it when
C<$value> is a C<qr//>. Errors (e.g. the server restarting) count as not yet.
Returns true or false, and on timeout prints the status.

=item wait_for_status($node, $column, $value, $timeout = 30, $test_name)

The same as a test.

=back

=cut

sub poll_until
{
	my ($timeout, $sub, $interval) = @_;
	$interval = 0.1 unless defined $interval;
	my $deadline = Time::HiRes::time() + $timeout;
	while (1)
	{
		my $ok = eval { $sub->() };
		return 1 if $ok;
		return 0 if Time::HiRes::time() >= $deadline;
		usleep(int($interval * 1_000_000));
	}
}

sub _status_value
{
	my ($node, $column) = @_;
	my ($stdout, $stderr) = ('', '');
	my $ret = $node->psql(
		'postgres', "SELECT $column FROM pg2redis_status()",
		stdout  => \$stdout,
		stderr  => \$stderr,
		timeout => 30);
	return undef unless defined $ret && $ret == 0;
	return $stdout;
}

sub poll_status
{
	my ($node, $column, $value, $timeout) = @_;
	$timeout = 30 unless defined $timeout;

	my $last;
	my $ok = poll_until(
		$timeout,
		sub {
			$last = _status_value($node, $column);
			return 0 unless defined $last;
			return ref $value eq 'Regexp' ? $last =~ $value : $last eq $value;
		});
	diag("pg2redis_status().$column was "
		  . (defined $last ? "'$last'" : '(query failed)')
		  . ", not '$value', after ${timeout}s; status:\n"
		  . status_text($node))
	  unless $ok;
	return $ok;
}

sub wait_for_status
{
	my ($node, $column, $value, $timeout, $name) = @_;
	$timeout = 30 unless defined $timeout;
	$name = "pg2redis_status().$column reaches '$value'"
	  unless defined $name;
	local $Test::Builder::Level = $Test::Builder::Level + 1;
	return ok(poll_status($node, $column, $value, $timeout), $name);
}

=pod

=over

=item status_row($node)

C<pg2redis_status()> as a hash reference, values as text: booleans C<t>/C<f>,
NULL as undef.

=item status_text($node)

C<pg2redis_status()> in psql's expanded form, for diagnostics (never dies).

=item worker_pid($node)

C<pg2redis_status().worker_pid> (undef when null).

=back

=cut

sub status_row
{
	my ($node) = @_;
	my $json = $node->safe_psql('postgres',
		'SELECT row_to_json(s)::text FROM pg2redis_status() s');
	my $row = JSON::PP->new->utf8->decode($json);
	foreach my $k (keys %$row)
	{
		my $v = $row->{$k};
		if (JSON::PP::is_bool($v))
		{
			$row->{$k} = $v ? 't' : 'f';
		}
		elsif (defined $v)
		{
			$row->{$k} = "$v";
			utf8::encode($row->{$k});
		}
	}
	return $row;
}

sub status_text
{
	my ($node) = @_;
	my $out = eval {
		my ($stdout, $stderr) = ('', '');
		$node->psql(
			'postgres',
			'SELECT * FROM pg2redis_status()',
			stdout       => \$stdout,
			stderr       => \$stderr,
			extra_params => ['-x'],
			timeout      => 30);
		"$stdout$stderr";
	};
	return defined $out ? "$out\n" : "(could not query: $@)\n";
}

sub worker_pid
{
	my ($node) = @_;
	my $pid = $node->safe_psql('postgres',
		'SELECT worker_pid FROM pg2redis_status()');
	return $pid eq '' ? undef : $pid;
}

=pod

=over

=item process_memory($pid)

The C<VmHWM> (peak resident size), C<VmRSS>, C<RssAnon> and C<RssShmem>
lines of C</proc/$pid/status>, in kB, as a hash (empty when the process is
gone).

=item reset_peak_memory($pid)

Resets the process's C<VmHWM> to its current resident size (writes 5 to
C</proc/$pid/clear_refs>, which needs to own the process); returns whether
the kernel allowed it.

=back

=cut

sub process_memory
{
	my ($pid) = @_;
	my %m;
	open(my $fh, '<', "/proc/$pid/status") or return %m;
	while (<$fh>)
	{
		$m{$1} = $2 if /^(VmRSS|VmHWM|RssAnon|RssShmem):\s+(\d+) kB/;
	}
	close $fh;
	return %m;
}

sub reset_peak_memory
{
	my ($pid) = @_;
	open(my $fh, '>', "/proc/$pid/clear_refs") or return 0;
	my $ok = print $fh "5\n";
	return (close($fh) && $ok) ? 1 : 0;
}

=pod

=head2 Reading Redis

=over

=item redis_hash($redis, $key)

HGETALL as a hash reference (empty when the key does not exist).

=item redis_smembers($redis, $key)

SMEMBERS, sorted (numerically when all members are integers).

=item redis_keys($redis, $pattern)

SCAN MATCH $pattern, sorted.

=back

=cut

sub redis_hash
{
	my ($redis, $key) = @_;
	my $pairs = $redis->call('HGETALL', $key);
	return {@$pairs};
}

sub _sorted
{
	my @v = @_;
	@v = (grep { !/^-?\d+$/ } @v) ? sort @v : sort { $a <=> $b } @v;
	return @v;
}

sub redis_smembers
{
	my ($redis, $key) = @_;
	return _sorted(@{ $redis->call('SMEMBERS', $key) });
}

sub redis_keys
{
	my ($redis, $pattern) = @_;
	return $redis->keys_matching($pattern) if $redis->can('keys_matching');
	my ($cursor, %keys) = (0);
	do
	{
		my $r = $redis->call('SCAN', $cursor, 'MATCH', $pattern, 'COUNT',
			10000);
		$cursor = $r->[0];
		$keys{$_} = 1 foreach @{ $r->[1] };
	} while ($cursor ne '0');
	my @keys = sort keys %keys;
	return @keys;
}

=pod

=head2 Comparing a table with Redis

=over

=item compare_table_to_redis($node, $redis, $table, $prefix, %opts)

For a table mapped by C<HSET <prefix>:{id} {pairs:*}>: reads every row
(each column's text form; NULL as '', as pg2redis renders it) and every
C<< <prefix>:* >> key in Redis, and returns C<($ok, $diff)>: whether each row
has exactly its hash and no other key matches, and a description of the
first differences. Options: C<key> (the column in the key, default C<id>),
C<where> (an SQL condition restricting the rows; keys of rows outside it then
count as extra unless C<ignore_extra> is set).

Use tables whose columns are integers and text: other types' text forms may
differ between the test's session and pg2redis (DateStyle, TimeZone, ...).

=item check_table_in_redis($node, $redis, $table, $prefix, $test_name, %opts)

The same as a test, with the differences as diagnostics.

=back

=cut

sub compare_table_to_redis
{
	my ($node, $redis, $table, $prefix, %opts) = @_;
	my $keycol = $opts{key} // 'id';
	my $where = defined $opts{where} ? "WHERE $opts{where}" : '';

	# One JSON object of text values per row: binary-safe, and NULL stays
	# distinguishable until we decide how it renders.
	my $out = $node->safe_psql(
		'postgres', qq{
		SELECT (SELECT json_object_agg(e.key, e.value)
		          FROM json_each_text(row_to_json(t)) e)::text
		  FROM $table t $where});
	my $json = JSON::PP->new->utf8;
	my %expected;
	foreach my $line (split /\n/, $out)
	{
		my $row = $json->decode($line);
		my %h;
		foreach my $col (keys %$row)
		{
			my ($c, $v) = ($col, $row->{$col} // '');
			utf8::encode($c);
			utf8::encode($v);
			$h{$c} = $v;
		}
		croak "compare_table_to_redis: $table has no column $keycol"
		  unless exists $h{$keycol};
		$expected{"$prefix:$h{$keycol}"} = \%h;
	}

	(my $glob = $prefix) =~ s/([*?\[\]\\])/\\$1/g;
	my @keys = redis_keys($redis, "$glob:*");
	my @replies = $redis->pipeline(map { [ 'HGETALL', $_ ] } @keys);
	my %actual;
	@actual{@keys} = @replies;

	my @diffs;
	foreach my $key (sort keys %expected)
	{
		my $want = $expected{$key};
		my $got = $actual{$key};
		if (!defined $got)
		{
			push @diffs, "missing in Redis: $key " . _show_hash($want);
			next;
		}
		if (ref $got eq 'HASH')
		{
			push @diffs, "$key: Redis error $got->{error}";
			next;
		}
		my %got = @$got;
		push @diffs,
		  "$key differs:\n    postgres: "
		  . _show_hash($want)
		  . "\n    redis:    "
		  . _show_hash(\%got)
		  unless _same_hash($want, \%got);
	}
	unless ($opts{ignore_extra})
	{
		foreach my $key (grep { !exists $expected{$_} } @keys)
		{
			my $got = $actual{$key};
			push @diffs, "extra in Redis: $key "
			  . (ref $got eq 'ARRAY' ? _show_hash({@$got}) : '');
		}
	}

	my $n = @diffs;
	splice(@diffs, 20, $n - 20, "... and " . ($n - 20) . " more") if $n > 20;
	my $summary = sprintf("%s: %d rows, %d keys %s:*, %d differences",
		$table, scalar(keys %expected), scalar(@keys), $prefix, $n);
	return ($n == 0, join("\n", $summary, @diffs) . "\n");
}

sub _same_hash
{
	my ($a, $b) = @_;
	return 0 unless keys %$a == keys %$b;
	foreach my $k (keys %$a)
	{
		return 0 unless exists $b->{$k} && $a->{$k} eq $b->{$k};
	}
	return 1;
}

sub _show_hash
{
	my ($h) = @_;
	return '{'
	  . join(', ', map { "$_ => " . _quote($h->{$_}) } sort keys %$h) . '}';
}

sub _quote
{
	my ($v) = @_;
	return 'undef' unless defined $v;
	$v =~ s/([\\'])/\\$1/g;
	$v =~ s/\n/\\n/g;
	$v =~ s/\t/\\t/g;
	return "'$v'";
}

sub check_table_in_redis
{
	my ($node, $redis, $table, $prefix, $name, %opts) = @_;
	$name = "$table equals $prefix:* in Redis" unless defined $name;
	local $Test::Builder::Level = $Test::Builder::Level + 1;
	my ($ok, $diff) = compare_table_to_redis($node, $redis, $table, $prefix,
		%opts);
	ok($ok, $name) or diag($diff);
	return $ok;
}

=pod

=head2 The items workload

Shared by the fault and crash tests.

=over

=item create_items_schema($node, %opts)

Creates C<items(id int primary key, name text, qty int)> with REPLICA
IDENTITY FULL and C<log(id int primary key)> (one row per item inserted, in
the same transaction), and the rules:

  insert, update  HSET item:{id} {pairs:*}
  delete          DEL item:{id}
  insert, update, delete  INCRBY qty:total {diff:qty}
  insert          XADD events * id {id}         (with xadd => 1)

=item items_workload_sql(%opts)

SQL for C<txns> transactions (default 30) each inserting C<rows> (default 50)
items with ids from C<base> on (and their C<log> rows), adding 1 to the qty
of C<updates> (10) random items and deleting C<deletes> (5) random items,
then sleeping C<sleep> seconds (0.05) outside the transaction.

=item check_items_in_redis($node, $redis, $label, %opts)

Tests: items equals item:* in Redis, qty:total equals C<sum(qty)>, and with
C<< xadd => 1 >> C<XLEN events> equals C<count(*) FROM log>.

=back

=cut

sub create_items_schema
{
	my ($node, %opts) = @_;
	my $sql = q{
		CREATE TABLE items (id int PRIMARY KEY, name text, qty int);
		ALTER TABLE items REPLICA IDENTITY FULL;
		CREATE TABLE log (id int PRIMARY KEY);
		SELECT pg2redis_add_rule('items', op, ARRAY['HSET', 'item:{id}', '{pairs:*}'])
		  FROM unnest(ARRAY['insert', 'update']) op;
		SELECT pg2redis_add_rule('items', 'delete', 'DEL item:{id}');
		SELECT pg2redis_add_rule('items', op, 'INCRBY qty:total {diff:qty}')
		  FROM unnest(ARRAY['insert', 'update', 'delete']) op;
	};
	$sql .= q{SELECT pg2redis_add_rule('items', 'insert', 'XADD events * id {id}');}
	  if $opts{xadd};
	$node->safe_psql('postgres', $sql);
	return;
}

sub items_workload_sql
{
	my (%o) = @_;
	my $base    = $o{base}    // 1;
	my $txns    = $o{txns}    // 30;
	my $rows    = $o{rows}    // 50;
	my $updates = $o{updates} // 10;
	my $deletes = $o{deletes} // 5;
	my $sleep   = $o{sleep}   // 0.05;

	my $sql = '';
	for my $i (0 .. $txns - 1)
	{
		my $first = $base + $i * $rows;
		my $last = $first + $rows - 1;
		$sql .= qq{BEGIN;
INSERT INTO items (id, name, qty)
  SELECT g, 'item ' || g, g % 7 FROM generate_series($first, $last) g;
INSERT INTO log (id) SELECT generate_series($first, $last);
UPDATE items SET qty = qty + 1
 WHERE id IN (SELECT id FROM items ORDER BY random() LIMIT $updates);
DELETE FROM items
 WHERE id IN (SELECT id FROM items ORDER BY random() LIMIT $deletes);
COMMIT;
};
		$sql .= "SELECT pg_sleep($sleep);\n" if $sleep > 0;
	}
	return $sql;
}

sub check_items_in_redis
{
	my ($node, $redis, $label, %opts) = @_;
	local $Test::Builder::Level = $Test::Builder::Level + 1;

	check_table_in_redis($node, $redis, 'items', 'item',
		"$label: items equals item:* in Redis");
	my $sum = $node->safe_psql('postgres',
		'SELECT coalesce(sum(qty), 0) FROM items');
	is($redis->call('GET', 'qty:total') // '(nil)',
		$sum, "$label: qty:total equals sum(qty), applied exactly once");
	if ($opts{xadd})
	{
		my $count = $node->safe_psql('postgres', 'SELECT count(*) FROM log');
		is($redis->call('XLEN', 'events'),
			$count,
			"$label: XLEN events equals the committed inserts, each XADD once");
	}
	return;
}

=pod

=head2 Background psql

=over

=item start_psql_script($node, $sql, %opts)

Runs C<$sql> in psql (C<ON_ERROR_STOP=1>) in the background; returns a handle.
C<timeout> (default 300 s) bounds it.

=item finish_psql_script($handle)

Waits for it (within its timeout; then it is killed) and returns
C<($exit_status, $stdout, $stderr)>; the exit status is undef after a
timeout.

=item run_psql_script($node, $sql, %opts)

Both: runs C<$sql> in the foreground (with a bounded time, unlike safe_psql)
and returns the same triple.

=back

=cut

my @scripts;
my $script_seq = 0;

sub start_psql_script
{
	my ($node, $sql, %opts) = @_;
	my $timeout = $opts{timeout} // 300;
	my $file = sprintf('%s/%s_script_%d.sql',
		$PostgreSQL::Test::Utils::tmp_check,
		$test_name, ++$script_seq);
	PostgreSQL::Test::Utils::append_to_file($file, $sql);

	my $self = { out => '', err => '', name => $node->name, file => $file };
	$self->{timer} =
	  IPC::Run::timeout($timeout, exception => 'psql script timed out');
	$self->{h} = IPC::Run::start(
		[
			$node->installed_command('psql'), '-X', '-q', '-v',
			'ON_ERROR_STOP=1', '-d', $node->connstr('postgres'), '-f', $file
		],
		'<', \undef, '>', \$self->{out}, '2>', \$self->{err},
		$self->{timer});
	push @scripts, $self;
	return $self;
}

sub finish_psql_script
{
	my ($self) = @_;
	my $rc;
	if (eval { $self->{h}->finish; 1 })
	{
		$rc = $self->{h}->full_result(0) >> 8;
		$rc = 128 + ($self->{h}->full_result(0) & 127)
		  if $self->{h}->full_result(0) & 127;
	}
	else
	{
		diag("psql script $self->{file} on $self->{name}: $@");
		eval { $self->{h}->kill_kill };
	}
	$self->{done} = 1;
	return ($rc, $self->{out}, $self->{err});
}

sub run_psql_script
{
	my ($node, $sql, %opts) = @_;
	return finish_psql_script(start_psql_script($node, $sql, %opts));
}

=pod

=head2 Server log

=over

=item log_lines($node, $regexp, $offset = 0)

The lines of the node's log (from byte C<$offset>) that match C<$regexp>, so
that a failed check shows only them, not the whole log.

=back

=cut

sub log_lines
{
	my ($node, $re, $offset) = @_;
	my $log = slurp_file($node->logfile, $offset // 0);
	return grep { /$re/ } split /\n/, $log;
}

# Tests may be interrupted: make SIGINT/SIGTERM/SIGHUP run the END blocks
# (ours and PostgreSQL::Test::Cluster's), which stop what was started.
foreach my $sig (qw(INT TERM HUP))
{
	$SIG{$sig} = sub { diag("caught SIG$sig, cleaning up"); exit 1; }
	  unless defined $SIG{$sig} && ref $SIG{$sig};
}

my $owner_pid = $$;

END
{
	my $exit_code = $?;
	if ($$ == $owner_pid)
	{
		foreach my $s (@scripts)
		{
			eval { $s->{h}->kill_kill } unless $s->{done};
		}
		Pg2RedisTest::Redis::stop_all();
	}
	$? = $exit_code;
}

=pod

=head1 Pg2RedisTest::Redis

=over

=item $redis->port, $redis->pid, $redis->logfile

=item $redis->url

C<redis://127.0.0.1:PORT/0>, with the password when there is one.

=item $redis->call(@args)

Runs one command over a fresh connection (RESP, binary-safe, 30 s deadline)
and returns the reply: a string, an integer (as a string), undef for nil, an
array reference for arrays. An error reply dies.

=item $redis->pipeline([@cmd1], [@cmd2], ...)

Sends the commands on one connection, returns their replies; an error reply
is C<< {error => 'message'} >> instead of dying.

=item $redis->cli(@args)

Runs C<redis-cli --raw @args> against this server and returns its output
trimmed (dies after 30 s).

=item $redis->stop, $redis->kill9, $redis->pause, $redis->resume

SIGTERM and wait (then SIGKILL after 10 s); SIGKILL and wait; SIGSTOP;
SIGCONT.

=item $redis->start

Starts it again (same port, directory and options) after stop or kill9.

=item $redis->restart(kill9 => 0)

stop (or kill9) then start on the same port. Without appendonly the data is
lost.

=back

=cut

package Pg2RedisTest::Redis;

use strict;
use warnings;

use Carp;
use IO::Select;
use IO::Socket::INET;
use IPC::Run;
use POSIX ();
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Time::HiRes qw(usleep);

my @all_redis;
my $seq = 0;

sub new
{
	my ($class, %opts) = @_;
	my $name = $opts{name} // 'redis' . ++$seq;
	my $self = bless {
		name        => $name,
		port        => $opts{port} // PostgreSQL::Test::Cluster::get_free_port(),
		password    => $opts{requirepass},
		appendonly  => $opts{appendonly} ? 1 : 0,
		appendfsync => $opts{appendfsync} // 'always',
		extra_args  => $opts{extra_args} // [],
		config      => $opts{config},
		dir         => PostgreSQL::Test::Utils::tempdir("redis_$name"),
		logfile     => "$PostgreSQL::Test::Utils::log_path/${test_name}_redis_$name.log",
		pid         => undef,
	}, $class;
	push @all_redis, $self;
	return $self;
}

sub port    { return $_[0]->{port}; }
sub pid     { return $_[0]->{pid}; }
sub logfile { return $_[0]->{logfile}; }
sub name    { return $_[0]->{name}; }

sub url
{
	my ($self) = @_;
	my $auth = defined $self->{password} ? ":$self->{password}@" : '';
	return "redis://${auth}127.0.0.1:$self->{port}/0";
}

# prctl(2) numbers, to have the kernel kill Redis when the test dies.
my %SYS_prctl = (x86_64 => 157, aarch64 => 167);

sub start
{
	my ($self) = @_;
	croak "redis $self->{name} is already running (pid $self->{pid})"
	  if $self->{pid};

	my @cmd = (
		'redis-server', (defined $self->{config} ? ($self->{config}) : ()),
		'--bind', '127.0.0.1', '--port', $self->{port},
		'--save', '', '--appendonly', $self->{appendonly} ? 'yes' : 'no',
		'--daemonize', 'no', '--dir', $self->{dir},
		'--logfile', $self->{logfile});
	push @cmd, '--appendfsync', $self->{appendfsync} if $self->{appendonly};
	push @cmd, '--requirepass', $self->{password}
	  if defined $self->{password};
	push @cmd, @{ $self->{extra_args} };

	print "### Starting redis \"$self->{name}\" on port $self->{port}\n";
	my $parent = $$;
	my $pid = fork();
	croak "fork failed: $!" unless defined $pid;
	if ($pid == 0)
	{
		my $nr = $SYS_prctl{ (POSIX::uname())[4] };
		syscall($nr, 1, 9) if defined $nr;    # PR_SET_PDEATHSIG, SIGKILL
		POSIX::_exit(1) if getppid() != $parent;
		open(STDIN, '<', '/dev/null');
		open(STDOUT, '>>', $self->{logfile});
		open(STDERR, '>&', \*STDOUT);
		{
			no warnings 'exec';
			exec { $cmd[0] } @cmd;
		}
		print STDERR "could not exec redis-server: $!\n";
		POSIX::_exit(127);
	}
	$self->{pid} = $pid;
	$self->{paused} = 0;

	my $ready = Pg2RedisTest::poll_until(
		10,
		sub {
			return 1 if !$self->_alive;    # no use waiting
			# Make sure it is ours answering, not another server that
			# holds the port while ours fails to bind.
			my $info = $self->call('INFO', 'server');
			return 0 unless $info =~ /^process_id:(\d+)/m && $1 == $self->{pid};
			return $self->call('PING') eq 'PONG';
		},
		0.05);
	my $alive = $self->_alive;
	unless ($ready && $alive)
	{
		$self->kill9 if $alive;
		$self->{pid} = undef;
		croak "redis $self->{name} on port $self->{port} "
		  . ($alive ? "did not answer PING within 10 s" : "exited")
		  . "; log:\n"
		  . (-f $self->{logfile} ? slurp_file($self->{logfile}) : '');
	}
	return $self;
}

# Whether our child is still running (reaps it if it has exited).
sub _alive
{
	my ($self) = @_;
	return 0 unless $self->{pid};
	my $r = waitpid($self->{pid}, POSIX::WNOHANG());
	return 1 if $r == 0;
	$self->{pid} = undef;
	return 0;
}

sub _wait_exit
{
	my ($self, $timeout) = @_;
	my $exited = Pg2RedisTest::poll_until($timeout, sub { !$self->_alive },
		0.02);
	return $exited;
}

sub stop
{
	my ($self) = @_;
	return unless $self->{pid};
	print "### Stopping redis \"$self->{name}\" (pid $self->{pid})\n";
	kill 'TERM', $self->{pid};
	kill 'CONT', $self->{pid};    # a paused server cannot act on SIGTERM
	unless ($self->_wait_exit(10))
	{
		print "### redis \"$self->{name}\" ignored SIGTERM, killing it\n";
		$self->kill9;
	}
	$self->{pid} = undef;
	return;
}

sub kill9
{
	my ($self) = @_;
	return unless $self->{pid};
	print "### Killing redis \"$self->{name}\" (pid $self->{pid})\n";
	kill 'KILL', $self->{pid};
	waitpid($self->{pid}, 0);
	$self->{pid} = undef;
	return;
}

sub pause
{
	my ($self) = @_;
	croak "redis $self->{name} is not running" unless $self->{pid};
	print "### Pausing redis \"$self->{name}\" (SIGSTOP)\n";
	kill 'STOP', $self->{pid};
	$self->{paused} = 1;
	return;
}

sub resume
{
	my ($self) = @_;
	croak "redis $self->{name} is not running" unless $self->{pid};
	print "### Resuming redis \"$self->{name}\" (SIGCONT)\n";
	kill 'CONT', $self->{pid};
	$self->{paused} = 0;
	return;
}

sub restart
{
	my ($self, %opts) = @_;
	if ($opts{kill9})
	{
		$self->kill9;
	}
	else
	{
		$self->stop;
	}
	return $self->start;
}

sub stop_all
{
	foreach my $r (@all_redis)
	{
		eval { $r->stop };
	}
	return;
}

sub cli
{
	my ($self, @args) = @_;
	my @cmd = ('redis-cli', '-h', '127.0.0.1', '-p', $self->{port});
	push @cmd, '-a', $self->{password}, '--no-auth-warning'
	  if defined $self->{password};
	my ($out, $err) = ('', '');
	IPC::Run::run([ @cmd, '--raw', @args ],
		'<', \undef, '>', \$out, '2>', \$err, IPC::Run::timeout(30))
	  or croak "redis-cli @args failed: $err";
	$out =~ s/^\s+|\s+$//g;
	return $out;
}

sub call
{
	my ($self, @args) = @_;
	my ($reply) = $self->pipeline(\@args);
	croak "redis $self->{name}: @args: $reply->{error}"
	  if ref $reply eq 'HASH';
	return $reply;
}

sub pipeline
{
	my ($self, @cmds) = @_;
	my $st = {
		deadline => Time::HiRes::time() + 30,
		buf      => '',
		pos      => 0,
		what     => "redis $self->{name} (port $self->{port})"
	};
	$st->{sock} = IO::Socket::INET->new(
		PeerAddr => '127.0.0.1',
		PeerPort => $self->{port},
		Proto    => 'tcp',
		Timeout  => 5) or die "$st->{what}: cannot connect: $@\n";
	binmode $st->{sock};

	if (defined $self->{password})
	{
		_send($st, [ 'AUTH', $self->{password} ]);
		my $r = _reply($st);
		die "$st->{what}: AUTH failed: $r->{error}\n" if ref $r eq 'HASH';
	}

	my @replies;
	while (my @chunk = splice(@cmds, 0, 1000))
	{
		_send($st, @chunk);
		push @replies, _reply($st) foreach @chunk;
	}
	close $st->{sock};
	return @replies;
}

sub _send
{
	my ($st, @cmds) = @_;
	my $out = '';
	foreach my $cmd (@cmds)
	{
		$out .= '*' . scalar(@$cmd) . "\r\n";
		foreach my $arg (@$cmd)
		{
			my $v = defined $arg ? "$arg" : '';
			utf8::encode($v) if utf8::is_utf8($v);
			$out .= '$' . length($v) . "\r\n$v\r\n";
		}
	}
	my $sel = IO::Select->new($st->{sock});
	while (length $out)
	{
		my $left = $st->{deadline} - Time::HiRes::time();
		die "$st->{what}: timed out sending\n"
		  if $left <= 0 || !$sel->can_write($left);
		my $n = syswrite($st->{sock}, $out);
		die "$st->{what}: write failed: $!\n" unless defined $n;
		substr($out, 0, $n, '');
	}
	return;
}

sub _fill
{
	my ($st) = @_;
	if ($st->{pos} > 65536)
	{
		substr($st->{buf}, 0, $st->{pos}, '');
		$st->{pos} = 0;
	}
	my $left = $st->{deadline} - Time::HiRes::time();
	die "$st->{what}: timed out waiting for a reply\n"
	  if $left <= 0 || !IO::Select->new($st->{sock})->can_read($left);
	my $n = sysread($st->{sock}, $st->{buf}, 65536, length $st->{buf});
	die "$st->{what}: read failed: $!\n" unless defined $n;
	die "$st->{what}: connection closed\n" if $n == 0;
	return;
}

sub _line
{
	my ($st) = @_;
	while (1)
	{
		my $i = index($st->{buf}, "\r\n", $st->{pos});
		if ($i >= 0)
		{
			my $line = substr($st->{buf}, $st->{pos}, $i - $st->{pos});
			$st->{pos} = $i + 2;
			return $line;
		}
		_fill($st);
	}
}

sub _reply
{
	my ($st) = @_;
	my $line = _line($st);
	my ($type, $rest) = (substr($line, 0, 1), substr($line, 1));
	return $rest if $type eq '+' || $type eq ':';
	return { error => $rest } if $type eq '-';
	if ($type eq '$')
	{
		return undef if $rest < 0;
		_fill($st) while length($st->{buf}) - $st->{pos} < $rest + 2;
		my $v = substr($st->{buf}, $st->{pos}, $rest);
		$st->{pos} += $rest + 2;
		return $v;
	}
	if ($type eq '*')
	{
		return undef if $rest < 0;
		return [ map { _reply($st) } 1 .. $rest ];
	}
	die "$st->{what}: protocol error at '$line'\n";
}

1;

=pod

=head1 Pg2RedisTest::ClusterClient

A client for a Redis Cluster built by C<start_redis_cluster()>, with the
interface of C<Pg2RedisTest::Redis> that the checks use:

=over

=item Pg2RedisTest::ClusterClient->new(@nodes)

Every node of the cluster (primaries and replicas); the slot map is read
from the first one that answers C<CLUSTER SLOTS>.

=item $client->call(@args), $client->pipeline([@cmd], ...)

Route each command by the hash slot of its first key (hash tags honoured),
follow C<MOVED>/C<ASK> and retry C<TRYAGAIN>/C<CLUSTERDOWN> (re-reading the
map) for up to 30 s.

=item $client->keys_matching($pattern)

The keys matching a pattern on every primary, sorted (what C<redis_keys()>
uses for a cluster).

=item $client->node_of($key), $client->slot($key)

The node serving a key now, and a key's hash slot.

=back

=cut

package Pg2RedisTest::ClusterClient;

use strict;
use warnings;

use Carp;
use Time::HiRes qw(usleep);

sub new
{
	my ($class, @nodes) = @_;
	my $self = bless { nodes => [@nodes] }, $class;
	$self->refresh;
	return $self;
}

sub refresh
{
		my ($self) = @_;
	my %by_port = map { ($_->port => $_, ($_->{tls_port} ? ($_->{tls_port} => $_) : ())) }
	  @{ $self->{nodes} };
	foreach my $n (@{ $self->{nodes} })
	{
		next unless $n->pid;
		my $slots = eval { $n->call('CLUSTER', 'SLOTS') } or next;
		my @owner;
		foreach my $r (@$slots)
		{
			$owner[$_] = $by_port{ $r->[2][1] } foreach $r->[0] .. $r->[1];
		}
		next if grep { !defined } @owner[ 0 .. 16383 ];
		$self->{owner} = \@owner;
		return 1;
	}
	return 0;
}

sub crc16
{
	my ($s) = @_;
	my $crc = 0;
	foreach my $c (unpack('C*', $s))
	{
		$crc ^= $c << 8;
		for (1 .. 8)
		{
			$crc = ($crc & 0x8000) ? (($crc << 1) ^ 0x1021) : ($crc << 1);
			$crc &= 0xffff;
		}
	}
	return $crc;
}

sub slot
{
	my ($self, $key) = @_;
	utf8::encode($key) if utf8::is_utf8($key);
	my $open = index($key, '{');
	if ($open >= 0)
	{
		my $close = index($key, '}', $open + 1);
		$key = substr($key, $open + 1, $close - $open - 1)
		  if $close > $open + 1;
	}
	return crc16($key) % 16384;
}

sub node_of
{
	my ($self, $key) = @_;
	return $self->{owner}[ $self->slot($key) ];
}

sub primaries
{
	my ($self) = @_;
	my %seen;
	return grep { !$seen{ $_->port }++ } @{ $self->{owner} };
}

sub pipeline
{
	my ($self, @cmds) = @_;
	my @replies;
	my @todo = (0 .. $#cmds);
	my $deadline = Time::HiRes::time() + 30;
	while (@todo)
	{
		my %by_node;
		foreach my $i (@todo)
		{
			my $key = @{ $cmds[$i] } > 1 ? $cmds[$i][1] : '';
			push @{ $by_node{ $self->node_of($key)->port } }, $i;
		}
		my %by_port = map { $_->port => $_ } @{ $self->{nodes} };
		my @again;
		foreach my $port (keys %by_node)
		{
			my @idx = @{ $by_node{$port} };
			my @r = eval { $by_port{$port}->pipeline(map { $cmds[$_] } @idx) };
			if ($@)
			{
				push @again, @idx;
				next;
			}
			foreach my $k (0 .. $#idx)
			{
				my $reply = $r[$k];
				if (ref $reply eq 'HASH'
					&& $reply->{error} =~ /^(MOVED|ASK|TRYAGAIN|CLUSTERDOWN)\b/)
				{
					push @again, $idx[$k];
					next;
				}
				$replies[ $idx[$k] ] = $reply;
			}
		}
		@todo = sort { $a <=> $b } @again;
		if (@todo)
		{
			croak "the cluster did not serve @{ $cmds[ $todo[0] ] } within 30 s"
			  if Time::HiRes::time() > $deadline;
			usleep(100_000);
			$self->refresh;
		}
	}
	return @replies;
}

sub call
{
	my ($self, @args) = @_;
	my ($reply) = $self->pipeline(\@args);
	croak "redis cluster: @args: $reply->{error}" if ref $reply eq 'HASH';
	return $reply;
}

sub keys_matching
{
	my ($self, $pattern) = @_;
	my %keys;
	foreach my $n ($self->primaries)
	{
		$keys{$_} = 1 foreach Pg2RedisTest::redis_keys($n, $pattern);
	}
	return sort keys %keys;
}

1;
