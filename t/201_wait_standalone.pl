# Copyright (c) pg2redis developers
#
# pg2redis.redis_wait_replicas on a standalone Redis (issue 15 item 2; it
# was cluster-only as redis_cluster_wait_replicas): the replication slot is
# confirmed only past writes a replica holds (WAIT).  A replica cut off
# holds the stream back (pg2redis_wait() is false, the status says why),
# and it goes on once the replica is back.  And a position found behind
# what the worker confirmed while a block is in flight (a failover that
# lost the confirmed writes too) is reported with its LSN range: it was
# taken for the block in flight's doubt and not reported (streaming-core
# review, finding 10).

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use Pg2RedisTest;
use PostgreSQL::Test::Utils;
use Test::More;

my $primary = start_redis(name => 'primary');
my $replica = start_redis(name => 'replica',
	extra_args => [ '--replicaof', '127.0.0.1', $primary->port ]);
poll_until(30, sub { $replica->call('INFO', 'replication') =~ /master_link_status:up/ })
  or BAIL_OUT('the replica did not sync');

my $node = new_node('waitone', redis => $primary,
	conf => [ "pg2redis.redis_wait_replicas = 1", "pg2redis.redis_timeout = '1s'",
		"pg2redis.retry_max_backoff = '200ms'" ]);
$node->safe_psql('postgres', q{
	CREATE TABLE t (id int PRIMARY KEY);
	SELECT pg2redis_add_rule('t', 'insert', 'SET t:{id} 1');
	INSERT INTO t VALUES (1);
});
wait_for_redis($node);
like($primary->call('INFO', 'commandstats'), qr/cmdstat_wait:calls=[1-9]/,
	'a standalone primary is asked to WAIT for its replica');
is($replica->call('GET', 't:1'), '1', 'and the replica has the write');
my $before = $primary->call('GET', 'pg2redis:pg2redis:lsn');

# The replica is cut off: Redis applies the next write, but the stream
# does not count it as done.
$replica->pause;
$primary->call('CLIENT', 'KILL', 'TYPE', 'replica');
$node->safe_psql('postgres', 'INSERT INTO t VALUES (2)');
ok(poll_status($node, 'last_error',
		qr/replicated the stream's writes to 0 of the 1 replicas asked for .*pg2redis\.redis_wait_replicas/, 30),
	'without its replica, the status says the writes are not replicated');
is($node->safe_psql('postgres', q{SELECT pg2redis_wait('500ms')}), 'f',
	'and pg2redis_wait() does not claim them applied');
is($primary->call('GET', 't:2'), '1', 'although the primary has them');

# Redis loses the confirmed write too (its position back before row 1's
# block) while row 2's block is in flight: reported, with the range.
my $offset = -s $node->logfile;
$primary->call('SET', 'pg2redis:pg2redis:lsn', '0/1');
$primary->call('CLIENT', 'KILL', 'TYPE', 'normal', 'SKIPME', 'yes');
ok( poll_until(
		30,
		sub {
			scalar log_lines($node,
				qr/WARNING:  Redis lost writes it had acknowledged: its stream position went back from \Q$before\E to 0\/1/,
				$offset);
		}),
	'a position behind the confirmed one, a block in flight: a WARNING with the range');

$replica->resume;
ok($node->safe_psql('postgres', q{SELECT pg2redis_wait('30s')}) eq 't',
	'with the replica back, the stream goes on');
is($replica->call('GET', 't:2'), '1', 'and the replica has the write');

$node->stop;
done_testing();
