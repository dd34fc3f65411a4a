# Copyright (c) pg2redis developers
#
# Redis faults: the stream survives Redis being down when the worker starts,
# restarted (SIGTERM and SIGKILL, with AOF so that the data survives),
# stalled (SIGSTOP) shorter and longer than pg2redis.redis_timeout, rejecting
# a command (WRONGTYPE goes to pg2redis.dead_letters and the stream goes on),
# moved to another server by a reload, protected by a password (which never
# shows), and unreachable while PostgreSQL shuts down (which stays quick).
# After each, Redis equals PostgreSQL and the {diff:qty} counter is exact:
# nothing lost, nothing applied twice.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Pg2RedisTest;
use Test::More;
use Time::HiRes qw(time);

# (a) Redis is down when the worker starts: nothing listens on the port yet.
my $port1 = PostgreSQL::Test::Cluster::get_free_port();
my $node = new_node(
	'faults',
	redis_url      => "redis://127.0.0.1:$port1/0",
	flush_interval => '5ms',
	conf           => [
		"pg2redis.retry_initial_backoff = '50ms'",
		"pg2redis.retry_max_backoff = '500ms'"
	]);
create_items_schema($node);
$node->safe_psql('postgres', items_workload_sql(base => 1, txns => 5, sleep => 0));

wait_for_status($node, 'state', 'redis_unavailable', 10,
	'(a) Redis down at start: state is redis_unavailable');
wait_for_status($node, 'redis_connected', 'f', 10,
	'(a) Redis down at start: redis_connected is false');
wait_for_status($node, 'last_error IS NOT NULL', 't', 10,
	'(a) Redis down at start: last_error says why');
{
	my ($ret, $stdout, $stderr) =
	  $node->psql('postgres', "SELECT pg2redis_wait('1s')", timeout => 60);
	is($stdout, 'f', '(a) pg2redis_wait() returns false on timeout')
	  or diag("psql exit $ret: $stderr");
}

my $redis1 = start_redis(
	name        => 'r1',
	port        => $port1,
	appendonly  => 1,
	appendfsync => 'always');
wait_for_redis($node, 60, '(a) Redis up: the backlog is applied');
wait_for_status($node, 'state', 'streaming', 10, '(a) state is streaming');
wait_for_status($node, 'redis_connected', 't', 10, '(a) redis_connected');
check_items_in_redis($node, $redis1, '(a) Redis down at start');

# workload_with runs a background workload and calls $during while it runs.
sub workload_with
{
	my ($label, $base, $txns, $during) = @_;
	my $h = start_psql_script($node,
		items_workload_sql(base => $base, txns => $txns, sleep => 0.05));
	$during->();
	my ($rc, $out, $err) = finish_psql_script($h);
	is($rc, 0, "$label: the workload committed") or diag($err);
	return;
}

# (b) Redis restarted mid-workload, cleanly and then killed; AOF with
# appendfsync always keeps what Redis acknowledged.
workload_with(
	'(b) Redis restarts',
	10_001, 40,
	sub {
		sleep 1;
		$redis1->restart;
		sleep 1;
		$redis1->restart(kill9 => 1);
	});
wait_for_redis($node, 60, '(b) caught up after the Redis restarts');
check_items_in_redis($node, $redis1, '(b) Redis restarts');

# (c1) Redis stalled for 3 s, within the default redis_timeout (5s).
workload_with(
	'(c1) Redis stalled',
	20_001, 60,
	sub {
		sleep 1;
		$redis1->pause;
		sleep 3;
		$redis1->resume;
	});
wait_for_redis($node, 60, '(c1) caught up after the stall');
check_items_in_redis($node, $redis1, '(c1) Redis stalled 3 s');

# (c2) The same stall, now longer than redis_timeout: the worker gives up on
# the connection and reconnects while the stopped Redis still holds the
# commands it sent on the old one, which Redis runs when it resumes.  They
# must not be applied twice.
$node->safe_psql('postgres',
	"ALTER SYSTEM SET pg2redis.redis_timeout = '1s'; SELECT pg_reload_conf();");
