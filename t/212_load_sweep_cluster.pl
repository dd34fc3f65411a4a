# Copyright (c) pg2redis developers
#
# The sweep after a reload on a Redis Cluster (issue 15 item 3): orphans of
# the table's pattern spread over every primary's hash slots are left alone
# by the first start, and removed, on every primary, by the load of a new
# slot over another server's stream (a failover is t/210).  The stream's
# origin is one key of the cluster.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use Pg2RedisTest;
use PostgreSQL::Test::Utils;
use Test::More;

my @primaries = start_redis_cluster(primaries => 3);
my $client = Pg2RedisTest::ClusterClient->new(@primaries);
my $url = sprintf('redis-cluster://127.0.0.1:%d', $primaries[0]->port);

# orphans in every primary's slots
$client->call('HSET', "t:$_", 'v', 'before') foreach (1001 .. 1030);
my %on;
$on{ $client->node_of("t:$_")->port } = 1 foreach (1001 .. 1030);
is(scalar(keys %on), 3, 'the orphans are spread over the 3 primaries');

my $node = new_node('sweepcl', redis_url => $url, flush_interval => '5ms',
	create_extension => 0);
$node->safe_psql('postgres', q{
	CREATE EXTENSION pg2redis;
	CREATE TABLE t (id int PRIMARY KEY, v text);
	INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 100) g;
	SELECT pg2redis_add_rule('t', op, ARRAY['HSET', 't:{id}', '{pairs:*}'])
	  FROM unnest(ARRAY['insert', 'update']) op;
	SELECT pg2redis_add_rule('t', 'delete', 'DEL t:{id}');
});
wait_for_status($node, 'state', 'streaming', 60, 'the worker streams to the cluster');
wait_for_redis($node);
is(scalar(grep { $client->call('EXISTS', "t:$_") } 1001 .. 1030), 30,
	'a first start leaves the keys that were there alone');
my $sysid = $node->safe_psql('postgres',
	'SELECT system_identifier FROM pg_control_system()');
is($client->call('GET', 'pg2redis:pg2redis:origin'), "$sysid:1",
	'the cluster holds the stream\'s origin');

# Redis follows another system's stream (as after a failover, or a server
# restored with its slot): the slot is made again, and the load swept.
my $offset = -s $node->logfile;
$client->call('SET', 'pg2redis:pg2redis:origin', '12345:1');
$node->restart;
ok(poll_until(60, sub {
	$node->log_contains('replication slot "pg2redis" created', $offset)
}), 'the slot is made again');
wait_for_status($node, 'state', 'streaming', 60, 'streaming again');
$node->safe_psql('postgres', "DELETE FROM t WHERE id <= 10");
wait_for_redis($node);
check_table_in_redis($node, $client, 't', 't',
	'the cluster equals the table: the orphans are gone from every primary');
ok($node->log_contains(qr/the sweep after the initial load removed 30 keys/, $offset),
	'the sweep logs its count');
is($client->call('GET', 'pg2redis:pg2redis:origin'), "$sysid:1",
	'the origin is this server again');

$node->stop;
done_testing();
