# Copyright (c) pg2redis developers
#
# Redis behind Sentinel (redis-sentinel:// URLs, issue 15): a primary, two
# replicas and three real sentinels on loopback.  The worker asks the
# sentinels for the primary, checks ROLE, follows failovers, and confirms
# its slot only past what pg2redis.redis_wait_replicas replicas hold:
#   - streaming, and the backend's own connections (pg2redis_redis(),
#     pg2redis_verify()) reach the primary through the sentinels;
#   - without WAIT (redis_wait_replicas = 0), replicas cut off their
#     primary when it dies lose acknowledged writes: the worker says so
#     (WARNING with the LSN range) and verify + snapshot repair it;
#   - with WAIT 1 the same failure loses nothing: the writes the replicas
#     lacked were never confirmed, and are sent again to the new primary;
#   - the random workload through a kill -9 of the primary and through a
#     SENTINEL FAILOVER, WAIT counting every replica: Redis equals
#     PostgreSQL, the INCRBY counter and the XADD stream are exact.
# The seed is printed (PG2REDIS_CHAOS_SEED replays one).

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Pg2RedisTest;
use ChaosWorkload;
use Test::More;
use Time::HiRes qw(usleep);

my $seed = $ENV{PG2REDIS_CHAOS_SEED} // time();
srand($seed);
diag("chaos seed $seed");

# the data nodes and the sentinels have passwords of their own: the URL
# carries the data nodes', a file the sentinels'
my $set = start_sentinel_set(replicas => 2, sentinels => 3,
	password => 'data secret', sentinel_password => 'sentinel secret');
my $spw_file = PostgreSQL::Test::Utils::tempdir() . '/sentinel.pw';
PostgreSQL::Test::Utils::append_to_file($spw_file, "sentinel secret\n");
chmod 0600, $spw_file;
(my $url = $set->{url}) =~ s/data secret/data%20secret/;
my $node = new_node(
	'sentinel',
	redis_url      => $url,
	flush_interval => '5ms',
	wait_streaming => 1,
	conf           => [
		"pg2redis.redis_sentinel_password_file = '$spw_file'",
		"pg2redis.redis_wait_replicas = 1",
		"pg2redis.retry_max_backoff = '500ms'",
		"pg2redis.redis_timeout = '2s'"
	]);