workload_with(
	'(c2) Redis stalled past redis_timeout',
	30_001, 60,
	sub {
		sleep 1;
		$redis1->pause;
		sleep 3;
		note("status while Redis is stalled:\n" . status_text($node));
		$redis1->resume;
	});
wait_for_redis($node, 60, '(c2) caught up after the stall');
check_items_in_redis($node, $redis1, '(c2) Redis stalled past redis_timeout');
# each reconnect first ends the connection it replaces (by id and address),
# so that commands still in Redis's input buffer cannot run after the
# position was read
like($redis1->call('INFO', 'commandstats'), qr/cmdstat_client\|kill:calls=[1-9]/,
	'(c2) the reconnect ended the old connection (CLIENT KILL ID ... ADDR ...)');
$node->safe_psql('postgres',
	"ALTER SYSTEM RESET pg2redis.redis_timeout; SELECT pg_reload_conf();");

# (d) A command Redis rejects is a dead letter; the rest goes on.
$node->safe_psql(
	'postgres', q{
	CREATE TABLE wt (id int PRIMARY KEY, v text);
	SELECT pg2redis_add_rule('wt', 'insert', 'SADD wt:{id} {id}');
	SELECT pg2redis_add_rule('wt', 'insert', 'SADD wt:ok {id}');
});
$redis1->call('HSET', 'wt:1', 'f', 'a hash, not a set');
$node->safe_psql('postgres', "INSERT INTO wt VALUES (1, 'one')");
wait_for_redis($node, 30, '(d) the rejected transaction counts as applied');
ok( poll_until(
		10,
		sub {
			$node->safe_psql('postgres',
				'SELECT count(*) FROM pg2redis.dead_letters') > 0;
		}),
	'(d) a dead letter is written');
is( $node->safe_psql(
		'postgres', q{
		SELECT lsn IS NOT NULL, xid IS NOT NULL, relation::text, op,
		       command, error ~ 'WRONGTYPE', created_at IS NOT NULL
		  FROM pg2redis.dead_letters ORDER BY id}),
	't|t|wt|insert|{SADD,wt:1,1}|t|t',
	'(d) the dead letter has lsn, xid, relation, op, command and the error');
is_deeply(redis_hash($redis1, 'wt:1'), { f => 'a hash, not a set' },
	'(d) the hash is untouched');
is($redis1->call('SISMEMBER', 'wt:ok', '1'), '1',
	"(d) the transaction's other command was applied");
wait_for_status($node, 'dead_letters >= 1', 't', 10,
	'(d) pg2redis_status() counts the dead letter');
$node->safe_psql('postgres',
	"INSERT INTO wt VALUES (2, 'two'); INSERT INTO items VALUES (40001, 'after', 4);");
wait_for_redis($node, 30);
is($redis1->call('SISMEMBER', 'wt:2', '2'), '1',
	'(d) the stream goes on after a dead letter');
check_items_in_redis($node, $redis1, '(d) after a dead letter');
wait_for_status($node, 'state', 'streaming', 10, '(d) still streaming');

# (e) A reload moves the stream to another Redis.
my $redis2 = start_redis(name => 'r2');
my $port2 = $redis2->port;
$node->safe_psql('postgres',
	"ALTER SYSTEM SET pg2redis.redis_url = '" . $redis2->url . "'; SELECT pg_reload_conf();");
wait_for_status($node, 'redis_url', qr/:$port2\b/, 30,
	'(e) status shows the new redis_url after reload');
wait_for_status($node, 'redis_connected', 't', 30, '(e) connected to the new Redis');
$node->safe_psql('postgres', "INSERT INTO items VALUES (50001, 'to r2', 3)");
wait_for_redis($node, 30);
is_deeply(redis_hash($redis2, 'item:50001'),
	{ id => '50001', name => 'to r2', qty => '3' },
	'(e) new changes arrive in the new Redis');
