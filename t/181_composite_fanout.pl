# Copyright (c) pg2redis developers
#
# A column of a composite type whose attributes are composites with many
# attributes, and so on: the worker looked up every nested attribute's
# type when it built the table's map, 32^4 (a million) for the column
# below, 300 MB and seconds, and 100 million for one level more, which no
# worker survives.  The table's owner needs no pg2redis role: adding the
# column to a table that has a rule is enough.  Now a column's types are
# looked up ahead only up to a budget, the rest as values have them; the
# {json} of such a value is still what to_jsonb() writes.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use Pg2RedisTest;
use PostgreSQL::Test::Utils;
use Test::More;

my $redis = start_redis();
my $node  = new_node('composite_fanout', redis => $redis,
	flush_interval => '5ms');

my $fields = sub {
	my ($type) = @_;
	return join(', ', map { "f$_ $type" } 1 .. 32);
};
$node->safe_psql('postgres', qq{
	CREATE ROLE bob LOGIN;
	GRANT CREATE ON SCHEMA public TO bob;
	SET ROLE bob;
	CREATE TABLE item (id int PRIMARY KEY, name text);
	CREATE TYPE c0 AS (a int, t timestamptz);
	CREATE TYPE c1 AS (${\ $fields->('c0')});
	CREATE TYPE c2 AS (${\ $fields->('c1')});
	CREATE TYPE c3 AS (${\ $fields->('c2')});
	CREATE TYPE c4 AS (${\ $fields->('c3')});
	RESET ROLE;
	SELECT pg2redis_add_rule('item', 'insert', 'SET item:{id} {name}');
	SELECT pg2redis_add_rule('item', 'insert', 'SET json:{id} {json:*}');
	INSERT INTO item VALUES (0, 'zero');
});
wait_for_redis($node);
my $pid = worker_pid($node);
ok(reset_peak_memory($pid), 'peak memory reset');
my %before = process_memory($pid);

$node->safe_psql('postgres', q{
	SET ROLE bob;
	ALTER TABLE item ADD COLUMN evil c4;
	INSERT INTO item VALUES (1, 'one', NULL);
	INSERT INTO item VALUES (2, 'two', jsonb_populate_record(NULL::c4,
	  '{"f1": {"f2": {"f3": {"f4": {"a": 7, "t": "2020-01-02 03:04:05+00"}}}},
	    "f32": {"f1": {"f32": {"f9": {"a": 8}}}, "f5": null}}'));
});
wait_for_redis($node, 120);
my %after = process_memory($pid);
my $grew = ($after{VmHWM} // 0) - ($before{VmRSS} // 0);
note "worker peak RSS $after{VmHWM} kB, was $before{VmRSS} kB before";
cmp_ok($grew, '<', 40 * 1024, 'the worker\'s peak memory grew by < 40 MB');
is($redis->call('GET', 'item:1') . ' ' . $redis->call('GET', 'item:2'),
	'one two', 'the rows are in Redis');
is( $node->safe_psql(
		'postgres', q{
	SELECT count(*) FROM item i
	 WHERE (pg2redis_redis('GET', 'json:' || i.id) #>> '{}')::jsonb
	       = to_jsonb(i) AND i.id > 0}),
	'2',
	'{json:*} of the nested values is what to_jsonb() writes');

$node->stop;
done_testing();
