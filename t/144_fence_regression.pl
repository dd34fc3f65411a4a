# Copyright (c) pg2redis developers
#
# A standalone Redis whose stream position went back (a failover to a
# replica that lacked the last writes, a restart without persistence) lost
# writes it had acknowledged: the worker says so, with the range that may be
# missing and what to do (streaming-core review, finding 10: it was counted
# and never reported).

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use Pg2RedisTest;
use PostgreSQL::Test::Utils;
use Test::More;

my $redis = start_redis();
my $node  = new_node('fenceback', redis => $redis);
$node->safe_psql('postgres', q{
	CREATE TABLE t (id int PRIMARY KEY);
	SELECT pg2redis_add_rule('t', 'insert', 'SET t:{id} 1');
	INSERT INTO t VALUES (1);
});
wait_for_redis($node);
my $old = $redis->call('GET', 'pg2redis:pg2redis:lsn');
$node->safe_psql('postgres', 'INSERT INTO t VALUES (2)');
wait_for_redis($node);
my $new = $redis->call('GET', 'pg2redis:pg2redis:lsn');
isnt($new, $old, 'the position moved');

# Redis "forgets" the last transaction, and the worker reconnects.
my $offset = -s $node->logfile;
$redis->call('SET', 'pg2redis:pg2redis:lsn', $old);
$redis->call('DEL', 't:2');
$redis->call('CLIENT', 'KILL', 'TYPE', 'normal', 'SKIPME', 'yes');
ok( poll_until(
		30,
		sub {
			scalar log_lines($node,
				qr/WARNING:  Redis lost writes it had acknowledged: its stream position went back from \Q$new\E to \Q$old\E/,
				$offset);
		}),
	'a WARNING names the range that went back');
ok(scalar log_lines($node, qr/HINT:  Run pg2redis_resync\(\) .*, or pg2redis_verify\(\) .* pg2redis_redrive\(\)/, $offset), 'and says what to do');
$node->safe_psql('postgres', 'INSERT INTO t VALUES (3)');
wait_for_redis($node);
is($redis->call('GET', 't:3'), '1', 'the stream goes on');
is($node->safe_psql('postgres',
		q{SELECT key FROM pg2redis_verify() WHERE problem = 'missing'}),
	't:2', 'pg2redis_verify() shows what was lost');

$node->stop;
done_testing();
