# Copyright (c) pg2redis developers
#
# Redriving the dead letters of a partitioned table with SELECT granted on
# the partitioned table only, as PostgreSQL's privilege model has it (its
# partitions' rows are read through it; pg2redis_snapshot() of it needs
# nothing more).  Dead letters name the partition a change was decoded for;
# redriving them must not require SELECT on each partition, whether asked
# by dead letter id or by the partitioned table.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use Pg2RedisTest;
use PostgreSQL::Test::Utils;
use Test::More;

my $redis = start_redis(name => 'redrive_pgrant');
my $node = new_node('redrive_pgrant', redis => $redis, flush_interval => '5ms');

$node->safe_psql(
	'postgres', q{
	CREATE TABLE p (id int, region text, v text, PRIMARY KEY (id, region))
	    PARTITION BY LIST (region);
	CREATE TABLE p_eu PARTITION OF p FOR VALUES IN ('eu');
	CREATE TABLE p_us PARTITION OF p FOR VALUES IN ('us');
	SELECT pg2redis_add_rule('p', 'insert', 'HSET p:{id}:{region} {pairs:*}');
	CREATE ROLE adm LOGIN IN ROLE pg2redis_admin;
	GRANT SELECT ON p TO adm;
});
$redis->call('SET', $_, 'x') foreach ('p:1:eu', 'p:2:us');
$node->safe_psql('postgres',
	"INSERT INTO p VALUES (1, 'eu', 'a'), (2, 'us', 'b'), (3, 'us', 'c')");
wait_for_redis($node);
ok( $node->poll_query_until(
		'postgres',
		"SELECT count(*) = 2 FROM pg2redis.dead_letters WHERE key IS NOT NULL"),
	'two dead letters with keys');
$redis->call('DEL', 'p:1:eu', 'p:2:us');

my $eu = $node->safe_psql('postgres',
	"SELECT id FROM pg2redis.dead_letters WHERE relation = 'p_eu'::regclass");
my ($ret, $out, $err) = $node->psql(
	'postgres',
	"SELECT keys FROM pg2redis_redrive(ARRAY[$eu]::bigint[])",
	extra_params => [ '-U', 'adm' ]);
is($ret, 0, 'a role with SELECT on the partitioned table redrives a partition\'s dead letter')
  or diag($err);
($ret, $out, $err) = $node->psql(
	'postgres',
	"SELECT string_agg(format('%s %s', relation, keys), ', ') FROM pg2redis_redrive(relation => 'p')",
	extra_params => [ '-U', 'adm' ]);
is($ret, 0, 'and the dead letters of the partitioned table') or diag($err);
ok( $node->poll_query_until(
		'postgres', "SELECT count(*) > 0 AND bool_and(state = 'done') FROM pg2redis.snapshots"),
	'the requests are done');
is_deeply(
	[ map { redis_hash($redis, $_) } ('p:1:eu', 'p:2:us') ],
	[ { id => 1, region => 'eu', v => 'a' }, { id => 2, region => 'us', v => 'b' } ],
	'p redriven');

# a role with SELECT on neither is still refused
$node->safe_psql('postgres',
	"CREATE ROLE adm2 LOGIN IN ROLE pg2redis_admin; UPDATE pg2redis.dead_letters SET redriven_at = NULL");
($ret, $out, $err) = $node->psql(
	'postgres',
	"SELECT keys FROM pg2redis_redrive(ARRAY[$eu]::bigint[])",
	extra_params => [ '-U', 'adm2' ]);
isnt($ret, 0, 'a role without SELECT on the table or its parent is refused');
like($err, qr/permission denied/, '... with permission denied');

$node->stop;
$redis->stop;
done_testing();
