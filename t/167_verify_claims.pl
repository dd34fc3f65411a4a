# Copyright (c) pg2redis developers
#
# pg2redis_verify()'s orphans: a key that a checked rule's pattern matches
# but no row renders.  A key that a more specific pattern of another rule
# matches is that rule's (README), also when that rule cannot be checked:
# the counter of an INCRBY rule (item:count under item:{id}), the key of an
# update-only rule (item:{id}:qty), the keys of delete rules.  Those were
# reported as orphans, as were pg2redis's own stream positions under a rule
# whose key is nothing but a placeholder (SET {name} …), which matches every
# key.  Real orphans are still reported.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use Pg2RedisTest;
use PostgreSQL::Test::Utils;
use Test::More;

my $redis = start_redis();
my $node  = new_node('verify_claims', redis => $redis, flush_interval => '5ms');

$node->safe_psql('postgres', q{
	CREATE TABLE item (id int PRIMARY KEY, name text, qty int);
	ALTER TABLE item REPLICA IDENTITY FULL;
	SELECT pg2redis_add_rule('item', 'insert', ARRAY['HSET', 'item:{id}', '{pairs:id,name}']);
	SELECT pg2redis_add_rule('item', 'insert', 'INCRBY item:count 1');
	SELECT pg2redis_add_rule('item', 'insert', 'SET {name} {id}');
	SELECT pg2redis_add_rule('item', 'update', 'SET item:{id}:qty {qty}');
	SELECT pg2redis_add_rule('item', 'delete', 'DECRBY item:count 1');
	SELECT pg2redis_add_rule('item', 'delete', 'DEL item:{id} item:{id}:qty {name}');
	INSERT INTO item VALUES (1, 'n1', 1), (2, 'n2', 2), (3, 'n3', 3);
	UPDATE item SET qty = 10 WHERE id = 1;
});
wait_for_redis($node);
is($redis->call('GET', 'item:count') . ' ' . $redis->call('GET', 'item:1:qty'),
	'3 10', 'the counter and the update-only key are in Redis');

# verify_problems returns the problem rows, key and problem.
sub verify_problems
{
	return $node->safe_psql('postgres',
		q{SELECT coalesce(string_agg(key || ' ' || problem, ', ' ORDER BY key), '')
		    FROM pg2redis_verify() WHERE problem <> 'summary'});
}

is(verify_problems(), '',
	'keys of other rules (a counter, an update-only key) and pg2redis\'s positions are no orphans');

# real orphans still are
$redis->call('HSET', 'item:99', 'name', 'gone');
$redis->call('SET', 'n99', '99');
is(verify_problems(), 'item:99 orphan, n99 orphan', 'real orphans are reported');

$node->stop;
done_testing();
