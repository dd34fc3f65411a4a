# Copyright (c) pg2redis developers
#
# Dead letters that can be acted on: a NOTIFY on channel
# pg2redis_dead_letter (payload: how many were recorded) when the worker
# records some, and pg2redis.dead_letter_retention pruning older ones.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use Pg2RedisTest;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);

my $redis = start_redis();
my $node = new_node('deadletters', redis => $redis, flush_interval => '5ms');
$node->safe_psql('postgres', q{
	CREATE TABLE t (id int PRIMARY KEY, v text);
	SELECT pg2redis_add_rule('t', 'insert', 'HSET t:{id} v {v}');
	-- an old dead letter, written by hand
	INSERT INTO pg2redis.dead_letters (lsn, xid, relation, op, command, error, created_at)
	    VALUES ('0/1', '1', 't', 'insert', '{X}', 'old', now() - interval '3 days');
});

# a listener sees the NOTIFY of the worker
my $listener = $node->background_psql('postgres');
$listener->query_safe('LISTEN pg2redis_dead_letter');

# two WRONGTYPE refusals: t:1 and t:2 are strings
$redis->call('SET', 't:1', 'x');
$redis->call('SET', 't:2', 'x');
$node->safe_psql('postgres', "INSERT INTO t VALUES (1, 'a'), (2, 'b')");
wait_for_redis($node);
ok( $node->poll_query_until('postgres',
		"SELECT count(*) = 3 FROM pg2redis.dead_letters"),
	'the refused commands are recorded');
my $got = '';
my $t0 = time();
while (time() - $t0 < 10 && $got !~ /pg2redis_dead_letter/)
{
	# psql prints notifications after the next command
	$got .= $listener->query_safe('SELECT 1') // '';
	$got .= $listener->{stderr} // '';
	$got .= $listener->{stdout} // '';
}
like($got, qr/Asynchronous notification "pg2redis_dead_letter" with payload "2" received/,
	'a NOTIFY on pg2redis_dead_letter says how many were recorded');
$listener->quit;

# retention: the 3-day-old one goes, the new ones stay
$node->append_conf('postgresql.conf', "pg2redis.dead_letter_retention = '1d'");
$node->reload;
ok( $node->poll_query_until('postgres',
		"SELECT count(*) = 2 AND bool_and(error <> 'old') FROM pg2redis.dead_letters"),
	'dead letters older than pg2redis.dead_letter_retention are pruned, newer ones kept')
  or diag($node->safe_psql('postgres', 'SELECT id, error, created_at FROM pg2redis.dead_letters'));

$node->stop;
done_testing();
