# Copyright (c) pg2redis developers
#
# pg2redis_verify() compares a string value byte for byte.  A value in
# Redis that is not valid text (or holds a NUL) is shown as \x and its hex
# digits, and was compared in that form: a row whose text is literally
# \x4100 matched a Redis value of the two bytes A and NUL, and drift that
# wrote binary values (here by another writer) was reported as no problem.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use Pg2RedisTest;
use PostgreSQL::Test::Utils;
use Test::More;

my $redis = start_redis();
my $node  = new_node('verify_binary', redis => $redis, flush_interval => '5ms');

$node->safe_psql('postgres', q{
	CREATE TABLE item (id int PRIMARY KEY, name text);
	SELECT pg2redis_add_rule('item', 'insert', 'SET item:{id} {name}');
	INSERT INTO item VALUES (1, '\x4100'), (2, '\xff'), (3, 'plain');
});
wait_for_redis($node);

my $verify = q{
	SELECT coalesce(key, '') || '|' || problem || '|' || coalesce(found, '')
	  FROM pg2redis_verify() WHERE problem <> 'summary' ORDER BY key};
is($node->safe_psql('postgres', $verify), '', 'no problem while Redis agrees');

# drift: another writer stores the bytes the hex names
$redis->call('SET', 'item:1', "A\0");
$redis->call('SET', 'item:2', "\xff");
is( $node->safe_psql('postgres', $verify),
	"item:1|differing|\\x4100\nitem:2|differing|\\xff",
	'binary values that only print like the row are reported');

$node->stop;
done_testing();
