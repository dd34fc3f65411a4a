# Copyright (c) pg2redis developers
#
# Host names (issue 13 item 4, streaming-core review finding 13):
#
# 1. every address a name resolves to is tried: "dual" resolves to ::1
#    first and 127.0.0.1, Redis listens on 127.0.0.1 only (::1 refuses);
#    the worker and pg2redis_redis() connect.  Before, only the first
#    address was tried: never connected.
# 2. a name whose name server never answers holds up nothing beyond
#    pg2redis.redis_timeout: pg2redis_redis() fails after it, a reload
#    with a new URL takes effect at once, SIGTERM ends the worker at once,
#    and so does a fast shutdown.  Before, getaddrinfo() blocked the worker
#    (and the backend) for the resolver's own timeout (30 s here), with no
#    interrupt seen.
#
# The resolver is set up without touching the machine's files: PostgreSQL
# and Redis run in their own user, network and mount namespaces (unshare,
# unprivileged), with a loopback interface of their own, /etc/hosts and
# /etc/resolv.conf bind-mounted over by the test's, and a name server on
# 127.0.0.1:53 there that reads queries and never answers.  The test talks
# to Redis through pg2redis_redis() (its own process is outside).  Skipped
# where user namespaces are not allowed.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Pg2RedisTest;
use Test::More;
use Time::HiRes qw(time usleep);

my $ip = (grep { -x $_ } qw(/usr/sbin/ip /sbin/ip /usr/bin/ip /bin/ip))[0];
plan skip_all => 'no ip command' unless $ip;
my $probe = system(
	'unshare', '-U', '-r', '-n', '-m', 'sh', '-c',
	"$ip link set lo up && mount --bind /etc/hosts /etc/hosts 2>/dev/null");
plan skip_all => 'unprivileged user, network and mount namespaces are not available'
  if $probe != 0;

