# Copyright (c) pg2redis developers
#
# pg2redis_redis() turns every kind of Redis reply into jsonb or a clear
# ERROR, never a crash.  The reply converter uses jansson, whose
# json_object() shares its name with PostgreSQL's SQL function json_object():
# a call that binds to the server's symbol at run time crashed the backend
# (and so restarted every session of the cluster) on any error reply.  After
# each reply checked here, the server must still be the same postmaster with
# no crash in its log.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use Pg2RedisTest;
use PostgreSQL::Test::Utils;
use Test::More;

my $redis = start_redis();
my $node  = new_node('replies', redis => $redis);
my $worker_pid = $node->safe_psql('postgres', 'SELECT pid FROM pg_stat_activity WHERE backend_type = $$pg2redis$$');

# reply SQL_ARGS returns (ok, stdout, stderr) of SELECT pg2redis_redis(ARGS).
sub reply
{
	my ($args) = @_;
	my ($ret, $out, $err) =
	  $node->psql('postgres', "SELECT pg2redis_redis($args)");
	return ($ret, $out, $err);
}

# returns_json SQL_ARGS EXPECTED_JSON NAME: the reply equals EXPECTED as jsonb.
sub returns_json
{
	my ($args, $want, $name) = @_;
	my ($ret, $out, $err) =
	  $node->psql('postgres',
		"SELECT pg2redis_redis($args) = \$j\$$want\$j\$::jsonb, pg2redis_redis($args)");
	is($ret, 0, "$name: no error") or diag($err);
	like($out, qr/^t\|/, "$name: reply is $want") or diag("got $out");
}

# Error replies come back as {"error": "..."}, each a different code path in
# Redis: an unknown command, a wrong type, a syntax error, a script error.
$redis->call('DEL', 'l');
$redis->call('LPUSH', 'l', 'x');
returns_json(q{'NOSUCHCMD'}, q[{"error": "ERR unknown command 'NOSUCHCMD', with args beginning with: "}],
	'unknown command');
my ($ret, $out, $err) = reply(q{'GET', 'l'});
is($ret, 0, 'WRONGTYPE: no error');
like($out, qr/^\{"error": "WRONGTYPE /, 'WRONGTYPE comes back as {"error": ...}');
($ret, $out) = reply(q{'SET', 'k'});
like($out, qr/^\{"error": "ERR wrong number of arguments/, 'arity error as {"error": ...}');

# The other types: status, integer, bulk string, nil, arrays nested with nil,
# integers and errors inside, an empty array.
returns_json(q{'PING'}, '"PONG"', 'status reply');
returns_json(q{'SET', 'k', 'v'}, '"OK"', 'status reply OK');
returns_json(q{'INCRBY', 'n', '-9223372036854775807'}, '-9223372036854775807', 'integer reply');
returns_json(q{'GET', 'k'}, '"v"', 'bulk string');
returns_json(q{'GET', 'no such key'}, 'null', 'nil');
returns_json(q{'MGET', 'k', 'no such key', 'k'}, '["v", null, "v"]', 'array with nil');
returns_json(q{'LRANGE', 'no such key', '0', '-1'}, '[]', 'empty array');
returns_json(
	q{'EVAL', 'return {1, {2, {"three", {}}}, redis.error_reply("boom"), false}', '0'},
	'[1, [2, ["three", []]], {"error": "ERR boom"}, null]',
	'nested arrays with an error and nil inside');
$redis->call('XADD', 's', '1-1', 'f', 'v');
returns_json(q{'XRANGE', 's', '-', '+'}, '[["1-1", ["f", "v"]]]', 'stream entries (nested)');

# Unicode passes; bytes that are not UTF-8 are a clear ERROR, in a bulk
# string and in an error reply alike.
returns_json(q{'ECHO', 'Grüße 🚀'}, '"Grüße 🚀"', 'unicode bulk string');
$redis->call('SET', 'bin', "a\xff\xfeb");
($ret, $out, $err) = reply(q{'GET', 'bin'});
isnt($ret, 0, 'a non-UTF-8 bulk string is an error');
like($err, qr/ERROR:  the Redis reply is not valid UTF-8/, '... saying why');
($ret, $out, $err) = reply(q{'EVAL', 'return redis.error_reply(redis.call("GET", KEYS[1]))', '1', 'bin'});
isnt($ret, 0, 'a non-UTF-8 error reply is an error');
like($err, qr/ERROR:  the Redis reply is not valid UTF-8/, '... saying why');

# Deeper than the reply reader allows: a clean ERROR.
($ret, $out, $err) = reply(q{'EVAL', 'return {{{{{{{{{{1}}}}}}}}}}', '0'});
isnt($ret, 0, 'a reply nested 10 deep is an error');
like($err, qr/ERROR:  /, '... an ERROR, not a crash');

# Nothing crashed: the same worker still runs (a backend crash restarts
# every process, the worker too), and the log has no crash.
is($node->safe_psql('postgres', 'SELECT pid FROM pg_stat_activity WHERE backend_type = $$pg2redis$$'),
	$worker_pid, 'the worker was never restarted: no backend crashed');
unlike(slurp_file($node->logfile), qr/terminated by signal|server process .* was terminated/,
	'no crash in the server log');

$node->stop;
done_testing();
