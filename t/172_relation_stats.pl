# Copyright (c) pg2redis developers
#
# The pg2redis_relation_stats view: per mapped table, the changes decoded,
# the commands applied, the dead letters and when its commands were last
# applied; readable by pg2redis_monitor.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use Pg2RedisTest;
use PostgreSQL::Test::Utils;
use Test::More;

my $redis = start_redis();
my $node = new_node('relstats', redis => $redis, flush_interval => '5ms');
$node->safe_psql('postgres', q{
	CREATE TABLE a (id int PRIMARY KEY, v text);
	CREATE TABLE b (id int PRIMARY KEY, v text);
	CREATE TABLE quiet (id int PRIMARY KEY);
	SELECT pg2redis_add_rule('a', 'insert', 'SET a:{id} {v}');
	SELECT pg2redis_add_rule('a', 'insert', 'SADD a:all {id}');
	SELECT pg2redis_add_rule('a', 'update', 'SET a:{id} {v}');
	SELECT pg2redis_add_rule('b', 'insert', 'HSET b:{id} v {v}');
	SELECT pg2redis_add_rule('quiet', 'insert', 'SET q:{id} 1');
	INSERT INTO a SELECT g, 'x' FROM generate_series(1, 10) g;
	UPDATE a SET v = 'y' WHERE id <= 3;
	INSERT INTO b SELECT g, 'x' FROM generate_series(1, 4) g;
});
# a WRONGTYPE: b:5 is a string, so HSET b:5 is refused
$redis->call('SET', 'b:5', 'string');
$node->safe_psql('postgres', "INSERT INTO b VALUES (5, 'x')");
wait_for_redis($node);

my $stats = sub {
	$node->safe_psql('postgres', q{
		SELECT relation, changes, commands, dead_letters, last_applied IS NOT NULL
		  FROM pg2redis_relation_stats ORDER BY relation::text});
};
ok( poll_until(10, sub { $stats->() eq "a|13|23|0|t\nb|5|4|1|t" }),
	'per table: changes decoded, commands applied, dead letters, last applied')
  or diag($stats->());

$node->safe_psql('postgres', q{
	CREATE ROLE mon LOGIN IN ROLE pg2redis_monitor;
});
is($node->safe_psql('postgres',
		'SELECT count(*) FROM pg2redis_relation_stats', extra_params => [ '-U', 'mon' ]),
	'2', 'pg2redis_monitor reads it');
is($node->safe_psql('postgres',
		"SELECT sum(changes) = (SELECT changes FROM pg2redis_status()) FROM pg2redis_relation_stats"),
	't', 'the changes add up to pg2redis_status().changes');

$node->stop;
done_testing();