is($redis1->call('EXISTS', 'item:50001'), '0', '(e) and not in the old one');
is($node->safe_psql('postgres', q{SELECT pg2redis_redis('GET', 'qty:total')}),
	'"3"', '(e) pg2redis_redis() talks to the new Redis');

# (g) A password: a wrong one fails without showing itself, the right one
# works; neither appears in status, errors or the server log.
my $password = 'pg2redis-S3cret-pw';
my $wrong    = 'wrong-Pw-7q9x';
my $redis3   = start_redis(name => 'r3', requirepass => $password);
my $port3    = $redis3->port;
$node->safe_psql('postgres', 'ALTER SYSTEM RESET pg2redis.redis_url');
# postgresql.conf, not ALTER SYSTEM: log_statement = all would log it.
$node->append_conf('postgresql.conf',
	"pg2redis.redis_url = 'redis://:$wrong\@127.0.0.1:$port3/0'");
$node->reload;
wait_for_status($node, 'redis_url', qr/:$port3\b/, 30,
	'(g) status shows the URL with the wrong password');
wait_for_status($node, 'redis_connected', 'f', 30,
	'(g) a wrong password does not connect');
wait_for_status($node, 'last_error IS NOT NULL', 't', 10,
	'(g) last_error is set');
my $st = status_row($node);
unlike(join(' ', map { $_ // '' } values %$st), qr/\Q$wrong\E/,
	'(g) the wrong password is not in pg2redis_status()');

$node->append_conf('postgresql.conf',
	"pg2redis.redis_url = 'redis://:$password\@127.0.0.1:$port3/0'");
$node->reload;
wait_for_status($node, 'redis_connected', 't', 30, '(g) the right password connects');
$node->safe_psql('postgres', "INSERT INTO items VALUES (50002, 'to r3', 1)");
wait_for_redis($node, 30);
is($redis3->call('HGET', 'item:50002', 'name'), 'to r3',
	'(g) changes arrive in the password-protected Redis');
is($node->safe_psql('postgres', q{SELECT pg2redis_redis('PING')}),
	'"PONG"', '(g) pg2redis_redis() authenticates too');
$st = status_row($node);
unlike(join(' ', map { $_ // '' } values %$st), qr/\Q$password\E/,
	'(g) the password is not in pg2redis_status()');

# (f) A fast shutdown while Redis does not answer (stopped, so the TCP
# connection stays up) is quick; what was pending arrives after a restart.
$redis3->pause;
$node->safe_psql('postgres', "INSERT INTO items VALUES (50003, 'while stalled', 1)");
sleep 1;
my $t0 = time;
my $stopped;
{
	local $ENV{PGCTLTIMEOUT} = 30;    # bounded; pg_ctl's default is 60 s
	$stopped = $node->stop('fast', fail_ok => 1);
}
my $elapsed = time - $t0;
ok($stopped && $elapsed < 10,
	sprintf('(f) fast shutdown with Redis stalled took %.1f s (< 10 s)', $elapsed));
$node->stop('immediate') unless $stopped;
$redis3->resume;
$node->start;
wait_for_redis($node, 60, '(f) caught up after the restart');
is($redis3->call('HGET', 'item:50003', 'name'), 'while stalled',
	'(f) the change pending at shutdown was not lost');

$node->stop;
# The postmaster itself logs the new value of a setting changed by a reload
# ('parameter "pg2redis.redis_url" changed to "..."'), which no extension can
# prevent; nothing else may show either password.
is_deeply(
	[
		grep { !/parameter "pg2redis\.redis_url" changed to/ }
		  log_lines($node, qr/\Q$password\E|\Q$wrong\E/)
	],
	[],
	'no password in the server log (but for the reload message of PostgreSQL itself)');
is_deeply([ log_lines($node, qr/terminated by signal|PANIC/) ],
	[], 'no process crashed');

done_testing();
