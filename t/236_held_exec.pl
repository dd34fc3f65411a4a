# Copyright (c) pg2redis developers
#
# The held EXEC (issue 16 item 3): while block N is in flight, the next
# block's MULTI, commands and fence SET are written right behind it, its
# EXEC held back until N's outcome is known.  A proxy between the worker and
# Redis logs what the worker sends and can hold Redis's replies back (SIGUSR1
# holds, SIGUSR2 releases, SIGHUP cuts every connection, SIGWINCH stops or
# resumes reading what the worker sends), so that N's EXEC
# reply is withheld while N+1's queue is observed arriving:
#   - N+1's MULTI and commands reach Redis before N's EXEC reply is read
#     (and Redis shows the worker's connection inside a MULTI), but not its
#     EXEC: Redis has N and nothing of N+1 (fails on the one-block code);
#   - N refused while queueing (NOPERM: EXECABORT) while N+1 is queued: N+1
#     is discarded, N goes again without the refused command (a dead
#     letter), N+1 after it, each applied once and in order;
#   - a command refused while queueing inside the held N+1: its EXEC aborts,
#     and it goes again without it;
#   - the link lost (CLIENT KILL, or the proxy cutting it) while N's EXEC is
#     unanswered and N+1 is queued, and the worker killed with kill -9 in
#     the same state: exactly once after the reconnect or restart;
#   - pg2redis.redis_wait_replicas = 1 with a replica: N+1's EXEC and WAIT
#     follow N's WAIT reply;
#   - pg2redis.on_command_error = stop on an EXEC-time error of N while N+1
#     is queued: N+1 is not applied until the stream restarts, then once;
#   - blocks larger than the socket buffers while the proxy reads nothing:
#     N+1's queue is appended behind N's output not all written yet.
# INCRBY counters and an RPUSH log list check exactly once and order.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use HoldProxy;
use Pg2RedisTest;
use Test::More;
use Time::HiRes qw(sleep);

my $redis   = start_redis(name => 'held');
my $replica = start_redis(name => 'heldreplica',
	extra_args => [ '--replicaof', '127.0.0.1', $redis->port ]);
poll_until(30,
	sub { $replica->call('INFO', 'replication') =~ /master_link_status:up/ })
  or BAIL_OUT('the replica did not sync');
$redis->call('ACL', 'SETUSER', 'app', 'on', '>app-secret', '~*', '&*',
	'+@all', '-hset');

# The proxy (HoldProxy.pm): worker -> Redis forwarded and logged to
# $uplog, Redis -> worker forwarded, or kept while held.
my $proxy = start_hold_proxy($redis->port);
my ($proxy_port, $proxy_pid, $uplog) = @$proxy{qw(port pid log)};

my $node = proxy_node('held', $proxy, auth => 'app:app-secret@',
	conf => ['restart_after_crash = on']);

$node->safe_psql(
	'postgres', q{
	CREATE TABLE t (id int PRIMARY KEY);
	SELECT pg2redis_add_rule('t', 'insert', 'INCRBY total {id}');
	SELECT pg2redis_add_rule('t', 'insert', 'RPUSH log {id}');
	CREATE TABLE bad (id int PRIMARY KEY);
	SELECT pg2redis_add_rule('bad', 'insert', 'INCRBY total {id}');
	SELECT pg2redis_add_rule('bad', 'insert', 'HSET h:{id} v 1');   -- NOPERM
	SELECT pg2redis_add_rule('bad', 'insert', 'RPUSH log {id}');
	CREATE TABLE w (id int PRIMARY KEY);
	SELECT pg2redis_add_rule('w', 'insert', 'SET w:{id} x');
	SELECT pg2redis_add_rule('w', 'insert', 'LPUSH w:{id} y');      -- WRONGTYPE
	SELECT pg2redis_add_rule('w', 'insert', 'INCRBY total {id}');
	SELECT pg2redis_add_rule('w', 'insert', 'RPUSH log {id}');
	CREATE TABLE big (id int PRIMARY KEY, v text);
	SELECT pg2redis_add_rule('big', 'insert', 'SET big:{id} {v}');
	SELECT pg2redis_add_rule('big', 'insert', 'INCRBY bigtotal {id}');
});
wait_for_redis($node, 60, 'rules in place');

my @applied;    # the ids in the order Redis must log them

# sent counts the commands named in what the worker wrote after byte $from.
sub sent { return proxy_sent($proxy, @_); }

