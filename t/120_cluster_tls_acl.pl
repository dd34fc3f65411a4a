# Copyright (c) pg2redis developers
#
# Cluster mode over TLS with an ACL user: a 3-primary Redis Cluster whose
# nodes announce TLS ports (tls-cluster yes), certificates from a test CA
# made here (the slot map names nodes by IP address: the certificate holds
# IP:127.0.0.1 as well as DNS:localhost, and pg2redis.redis_tls_verify =
# full checks both), and the same limited ACL user on every node.  Rows
# arrive on every primary; denied commands are dead letters; a wrong CA is
# refused with a clear error and nothing is lost; on_command_error = stop
# stops under load and resumes after a reload; the password never shows.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Pg2RedisTest;
use Test::More;

my $dir = PostgreSQL::Test::Utils::tempdir();

make_test_certs($dir, san => 'DNS:localhost,IP:127.0.0.1');

my @primaries = start_redis_cluster(
	primaries => 3,
	tls => { ca => "$dir/ca.crt", cert => "$dir/server.crt", key => "$dir/server.key" });
my $client = Pg2RedisTest::ClusterClient->new(@primaries);
# (the worker only speaks TLS here: the cluster tells TLS clients TLS ports)

# the same user on every node: MULTI/EXEC/GET/SET/SADD on t:* and the
# positions, and the slot map
foreach my $p (@primaries)
{
	$p->call('ACL', 'SETUSER', 'app', 'on', '>app-secret', 'resetkeys',
		'~t:*', '~pg2redis:*', '-@all', '+multi', '+exec', '+get', '+set',
		'+sadd', '+ping', '+cluster|slots');
}

my $node = new_node(
	'tlsacl',
	redis_url => 'rediss-cluster://app:app-secret@localhost:' . $primaries[0]{tls_port},
	flush_interval => '5ms',
	conf => [
		"pg2redis.redis_tls_ca_file = '$dir/ca.crt'",
		"pg2redis.retry_max_backoff = '500ms'"
	]);
wait_for_status($node, 'state', 'streaming', 60,
	'streaming to a TLS cluster as an ACL user, certificates verified');

$node->safe_psql(
	'postgres', q{
	CREATE TABLE t (id int PRIMARY KEY, v text);
	SELECT pg2redis_add_rule('t', 'insert', 'SET t:{id} {v}');
	SELECT pg2redis_add_rule('t', 'insert', 'SADD other:{id} {v}');   -- key outside ~t:*
	SELECT pg2redis_add_rule('t', 'insert', 'HSET t:h:{id} v {v}');    -- command not granted
	INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 300) g;
});
wait_for_redis($node, 60, 'rows arrive over TLS');
my @got = $client->pipeline(map { [ 'GET', "t:$_" ] } 1 .. 300);
is(scalar(grep { ($got[ $_ - 1 ] // '') eq "v$_" } 1 .. 300), 300, 'every row is in the cluster');
my %nodes_used = map { $client->node_of("t:$_")->port => 1 } 1 .. 300;
is(scalar(keys %nodes_used), 3, 'the rows are spread over the three primaries');
ok( $node->poll_query_until('postgres',
		"SELECT count(*) = 600 FROM pg2redis.dead_letters WHERE error LIKE 'NOPERM%'"),
	'each denied command (2 per row) is a dead letter with NOPERM');
is(scalar(grep { $_ ne '0' } $client->pipeline(map { [ 'EXISTS', "other:$_" ] } 1 .. 300)),
	0, 'nothing was written outside the key patterns');
is($node->safe_psql('postgres', "SELECT pg2redis_redis('GET', 't:77')"),
	'"v77"', 'pg2redis_redis() reaches the right node over TLS as the ACL user');

# a CA that did not sign the nodes' certificates
$node->append_conf('postgresql.conf', "pg2redis.redis_tls_ca_file = '$dir/other.crt'\n");
$node->reload;
ok(poll_status($node, 'last_error', qr/certificate does not verify/, 30),
	'a certificate from another CA is refused, and last_error says so');
$node->safe_psql('postgres',
	"INSERT INTO t SELECT g, 'w' || g FROM generate_series(301, 400) g");
$node->append_conf('postgresql.conf', "pg2redis.redis_tls_ca_file = '$dir/ca.crt'\n");
$node->reload;
wait_for_redis($node, 60, 'the right CA again: the stream catches up');
@got = $client->pipeline(map { [ 'GET', "t:$_" ] } 301 .. 400);
is(scalar(grep { ($got[ $_ - 301 ] // '') eq "w$_" } 301 .. 400), 100,
	'nothing committed while TLS failed is lost');

# on_command_error = stop under load: batches of 50 commands, so the decoder
# waits for room while the rejected batch is answered by the primaries; the
# stream stops, the dead letter is recorded, and after a reload the stream
# goes on from its positions.
$node->safe_psql('postgres', q{
	DELETE FROM pg2redis.rules
	 WHERE relation = 't'::regclass AND command[1] IN ('SADD', 'HSET');
	SELECT pg2redis_add_rule('t', 'insert', 'SADD t:ids {id}');
});
$client->call('SET', 't:ids', 'not a set');
$node->append_conf('postgresql.conf',
	"pg2redis.on_command_error = stop\npg2redis.batch_size = 50\n");
$node->reload;
$node->safe_psql('postgres', 'SELECT pg_sleep(0.5)');
$node->safe_psql('postgres',
	join('', map { "INSERT INTO t SELECT g, 'x' || g FROM generate_series($_, $_ + 19) g;\n" }
		  map { 401 + 20 * $_ } 0 .. 29));
wait_for_status($node, 'state', 'stopped', 30, 'a rejected command stops the stream');
ok( $node->poll_query_until('postgres',
		"SELECT count(*) >= 1 FROM pg2redis.dead_letters WHERE error LIKE 'WRONGTYPE%'"),
	'the rejected command is recorded as a dead letter while stopped');
$client->call('DEL', 't:ids');
$node->append_conf('postgresql.conf', "pg2redis.on_command_error = dead_letter\n");
$node->reload;
wait_for_redis($node, 60, 'the stream resumes after the reload');
@got = $client->pipeline(map { [ 'GET', "t:$_" ] } 401 .. 1000);
is(scalar(grep { ($got[ $_ - 401 ] // '') eq "x$_" } 401 .. 1000), 600,
	'every row committed around the stop is in the cluster');

unlike(status_text($node), qr/app-secret/, 'the password is not in pg2redis_status()');
unlike(slurp_file($node->logfile), qr/app-secret/, 'nor in the server log');

$node->stop;
done_testing();
