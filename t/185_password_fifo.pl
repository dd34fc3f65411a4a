# Copyright (c) pg2redis developers
#
# A password file that is a FIFO (a secret manager's named pipe, or a path
# replaced by one) must not hold up the worker: the password file is read
# at every connection attempt (its signature), and a plain open() of a FIFO
# blocks until something writes to it, with SIGTERM, reloads and shutdown
# all waiting behind it.  Now it is opened without blocking and refused as
# not a regular file (WARNING and last_error); a regular file put back is
# used again, without a reload.
#
# Before, the worker stayed in open() for ever: last_error never said why
# and no row reached Redis.

use strict;
use warnings;

use Fcntl;
use FindBin;
use lib $FindBin::RealBin;
use POSIX qw(mkfifo);

use PostgreSQL::Test::Utils;
use Pg2RedisTest;
use Test::More;

my $redis = start_redis(requirepass => 'the-pw');
my $dir = PostgreSQL::Test::Utils::tempdir();
my $pwfile = "$dir/redis.pw";

# write_pw replaces the password file by a regular one, mode 0600.
sub write_pw
{
	open(my $fh, '>', "$pwfile.new") or die "$pwfile.new: $!";
	print $fh "the-pw\n";
	close $fh;
	chmod 0600, "$pwfile.new";
	rename("$pwfile.new", $pwfile) or die "rename: $!";
}

write_pw();
my $node = new_node(
	'pwfifo',
	redis_url => 'redis://127.0.0.1:' . $redis->port . '/0',
	conf => [
		"pg2redis.redis_password_file = '$pwfile'",
		"pg2redis.retry_max_backoff = '500ms'", "pg2redis.redis_timeout = '2s'"
	]);
$node->safe_psql('postgres', q{
	CREATE TABLE t (id int PRIMARY KEY, v text);
	SELECT pg2redis_add_rule('t', 'insert', 'SET t:{id} {v}');
	INSERT INTO t VALUES (1, 'one');
});
wait_for_redis($node, 30, 'rows flow');
my $pid = worker_pid($node);

# the password file becomes a FIFO, the connection drops
mkfifo("$dir/fifo", 0600) or die "mkfifo: $!";
rename("$dir/fifo", $pwfile) or die "rename: $!";
$redis->call('CLIENT', 'KILL', 'TYPE', 'normal', 'SKIPME', 'yes');
my $refused = poll_until(
	20,
	sub {
		my $e = $node->safe_psql('postgres',
			q{SELECT coalesce(last_error, '') FROM pg2redis_status()});
		return $e =~ /password file.*not a regular file/;
	});
ok($refused, 'a FIFO as the password file is refused, the worker is not stuck in open()');

# on the old code the worker waits in open(): a writer lets it go on
if (!$refused && sysopen(my $w, $pwfile, O_WRONLY | O_NONBLOCK))
{
	syswrite($w, "the-pw\n");
	close $w;
}

$node->safe_psql('postgres', q{INSERT INTO t VALUES (2, 'two')});
write_pw();
wait_for_redis($node, 30, 'a regular file put back is used, without a reload');
is($redis->call('GET', 't:2'), 'two', 'the row is in Redis');
is(worker_pid($node), $pid, 'the same worker');

# A TLS file that is a FIFO must not hold the worker either: OpenSSL's own
# file loading opens it with a blocking open().  The plain Redis never gets
# to a TLS handshake: the CA file is loaded first, and refused.
mkfifo("$dir/ca.pem", 0600) or die "mkfifo: $!";
$node->append_conf('postgresql.conf', qq{
pg2redis.redis_url = 'rediss://127.0.0.1:@{[ $redis->port ]}/0'
pg2redis.redis_tls_ca_file = '$dir/ca.pem'
});
$node->reload;
$refused = poll_until(
	20,
	sub {
		my $e = $node->safe_psql('postgres',
			q{SELECT coalesce(last_error, '') FROM pg2redis_status()});
		return $e =~ /CA file of pg2redis.redis_tls_ca_file: ".*" is not a regular file/;
	});
ok($refused, 'a FIFO as the TLS CA file is refused, the worker is not stuck in open()');
if (!$refused && sysopen(my $w, "$dir/ca.pem", O_WRONLY | O_NONBLOCK))
{
	close $w;
}
$node->append_conf('postgresql.conf', qq{
pg2redis.redis_url = 'redis://127.0.0.1:@{[ $redis->port ]}/0'
pg2redis.redis_tls_ca_file = ''
});
$node->reload;
$node->safe_psql('postgres', q{INSERT INTO t VALUES (3, 'three')});
wait_for_redis($node, 30, 'back on the plain URL');
is($redis->call('GET', 't:3'), 'three', 'the row after the TLS attempt is in Redis');

$node->stop;
done_testing();
