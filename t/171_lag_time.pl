# Copyright (c) pg2redis developers
#
# pg2redis_status().lag_time: 0 when Redis is current; while Redis is
# stalled with changes decoded and not applied, the time since the commit of
# the oldest of them, growing; 0 again once they are applied.  NULL while
# paused with WAL not yet decoded (nothing decoded waits).

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use Pg2RedisTest;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(sleep);

my $redis = start_redis();
my $node = new_node('lag', redis => $redis, flush_interval => '5ms',
	conf => ['pg2redis.redis_timeout = 30s']);
$node->safe_psql('postgres', q{
	CREATE TABLE t (id int PRIMARY KEY, v text);
	SELECT pg2redis_add_rule('t', 'insert', 'SET t:{id} {v}');
	INSERT INTO t VALUES (1, 'a');
});
wait_for_redis($node);

my $lag = sub {
	$node->safe_psql('postgres',
		"SELECT coalesce(extract(epoch FROM lag_time)::text, 'null') FROM pg2redis_status()");
};
is($lag->(), '0.000000', 'caught up: lag_time is 0');

$redis->pause;
$node->safe_psql('postgres', "INSERT INTO t VALUES (2, 'b')");
sleep(2.5);
my $l1 = $lag->();
cmp_ok($l1, '>=', 2, "Redis stalled: lag_time counts from the oldest commit not applied ($l1 s)");
sleep(1);
my $l2 = $lag->();
cmp_ok($l2, '>', $l1, "and grows ($l2 s)");
$redis->resume;
wait_for_redis($node);
is($lag->(), '0.000000', 'applied: lag_time is 0 again');

# paused: nothing is decoded, so no decoded change waits: NULL (lag_bytes
# says how much WAL waits)
$node->append_conf('postgresql.conf', 'pg2redis.enabled = off');
$node->reload;
poll_status($node, 'state', 'paused') or diag(status_text($node));
$node->safe_psql('postgres', "INSERT INTO t VALUES (3, 'c')");
is($lag->(), 'null', 'paused with WAL pending: lag_time is NULL');
$node->append_conf('postgresql.conf', 'pg2redis.enabled = on');
$node->reload;
wait_for_redis($node);
is($lag->(), '0.000000', 'resumed and applied: 0');

$node->stop;
done_testing();