# held_pair sends $a (block N) with Redis's replies held back, then $b
# (block N+1), and waits for N+1's queue to reach Redis.  Returns the log
# offset it started at.
sub held_pair
{
	my ($a, $b, $what) = @_;
	my $from = -s $uplog;
	kill 'USR1', $proxy_pid;
	sleep(0.1);
	$node->safe_psql('postgres', $a);
	ok(poll_until(30, sub { sent($from, 'EXEC') >= 1 }),
		"$what: block N sent");
	$node->safe_psql('postgres', $b);
	ok(poll_until(20, sub { sent($from, 'MULTI') >= 2 }),
		"$what: block N+1's MULTI reached Redis before N's EXEC reply was read");
	sleep(0.2);
	is(sent($from, 'EXEC'), 1, "$what: N+1's EXEC is held back");
	return $from;
}

# check_log checks the log list and the counter against @applied.
sub check_log
{
	my ($what) = @_;
	my $sum = 0;
	$sum += $_ for @applied;
	is($redis->call('GET', 'total'), $sum, "$what: INCRBY applied exactly once");
	is(join(',', redis_lrange('log')), join(',', @applied),
		"$what: every transaction applied once, in order");
}

sub redis_lrange
{
	my ($key) = @_;
	my $r = $redis->call('LRANGE', $key, 0, -1);
	return ref $r ? @$r : ();
}

# 1. N+1 queued while N's EXEC reply is withheld.
my $from = held_pair('INSERT INTO t VALUES (1)', 'INSERT INTO t VALUES (2)',
	'overlap');
is(join(',', redis_lrange('log')), '1', 'overlap: Redis applied N, nothing of N+1');
my ($cl) = grep { /user=app/ && /name=pg2redis/ }
  split /\n/, $redis->call('CLIENT', 'LIST');
like($cl // '', qr/ multi=[1-9]/,
	"overlap: the worker's connection is inside N+1's MULTI");
kill 'USR2', $proxy_pid;
push @applied, 1, 2;
wait_for_redis($node, 60, 'overlap: applied');
check_log('overlap');
is($replica->call('GET', 'total'), $redis->call('GET', 'total'),
	'the replica follows');

# 2. N refused while queueing (EXECABORT) while N+1 is queued.
$from = held_pair('INSERT INTO bad VALUES (10)', 'INSERT INTO t VALUES (11)',
	'N refused');
kill 'USR2', $proxy_pid;
push @applied, 10, 11;
wait_for_redis($node, 60, 'N refused: applied');
check_log('N refused');
ok(sent($from, 'DISCARD') >= 1, 'N refused: N+1 discarded, to follow N');
is($redis->call('EXISTS', 'h:10'), '0', 'N refused: HSET not applied');
ok( $node->poll_query_until(
		'postgres',
		"SELECT count(*) = 1 FROM pg2redis.dead_letters WHERE command[2] = 'h:10' AND error LIKE 'NOPERM%'"
	),
	'N refused: its refused command is a dead letter');

# 3. A command refused while queueing inside the held N+1.
$from = held_pair('INSERT INTO t VALUES (20)', 'INSERT INTO bad VALUES (21)',
	'N+1 refused');
kill 'USR2', $proxy_pid;
push @applied, 20, 21;
wait_for_redis($node, 60, 'N+1 refused: applied');
check_log('N+1 refused');
ok( $node->poll_query_until(
		'postgres',
		"SELECT count(*) = 1 FROM pg2redis.dead_letters WHERE command[2] = 'h:21'"),
	'N+1 refused: its refused command is a dead letter');

# 4. The link lost while N's EXEC is unanswered and N+1 queued.
$from = held_pair('INSERT INTO t VALUES (30)', 'INSERT INTO t VALUES (31)',
	'CLIENT KILL');
$redis->call('CLIENT', 'KILL', 'USER', 'app');
sleep(0.2);
kill 'USR2', $proxy_pid;
push @applied, 30, 31;
wait_for_redis($node, 60, 'CLIENT KILL: applied after the reconnect');
check_log('CLIENT KILL');

$from = held_pair('INSERT INTO t VALUES (40)', 'INSERT INTO t VALUES (41)',
	'proxy cut');
kill 'HUP', $proxy_pid;
push @applied, 40, 41;
wait_for_redis($node, 60, 'proxy cut: applied after the reconnect');
check_log('proxy cut');

# 5. The worker killed while N+1 is queued.
$from = held_pair('INSERT INTO t VALUES (50)', 'INSERT INTO t VALUES (51)',
	'kill -9');