(my $masked = $url) =~ s/:data%20secret@/***@/;
is($node->safe_psql('postgres', 'SELECT redis_url FROM pg2redis_status()'),
	$masked, 'status shows the redis-sentinel:// URL, its password masked');
my $primary = $set->{primary};
ok(scalar log_lines($node,
		qr/connected to Redis primary 127\.0\.0\.1:${\ $primary->port} of "mymaster"/),
	'the worker connected to the primary the sentinels name (each with its password)');
is(scalar log_lines($node, qr/secret/), 0, 'no password in the log');
is($node->safe_psql('postgres', q{SELECT pg2redis_redis('ROLE') #>> '{0}'}),
	'master', 'pg2redis_redis() reaches the primary through the sentinels');

$node->safe_psql('postgres', ChaosWorkload->schema_sql . q{
	CREATE TABLE lossy (id int PRIMARY KEY);
	SELECT pg2redis_add_rule('lossy', 'insert', 'SET lossy:{id} 1');
});
my $chaos = ChaosWorkload->new;

sub workload_sql
{
	my ($n, $pause) = @_;
	return join('', map { $chaos->transaction . "SELECT pg_sleep($pause);\n" } 1 .. $n);
}

# waits until the sentinels name another primary than $old, and returns it
sub new_primary
{
	my ($old, $label) = @_;
	my $p;
	# a first election can fail and is retried after 2 x failover-timeout;
	# under a busy machine (tests run two at a time) that takes a while
	ok( poll_until(
			90,
			sub {
				$p = sentinel_primary($set);
				$p && $p->port != $old->port
				  && $p->call('ROLE')->[0] eq 'master';
			},
			0.1),
		"$label: the sentinels promoted a replica");
	return $p;
}

# cuts the replicas off the primary: stopped (SIGSTOP), and their
# connections ended by the primary, so that nothing written next reaches
# them (not even their socket buffers) until the primary is gone
sub cut_replicas
{
	my ($p, @replicas) = @_;
	$_->pause foreach @replicas;
	$p->call('CLIENT', 'KILL', 'TYPE', 'replica');
	poll_until(10, sub { $p->call('INFO', 'replication') =~ /connected_slaves:0/ }, 0.05)
	  or diag('the replicas are still connected');
}

sub mend_replicas
{
	$_->resume foreach @_;
}

# restarts a killed server as a replica of $p
sub rejoin
{
	my ($r, $p) = @_;
	$r->start;
	$r->call('REPLICAOF', '127.0.0.1', $p->port);
	poll_until(30, sub { $r->call('INFO', 'replication') =~ /master_link_status:up/ }, 0.1)
	  or diag($r->name . ' did not sync with the new primary');
}

# 1. Streaming.
my ($rc, $out, $err) = run_psql_script($node, workload_sql(60, 0));
is($rc, 0, 'workload: streaming') or diag($err);
wait_for_redis($node, 60, 'streaming: caught up');
$chaos->check($node, $primary, 'streaming');
like($primary->call('INFO', 'commandstats'), qr/cmdstat_wait:calls=[1-9]/,
	'replicas acknowledged the writes (WAIT)');

# 2. Without WAIT: the replicas are cut off, the primary acknowledges and
# dies.  The promoted replica lacks those writes: a WARNING names the range.
$node->append_conf('postgresql.conf', "pg2redis.redis_wait_replicas = 0\n");
$node->reload;
usleep(300_000);
cut_replicas($primary, @{ $set->{replicas} });
$node->safe_psql('postgres', 'INSERT INTO lossy SELECT generate_series(1, 20)');
wait_for_redis($node, 30, 'no WAIT: Redis acknowledged at once');
my $offset = -s $node->logfile;
$primary->kill9;
mend_replicas(@{ $set->{replicas} });
my $old = $primary;
$primary = new_primary($old, 'no WAIT');
ok( poll_until(
		30,
		sub {
			scalar log_lines($node,
				qr/WARNING:  Redis lost writes it had acknowledged: its stream position went back from \S+ to \S+/,
				$offset);
		}),
	'no WAIT: the lost writes are reported with their LSN range');
ok(scalar log_lines($node, qr/HINT:  Run pg2redis_resync\(\).*pg2redis_verify\(\)/, $offset),
	'and the hint says how to recover');
is($node->safe_psql('postgres',
		q{SELECT count(*) FROM pg2redis_verify('lossy') WHERE problem = 'missing'}),
	'20', 'pg2redis_verify() (through the sentinels) lists the lost keys');
my $id = $node->safe_psql('postgres', q{SELECT pg2redis_snapshot('lossy')});
ok(snapshot_reaches($node, $id, 'done', 60), 'a snapshot of the table');
is($node->safe_psql('postgres',
		q{SELECT count(*) FROM pg2redis_verify('lossy') WHERE problem = 'missing'}),
	'0', 'repairs it');
rejoin($old, $primary);

# 3. WAIT 1, the same failure: the writes were never confirmed; the new
# primary gets them.
$node->append_conf('postgresql.conf', "pg2redis.redis_wait_replicas = 1\n");
$node->reload;
usleep(300_000);
my @live = grep { $_->port != $primary->port } @{ $set->{nodes} };
cut_replicas($primary, @live);
$offset = -s $node->logfile;
$node->safe_psql('postgres', 'INSERT INTO lossy SELECT generate_series(21, 40)');
ok(poll_status($node, 'last_error', qr/replicated the stream's writes to 0 of the 1 replicas/, 30),
	'WAIT 1: writes the replicas lack are not confirmed');
$primary->kill9;
mend_replicas(@live);
$old = $primary;
$primary = new_primary($old, 'WAIT 1');
wait_for_redis($node, 60, 'WAIT 1: caught up on the new primary');
is($primary->call('EXISTS', map { "lossy:$_" } 21 .. 40), 20,
	'WAIT 1: the new primary has every write');
is(scalar log_lines($node, qr/lost writes/, $offset), 0, 'and nothing is reported lost');
my $dead = $old;

# 4. The random workload through a kill -9 of the primary.  WAIT counts
# every replica (one now: the one killed above stays down): Sentinel picks
# the replica to promote by offsets it saw up to seconds before, so with
# more replicas than WAIT counts it may promote one that lacks confirmed
# writes (reported, see step 2).
my $h = start_psql_script($node, workload_sql(150, 0.01), timeout => 300);
usleep(700_000);
$old = $primary;
$primary->kill9;
$primary = new_primary($old, 'kill -9');
# the new primary has no replica left: WAIT 1 holds the stream until one
# is back
rejoin($dead, $primary);
($rc, $out, $err) = finish_psql_script($h);
is($rc, 0, 'workload through kill -9') or diag($err);
wait_for_redis($node, 60, 'kill -9: caught up');
$chaos->check($node, $primary, 'after kill -9 of the primary');

# 5. And through a SENTINEL FAILOVER (the old primary alive), WAIT again
# counting every replica.
$h = start_psql_script($node, workload_sql(150, 0.01), timeout => 300);
usleep(700_000);
$old = $primary;
$offset = -s $node->logfile;
# the sentinels need a replica they saw in sync with the new primary
ok(poll_until(30, sub { eval { $set->{sentinels}[1]->call('SENTINEL', 'FAILOVER', 'mymaster'); 1 } }, 0.2),
	'SENTINEL FAILOVER accepted');
$primary = new_primary($old, 'SENTINEL FAILOVER');
# the sentinels demote the old primary some 8 s later; WAIT 1 needs it now
$old->call('REPLICAOF', '127.0.0.1', $primary->port);
($rc, $out, $err) = finish_psql_script($h);
is($rc, 0, 'workload through SENTINEL FAILOVER') or diag($err);
wait_for_redis($node, 60, 'SENTINEL FAILOVER: caught up');
$chaos->check($node, $primary, 'after SENTINEL FAILOVER');
ok(scalar log_lines($node,
		qr/connected to Redis primary 127\.0\.0\.1:${\ $primary->port} of "mymaster"/, $offset),
	'the worker follows the new primary');
is(scalar log_lines($node, qr/lost writes/), 1, 'only the failure without WAIT lost writes');

$node->stop;
done_testing();
