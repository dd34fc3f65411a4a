# Copyright (c) pg2redis developers
#
# The held EXEC when Redis refuses MULTI (review of branch held-exec).  An
# ACL that takes MULTI away from the worker's user makes Redis refuse the
# MULTI of block N and of block N+1, queued behind it: the commands that
# follow each MULTI then run at once, outside any transaction, the fence
# SET included, so that Redis's stream position is N+1's although N+1's
# EXEC was never sent.  After the reconnect the fence says N+1 is applied:
# it must not be sent again (its INCRBY and RPUSH would run twice).  Before
# the held EXEC, N+1 was never written before N's outcome, and each block
# ran once (not atomically: the ACL is the operator's).
#
# The proxy is t/236's: SIGUSR1 holds Redis's replies, SIGUSR2 releases them.
#
# Two more cases of the review guard what it found sound:
#   - an EXEC-time error (WRONGTYPE) of a command of the held block: its dead
#     letter names that command, its row and its transaction (the indexes
#     of the held block's commands follow the block in flight's on the link);
#   - pg2redis.redis_url changed (reload) while N+1 is queued behind N: the
#     links are dropped with N+1's MULTI, each block applied once, in order.

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

my $redis = start_redis(name => 'heldmulti');
$redis->call('ACL', 'SETUSER', 'app', 'on', '>app-secret', '~*', '&*',
	'+@all');

# The proxy (HoldProxy.pm): worker -> Redis forwarded and logged to
# $uplog, Redis -> worker forwarded, or kept while held.
my $proxy = start_hold_proxy($redis->port);
my ($proxy_port, $proxy_pid, $uplog) = @$proxy{qw(port pid log)};

my $node = proxy_node('heldmulti', $proxy, auth => 'app:app-secret@');

$node->safe_psql(
	'postgres', q{
	CREATE TABLE t (id int PRIMARY KEY);
	SELECT pg2redis_add_rule('t', 'insert', 'INCRBY total {id}');
	SELECT pg2redis_add_rule('t', 'insert', 'RPUSH log {id}');
	CREATE TABLE w (id int PRIMARY KEY);
	SELECT pg2redis_add_rule('w', 'insert', 'SET w:{id} x');
	SELECT pg2redis_add_rule('w', 'insert', 'LPUSH w:{id} y');      -- WRONGTYPE
	SELECT pg2redis_add_rule('w', 'insert', 'INCRBY total {id}');
	SELECT pg2redis_add_rule('w', 'insert', 'RPUSH log {id}');
});
wait_for_redis($node, 60, 'rules in place');
$node->safe_psql('postgres', 'INSERT INTO t VALUES (1)');
wait_for_redis($node, 60, 'first row applied');

# sent counts the commands named in what the worker wrote after byte $from.
sub sent { return proxy_sent($proxy, @_); }

$redis->call('ACL', 'SETUSER', 'app', '-multi');
my $from = -s $uplog;
kill 'USR1', $proxy_pid;
sleep(0.1);
$node->safe_psql('postgres', 'INSERT INTO t VALUES (2)');
ok(poll_until(30, sub { sent($from, 'EXEC') >= 1 }), 'block N sent');
$node->safe_psql('postgres', 'INSERT INTO t VALUES (3)');
ok(poll_until(20, sub { sent($from, 'MULTI') >= 2 }),
	"block N+1's MULTI, commands and fence written behind N");
sleep(0.2);
is(sent($from, 'EXEC'), 1, "N+1's EXEC held back");
# Redis ran both blocks' commands outside a transaction, fences included
is($redis->call('GET', 'total'), 6, 'Redis ran N and N+1 without MULTI');
$redis->call('ACL', 'SETUSER', 'app', '+multi');
kill 'USR2', $proxy_pid;
ok( poll_status($node, 'last_error', qr/refused MULTI/, 30),
	'the worker saw MULTI refused');
