# Copyright (c) pg2redis developers
#
# rediss-sentinel:// (issue 15 item 1, the TLS form): sentinels and data
# nodes reached over TLS only, their certificates verified (full: they name
# the IP address the sentinels announce), a client certificate presented;
# the worker follows a SENTINEL FAILOVER over TLS, and pg2redis_redis()
# finds the primary through the sentinels over TLS too.  The data nodes
# have a password and the sentinels none: the URL's credentials go to both,
# and a sentinel's "no password configured" refusal is not an error.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use Pg2RedisTest;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);

my $dir = PostgreSQL::Test::Utils::tempdir();
make_test_certs($dir, san => 'IP:127.0.0.1,DNS:localhost');
# the data nodes have a password, the sentinels none: the URL's password,
# sent to the sentinels too, is refused by them as unneeded, and ignored
my $set = start_sentinel_set(replicas => 1, sentinels => 2, password => 'tlspw',
	tls => { ca => "$dir/ca.crt", cert => "$dir/server.crt", key => "$dir/server.key" });
like($set->{url}, qr/^rediss-sentinel:/, 'a TLS sentinel URL');

my $node = new_node(
	'stls',
	redis_url      => $set->{url},
	flush_interval => '5ms',
	wait_streaming => 1,
	conf           => [
		"pg2redis.redis_tls_ca_file = '$dir/ca.crt'",
		"pg2redis.redis_tls_cert_file = '$dir/client.crt'",
		"pg2redis.redis_tls_key_file = '$dir/client.key'",
		"pg2redis.redis_wait_replicas = 1",
		"pg2redis.retry_max_backoff = '500ms'"
	]);
$node->safe_psql('postgres', q{
	CREATE TABLE t (id int PRIMARY KEY, v text);
	SELECT pg2redis_add_rule('t', 'insert', 'SET t:{id} {v}');
	SELECT pg2redis_add_rule('t', 'insert', 'INCR t:count');
	INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 100) g;
});
wait_for_redis($node, 60, 'rows arrive over TLS');
my $primary = $set->{primary};
is($primary->call('GET', 't:42'), 'v42', 'the primary has them');
is($node->safe_psql('postgres', q{SELECT pg2redis_redis('GET', 't:1') #>> '{}'}),
	'v1', 'pg2redis_redis() finds the primary through the sentinels over TLS');

my $h = start_psql_script($node,
	join('', map { "INSERT INTO t VALUES ($_, 'v$_'); SELECT pg_sleep(0.01);\n" } 101 .. 300));
usleep(300_000);
ok(poll_until(30, sub { eval { $set->{sentinels}[0]->call('SENTINEL', 'FAILOVER', 'mymaster'); 1 } }, 0.2),
	'SENTINEL FAILOVER');
my $new;
ok(poll_until(30, sub {
	$new = sentinel_primary($set);
	$new && $new->port != $primary->port && $new->call('ROLE')->[0] eq 'master';
}, 0.1), 'a new primary');
$primary->call('REPLICAOF', '127.0.0.1', $new->{tls_port});
my ($rc, $out, $err) = finish_psql_script($h);
is($rc, 0, 'inserts through the failover') or diag($err);
wait_for_redis($node, 60, 'caught up over TLS on the new primary');
is($new->call('GET', 't:count'), '300', 'the counter is exact');
is($new->call('GET', 't:300'), 'v300', 'and the last row is there');
ok(scalar log_lines($node,
		qr/connected to Redis primary 127\.0\.0\.1:$new->{tls_port} of "mymaster" \(Sentinel at rediss-sentinel:/),
	'the worker connected to the new primary over TLS');

$node->stop;
done_testing();
