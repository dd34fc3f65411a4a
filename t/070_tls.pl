# Copyright (c) pg2redis developers
#
# TLS: rediss:// URLs with a test CA generated here.  A server whose
# certificate chains to pg2redis.redis_tls_ca_file is used; one signed by
# another CA is refused with a clear error; pg2redis.redis_tls_verify = full
# checks the host name (ca does not); a server that requires client
# certificates gets pg2redis.redis_tls_cert_file/key_file.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Pg2RedisTest;
use Test::More;

my $dir = PostgreSQL::Test::Utils::tempdir();

make_test_certs($dir, san => 'DNS:localhost');

# Redis: plain TCP on its usual port (for the test's own checks), TLS on
# another, client certificates required there.
my $tls_port = PostgreSQL::Test::Cluster::get_free_port();
my $redis = start_redis(
	name => 'tls',
	extra_args => [
		'--tls-port', $tls_port, '--tls-cert-file', "$dir/server.crt",
		'--tls-key-file', "$dir/server.key", '--tls-ca-cert-file', "$dir/ca.crt",
		'--tls-auth-clients', 'yes'
	]);

my $node = new_node(
	'tls',
	redis_url => "rediss://localhost:$tls_port/0",
	flush_interval => '5ms',
	conf => [
		"pg2redis.redis_tls_ca_file = '$dir/ca.crt'",
		"pg2redis.redis_tls_cert_file = '$dir/client.crt'",
		"pg2redis.redis_tls_key_file = '$dir/client.key'",
		"pg2redis.retry_max_backoff = '500ms'"
	]);
wait_for_status($node, 'state', 'streaming', 60,
	'streaming over TLS with a verified server and a client certificate');
$node->safe_psql(
	'postgres', q{
	CREATE TABLE t (id int PRIMARY KEY, v text);
	SELECT pg2redis_add_rule('t', 'insert', 'SET t:{id} {v}');
	INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 5000) g;
});
wait_for_redis($node, 60, 'rows arrive over TLS');
is($redis->call('GET', 't:4321'), 'v4321', 'a row written over TLS is in Redis');
is($node->safe_psql('postgres', "SELECT pg2redis_redis('GET', 't:1')"),
	'"v1"', 'pg2redis_redis() speaks TLS too');

# reconfigure: $conf lines replace the TLS settings, then reload
sub tls_conf
{
	my (%set) = @_;
	my $sql = join(';', map { "ALTER SYSTEM SET pg2redis.$_ = '$set{$_}'" } sort keys %set);
	$node->safe_psql('postgres', "$sql; SELECT pg_reload_conf();");
}

# a CA that did not sign the server: refused, with a clear error
tls_conf(redis_tls_ca_file => "$dir/other.crt");
wait_for_status($node, 'state', 'redis_unavailable', 30, 'a server signed by another CA is refused');
like(status_row($node)->{last_error}, qr/certificate does not verify/,
	'last_error says the certificate does not verify');
my ($rc, $out, $err) = $node->psql('postgres', "SELECT pg2redis_redis('PING')");
like($err, qr/certificate does not verify/, 'pg2redis_redis() refuses it too');

# the host name: the certificate names localhost, not 127.0.0.1
tls_conf(redis_tls_ca_file => "$dir/ca.crt", redis_url => "rediss://127.0.0.1:$tls_port/0");
wait_for_status($node, 'state', 'redis_unavailable', 30,
	'verify = full refuses a certificate that does not name the host');
like(status_row($node)->{last_error}, qr/does not verify/, 'a host name mismatch is a verify failure');
tls_conf(redis_tls_verify => 'ca');
wait_for_status($node, 'state', 'streaming', 30, 'verify = ca accepts it');
$node->safe_psql('postgres', "INSERT INTO t VALUES (6000, 'after')");
wait_for_redis($node, 30, 'streaming with verify = ca');
is($redis->call('GET', 't:6000'), 'after', 'the change arrives');

# no client certificate: the server refuses the handshake
tls_conf(redis_tls_cert_file => '', redis_tls_key_file => '');
wait_for_status($node, 'state', 'redis_unavailable', 30,
	'without a client certificate the server refuses us');
tls_conf(redis_tls_cert_file => "$dir/client.crt", redis_tls_key_file => "$dir/client.key");
wait_for_status($node, 'state', 'streaming', 30, 'with it again, streaming resumes');
$node->safe_psql('postgres', "INSERT INTO t VALUES (6001, 'last')");
wait_for_redis($node, 30, 'caught up');
is($redis->call('GET', 't:6001'), 'last', 'nothing was lost while TLS failed');

$node->stop;
done_testing();
