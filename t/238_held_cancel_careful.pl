# Copyright (c) pg2redis developers
#
# The held EXEC and an ERROR that leaves the wait for the block in flight
# (review of branch held-exec).  A transaction decoded carefully (after an
# ERROR while decoding it, see t/134) maps each rule in a subtransaction of
# its own: an ERROR raised while the sender waits inside a rule, here a
# query cancel (pg_cancel_backend) while the closed part waits for the part
# in flight, becomes that rule's dead letter and decoding goes on.  The
# waiting part was already queued behind the part in flight (held_write):
# the blocks decoded next are appended to it, and its held EXEC, once the
# part in flight is applied, must not carry only what was queued before.
#
# pg2redis.max_transaction_commands = 2 cuts a transaction of seven rows
# (one RPUSH each) into parts.  A proxy holds Redis's replies from the first
# RPUSH it sees on a connection (SIGUSR1 arms it, SIGUSR2 releases).
#   1. rows 1-7 in one transaction: part {1,2} in flight, {3,4} queued
#      behind it; a cancel ends the worker (ERROR while decoding): the
#      transaction is decoded carefully after the restart;
#   2. after the restart, part {3,4} in flight, {5,6} queued behind it,
#      row 7's rule waiting: a cancel is its dead letter; row 8, committed
#      before the restart, is decoded next, into the block being built;
#   3. the replies released: Redis has every row but 7, once, in order, and
#      the worker is still there.  On held-exec the queued part {5,6} was
#      released with what it held before row 8 was appended to it (row 8
#      lost), and freeing its groups, cut for two commands, read past them:
#      the worker died of a segmentation fault, restarting every session.

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

my $redis = start_redis(name => 'heldcancel');

# The proxy (HoldProxy.pm): worker -> Redis forwarded and logged to
# $uplog, Redis -> worker forwarded, or kept while held.
my $proxy = start_hold_proxy($redis->port, arm_pattern => qr/RPUSH/,
	release_on_connect => 1);
my ($proxy_port, $proxy_pid, $uplog) = @$proxy{qw(port pid log)};

my $node = proxy_node('heldcancel', $proxy, flush_interval => '3s',
	conf => ['pg2redis.max_transaction_commands = 2']);
$node->safe_psql(
	'postgres', q{
	CREATE TABLE t (id int PRIMARY KEY);
	SELECT pg2redis_add_rule('t', 'insert', 'RPUSH log {id}');
});
wait_for_redis($node, 60, 'rules in place');

# sent counts the commands named in what the worker wrote after byte $from.
sub sent { return proxy_sent($proxy, @_); }

# 1. The first cancel ends the worker inside the transaction's decoding.
my $from = -s $uplog;
kill 'USR1', $proxy_pid;
sleep(0.1);
$node->safe_psql('postgres',
	'INSERT INTO t SELECT g FROM generate_series(1, 7) g');
ok(poll_until(30, sub { sent($from, 'MULTI') >= 2 }),
	'1: part {3,4} queued behind part {1,2}');
my $pid = worker_pid($node);
$from = -s $uplog;
kill 'USR1', $proxy_pid;    # armed again for the next connection
$node->safe_psql('postgres', "SELECT pg_cancel_backend($pid)");
# row 8 commits before the restarted worker decodes row 7: it is decoded
# right after the first transaction, into the block being built
$node->safe_psql('postgres', 'INSERT INTO t VALUES (8)');
ok(poll_until(30, sub { (worker_pid($node) // $pid) != $pid }),
	'1: the worker restarted');

# 2. The second cancel, inside row 7's rule: a dead letter.
ok(poll_until(60, sub { sent($from, 'MULTI') >= 2 }),
	'2: part {5,6} queued behind part {3,4} after the restart');
sleep(0.3);
$pid = worker_pid($node);
$node->safe_psql('postgres', "SELECT pg_cancel_backend($pid)");
sleep(0.5);
is(worker_pid($node), $pid, '2: the worker goes on');
sleep(0.5);

# 3. Replies released.
kill 'USR2', $proxy_pid;
wait_for_redis($node, 60, '3: applied');
ok( $node->poll_query_until(
		'postgres',
		"SELECT count(*) = 1 FROM pg2redis.dead_letters WHERE error LIKE '%cancel%' AND key = ARRAY['7']"),
	"3: the cancel is row 7's dead letter");
my $log = $redis->call('LRANGE', 'log', 0, -1);
is(join(',', ref $log ? @$log : ()), '1,2,3,4,5,6,8',
	'3: every row but the cancelled one, once, in order');
is($node->safe_psql('postgres', 'SELECT worker_pid FROM pg2redis_status()'),
	$pid, '3: the worker did not crash');
# (the dead letter is written once the block is settled)


$node->stop;
done_testing();