wait_for_status($node, 'state', 'streaming', 60, 'streaming again');
$node->safe_psql('postgres', 'INSERT INTO t VALUES (4)');
wait_for_redis($node, 60, 'applied after the reconnect');
is($redis->call('GET', 'total'), 10, 'INCRBY applied once each');
my $log = $redis->call('LRANGE', 'log', 0, -1);
is(join(',', ref $log ? @$log : ()), '1,2,3,4',
	'every transaction once, in order: N+1 not sent again');

# held_pair sends $a (block N) with Redis's replies held back, then $b
# (block N+1), waits for N+1's queue to reach Redis, and releases the
# replies after $between ran.
sub held_pair
{
	my ($a, $b, $what, $between) = @_;
	my $from = -s $uplog;
	kill 'USR1', $proxy_pid;
	sleep(0.1);
	$node->safe_psql('postgres', $a);
	ok(poll_until(30, sub { sent($from, 'EXEC') >= 1 }), "$what: N sent");
	$node->safe_psql('postgres', $b);
	ok(poll_until(20, sub { sent($from, 'MULTI') >= 2 }),
		"$what: N+1 queued behind N");
	is(sent($from, 'EXEC'), 1, "$what: N+1's EXEC held back");
	$between->() if $between;
	kill 'USR2', $proxy_pid;
}

# An EXEC-time error in the held block: its dead letter.
$node->safe_psql('postgres', 'INSERT INTO w VALUES (6)');
wait_for_redis($node, 60, 'w:6 applied');
held_pair('INSERT INTO t VALUES (7)',
	'INSERT INTO w VALUES (8)', 'dead letter');
wait_for_redis($node, 60, 'dead letter: applied');
ok( $node->poll_query_until(
		'postgres',
		"SELECT count(*) = 1 FROM pg2redis.dead_letters WHERE command[2] = 'w:8'"),
	'dead letter: recorded');
is($redis->call('GET', 'total'), 10 + 6 + 7 + 8, 'dead letter: INCRBY once each');
$log = $redis->call('LRANGE', 'log', 0, -1);
is(join(',', ref $log ? @$log : ()), '1,2,3,4,6,7,8', 'dead letter: order');
is( $node->safe_psql(
		'postgres',
		"SELECT command[1] || ' ' || command[2] || ' ' || relation::text || ' ' || (key = ARRAY['8'])::text || ' ' || (error LIKE 'WRONGTYPE%')::text || ' ' || (xid = (SELECT xmin FROM w WHERE id = 8))::text FROM pg2redis.dead_letters WHERE command[2] = 'w:8'"
	),
	'LPUSH w:8 w true true true',
	"dead letter: the held block's refused command, its row, relation and transaction");
is( $node->safe_psql(
		'postgres',
		"SELECT count(*) FROM pg2redis.dead_letters WHERE command[2] IN ('w:6', 'w:8')"),
	2, 'dead letter: one per refused command, none misattributed');

# pg2redis.redis_url changed while N+1 is queued behind N.
held_pair('INSERT INTO t VALUES (9)', 'INSERT INTO t VALUES (11)', 'reload',
	sub {
		$node->safe_psql('postgres',
			"ALTER SYSTEM SET pg2redis.redis_url = 'redis://app:app-secret\@localhost:$proxy_port/0'; SELECT pg_reload_conf()"
		);
		ok($node->poll_query_until('postgres',
			"SELECT current_setting('pg2redis.redis_url') LIKE '%localhost%'"),
			'reload: the new URL is read');
		sleep(0.3);
	});
wait_for_redis($node, 60, 'reload: applied');
is($redis->call('GET', 'total'), 31 + 9 + 11, 'reload: INCRBY once each');
$log = $redis->call('LRANGE', 'log', 0, -1);
is(join(',', ref $log ? @$log : ()), '1,2,3,4,6,7,8,9,11', 'reload: order');

$node->stop;
done_testing();