my $pid = worker_pid($node) // 0;
my $cmdline = $pid > 0 ? eval { slurp_file("/proc/$pid/cmdline") } // '' : '';
ok($pid > 0 && $cmdline =~ /^postgres/, 'kill -9: worker pid known');
kill 'KILL', $pid if $pid > 0 && $cmdline =~ /^postgres/;
sleep(0.5);
kill 'USR2', $proxy_pid;
push @applied, 50, 51;
wait_for_status($node, 'state', 'streaming', 60, 'kill -9: streaming again');
wait_for_redis($node, 60, 'kill -9: applied after the restart');
check_log('kill -9');

# 6. WAIT for a replica: N+1's EXEC and WAIT follow N's WAIT reply.
$node->safe_psql('postgres',
	"ALTER SYSTEM SET pg2redis.redis_wait_replicas = 1; SELECT pg_reload_conf()");
sleep(0.5);
$node->safe_psql('postgres', 'INSERT INTO t VALUES (60)');
push @applied, 60;
wait_for_redis($node, 60, 'WAIT: settled');
$from = held_pair('INSERT INTO t VALUES (61)', 'INSERT INTO t VALUES (62)',
	'WAIT');
is(sent($from, 'WAIT'), 1, "WAIT: N's WAIT sent, N+1's held");
kill 'USR2', $proxy_pid;
push @applied, 61, 62;
wait_for_redis($node, 60, 'WAIT: applied');
check_log('WAIT');
ok(sent($from, 'WAIT') >= 2, "WAIT: N+1's WAIT sent with its EXEC");
is(($replica->call("LRANGE", "log", -1, -1) // [])->[0], "62",
	'WAIT: the replica has N+1');

# 7. pg2redis.on_command_error = stop: N's EXEC-time error stops the stream
# with N+1 queued; N+1 goes once the stream restarts.
$node->safe_psql('postgres',
	"ALTER SYSTEM SET pg2redis.redis_wait_replicas = 0; ALTER SYSTEM SET pg2redis.on_command_error = 'stop'; SELECT pg_reload_conf()"
);
sleep(0.5);
$from = held_pair('INSERT INTO w VALUES (70)', 'INSERT INTO t VALUES (71)',
	'stop');
kill 'USR2', $proxy_pid;
wait_for_status($node, 'state', 'stopped', 60, 'stop: the stream stopped');
ok(poll_status($node, 'last_error', qr/rejected a command of rule .*WRONGTYPE.*the stream stopped/, 10),
	'stop: the status says why');
push @applied, 70;
sleep(0.5);
check_log('stop: N applied (but its refused command), N+1 not');
$node->safe_psql('postgres',
	"ALTER SYSTEM SET pg2redis.on_command_error = 'dead_letter'; SELECT pg_reload_conf()"
);
push @applied, 71;
wait_for_status($node, 'state', 'streaming', 60, 'stop: streaming again');
wait_for_redis($node, 60, 'stop: applied after the restart');
check_log('stop: resumed');

# Many blocks back to back, replies in the open: nothing lost or doubled.
$node->safe_psql('postgres',
	'INSERT INTO t SELECT g FROM generate_series(100, 2099) g');
my $sql = '';
$sql .= "INSERT INTO t VALUES ($_);\n" for 2100 .. 2399;
$node->safe_psql('postgres', $sql);
push @applied, 100 .. 2399;
wait_for_redis($node, 60, 'a stream of blocks: applied');
check_log('a stream of blocks');

# Blocks of 16 MB (pg2redis.batch_bytes) while the proxy reads nothing of
# what the worker sends: block N stays partly written when N+1's queue is
# appended behind it (its pieces point into N+1's own buffer).
kill 'WINCH', $proxy_pid;
$node->safe_psql('postgres',
	"INSERT INTO big SELECT g, repeat(md5(g::text), 30) FROM generate_series(1, 40000) g; INSERT INTO t VALUES (3000)"
);
sleep(2);
kill 'WINCH', $proxy_pid;
push @applied, 3000;
wait_for_redis($node, 120, 'large blocks: applied');
check_log('large blocks');
is($redis->call('GET', 'bigtotal'), 40000 * 40001 / 2,
	'large blocks: INCRBY applied exactly once');
is( $redis->call('GET', 'big:40000'),
	$node->safe_psql('postgres', "SELECT repeat(md5('40000'), 30)"),
	'large blocks: the last row applied');

$node->stop;
done_testing();