my $dir = PostgreSQL::Test::Utils::tempdir();
my $port = PostgreSQL::Test::Cluster::get_free_port();
my ($uid, $gid) = ($<, (split ' ', $()[0]);

PostgreSQL::Test::Utils::append_to_file("$dir/hosts",
	"127.0.0.1 localhost\n::1 dual.pg2redis.test\n127.0.0.1 dual.pg2redis.test\n");
PostgreSQL::Test::Utils::append_to_file("$dir/resolv.conf",
	"nameserver 127.0.0.1\noptions timeout:30 attempts:1\n");

# in_namespace.sh runs its arguments as the test's user in the namespaces,
# after it set them up and started the silent name server and Redis.
my $redis_server = `sh -c 'command -v redis-server'`;
chomp $redis_server;
PostgreSQL::Test::Utils::append_to_file("$dir/in_namespace.sh", qq{set -e
$ip link set lo up
mount --bind $dir/hosts /etc/hosts
mount --bind $dir/resolv.conf /etc/resolv.conf
perl -MIO::Socket::INET -e '
	my \$s = IO::Socket::INET->new(Proto => "udp", LocalAddr => "127.0.0.1:53")
	  or die "name server: \$!";
	open(my \$f, ">", "$dir/dns.pid") or die; print \$f "\$\$\\n"; close \$f;
	my \$end = time + 900;
	while (time < \$end) { my \$q; \$s->recv(\$q, 512); }' >/dev/null 2>&1 &
$redis_server --port $port --bind 127.0.0.1 --save '' --appendonly no \\
	--daemonize yes --pidfile $dir/redis.pid --logfile $dir/redis.log
for i in 1 2 3 4 5 6 7 8 9 10; do [ -s $dir/dns.pid ] && [ -s $dir/redis.pid ] && break; sleep 0.2; done
exec unshare -U --map-user=$uid --map-group=$gid "\$@"
});

END
{
	foreach my $f ("$dir/dns.pid", "$dir/redis.pid")
	{
		next unless defined $dir && -s $f;
		my $pid = PostgreSQL::Test::Utils::slurp_file($f);
		chomp $pid;
		kill 'KILL', $pid if $pid =~ /^\d+$/;
	}
}

my $node = new_node(
	'resolve',
	redis_url => "redis://dual.pg2redis.test:$port/0",
	start => 0,
	conf => [ "pg2redis.redis_timeout = '2s'", "pg2redis.retry_max_backoff = '1s'" ]);
{
	local %ENV = %ENV;
	delete $ENV{PGAPPNAME};
	is( system(
			'unshare', '-U', '-r', '-n', '-m', 'sh', "$dir/in_namespace.sh",
			'pg_ctl', '-w', '-D', $node->data_dir, '-l', $node->logfile,
			'-o', '--cluster-name=resolve', 'start'),
		0,
		'PostgreSQL and Redis start in their namespaces');
	$node->_update_pid(1);
}

# sql returns what a statement printed, or its error, and how long it took.
sub sql
{
	my ($q) = @_;
	my ($out, $err) = ('', '');
	my $t0 = time;
	$node->psql('postgres', $q, stdout => \$out, stderr => \$err, timeout => 120);
	return ($out ne '' ? $out : $err, time - $t0);
}

# set_url sets pg2redis.redis_url and reloads.
sub set_url
{
	my ($url) = @_;
	$node->safe_psql('postgres',
		"ALTER SYSTEM SET pg2redis.redis_url = '$url'; SELECT pg_reload_conf()");
}

# 1. every address
$node->safe_psql('postgres', q{
	CREATE EXTENSION pg2redis;
	CREATE TABLE t (id int PRIMARY KEY, v text);
	SELECT pg2redis_add_rule('t', 'insert', 'SET t:{id} {v}');
});
wait_for_status($node, 'state', 'streaming', 30,
	'1. the worker connects to dual.pg2redis.test (::1 refuses, 127.0.0.1 answers)');
$node->safe_psql('postgres', "INSERT INTO t VALUES (1, 'one')");
wait_for_redis($node, 30, '1. a row is applied');
my ($out) = sql(q{SELECT pg2redis_redis('GET', 't:1')});
is($out, '"one"', '1. pg2redis_redis() connects through the second address too');
ok(log_lines($node, qr/connected to Redis at redis:\/\/dual\.pg2redis\.test/),
	'1. the worker logged the connection');

# 2. a name server that never answers
my $hang = "redis://hang.pg2redis.test:$port/0";
set_url($hang);
ok(poll_status($node, 'redis_connected', 'f', 10), '2. the worker dropped the old connection');
my ($err, $secs) = sql(q{SELECT pg2redis_redis('PING')});
like($err, qr/resolv/, '2. pg2redis_redis() fails on the name');
note(sprintf('pg2redis_redis() gave up after %.1f s: %s', $secs, $err));
cmp_ok($secs, '<', 8, '2. after pg2redis.redis_timeout (2 s), not the resolver\'s 30 s');

# a reload while the worker waits for the name server
sleep 1;
my $t0 = time;
set_url("redis://dual.pg2redis.test:$port/0");
$node->safe_psql('postgres', "INSERT INTO t VALUES (2, 'two')");
my ($ok) = sql(q{SELECT pg2redis_wait('60s')});
my $reload_secs = time - $t0;
is($ok, 't', '2. after a reload to a good URL the stream goes on');
note(sprintf('applied %.1f s after the reload', $reload_secs));
cmp_ok($reload_secs, '<', 8, '2. the reload was not held up by the lookup');

# SIGTERM while the worker waits for the name server
set_url($hang);
ok(poll_status($node, 'redis_connected', 'f', 10), '2. the worker is resolving again');
sleep 1;
my $pid = worker_pid($node);
$t0 = time;
$node->safe_psql('postgres', "SELECT pg_terminate_backend($pid)");
ok(poll_until(60, sub { !kill(0, $pid) }, 0.05), '2. the worker exits on SIGTERM');
my $term_secs = time - $t0;
note(sprintf('the worker exited %.2f s after SIGTERM', $term_secs));
cmp_ok($term_secs, '<', 3, '2. at once');

# a fast shutdown while the (restarted) worker waits for the name server
ok(poll_until(30, sub { my $p = worker_pid($node); defined $p && $p ne $pid }),
	'2. a new worker started');
sleep 2;
$t0 = time;
$node->stop('fast');
my $stop_secs = time - $t0;
note(sprintf('fast shutdown took %.2f s', $stop_secs));
cmp_ok($stop_secs, '<', 8, '2. a fast shutdown is not held up by the lookup');

done_testing();
