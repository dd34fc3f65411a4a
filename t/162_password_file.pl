# Copyright (c) pg2redis developers
#
# pg2redis.redis_password_file is read again at every connection attempt,
# without a reload (issue 13 item 4, streaming-core review finding 6):
#
# 1. a file that is missing when the worker starts, created later, is used
#    at the next attempt;
# 2. a rotated password (new file contents, Redis's requirepass changed,
#    the connection dropped) is used at the reconnect;
# 3. a file made unreadable to others' eyes fails the attempt with a
#    WARNING and last_error, and fixed (chmod 0600) is used again.
#
# Before, the file was read only when the worker started or a reload saw a
# change: a missing file left the stream down until a reload, and after a
# rotation the worker retried the old password for ever.  No reload happens
# in this test.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use PostgreSQL::Test::Utils;
use Pg2RedisTest;
use Test::More;

my $redis = start_redis(requirepass => 'first-pw');
my $dir = PostgreSQL::Test::Utils::tempdir();
my $pwfile = "$dir/redis.pw";

# write_pw replaces the password file, mode 0600.
sub write_pw
{
	my ($pw, $mode) = @_;
	open(my $fh, '>', "$pwfile.new") or die "$pwfile.new: $!";
	print $fh "$pw\n";
	close $fh;
	chmod $mode // 0600, "$pwfile.new";
	rename("$pwfile.new", $pwfile) or die "rename: $!";
}

my $node = new_node(
	'pwfile',
	redis_url => 'redis://127.0.0.1:' . $redis->port . '/0',
	wait_streaming => 0,
	conf => [
		"pg2redis.redis_password_file = '$pwfile'",
		"pg2redis.retry_max_backoff = '500ms'", "pg2redis.redis_timeout = '2s'"
	]);

# 1. missing at start
wait_for_status($node, 'last_error', qr/Redis password file.*No such file/, 30,
	'1. a missing password file is reported');
write_pw('first-pw');
wait_for_status($node, 'state', 'streaming', 30,
	'1. the file created later is used, without a reload');
$node->safe_psql('postgres', q{
	CREATE TABLE t (id int PRIMARY KEY, v text);
	SELECT pg2redis_add_rule('t', 'insert', 'SET t:{id} {v}');
	INSERT INTO t VALUES (1, 'one');
});
wait_for_redis($node, 30, '1. rows flow');

# 2. rotation: the file first, then Redis, then the connection drops
write_pw('second-pw');
$redis->call('CONFIG', 'SET', 'requirepass', 'second-pw');
$redis->{password} = 'second-pw';
my $pid = worker_pid($node);
$redis->call('CLIENT', 'KILL', 'TYPE', 'normal', 'SKIPME', 'yes');
$node->safe_psql('postgres', q{INSERT INTO t VALUES (2, 'two')});
wait_for_redis($node, 30, '2. after a rotation, the reconnect uses the new password');
is($redis->call('GET', 't:2'), 'two', '2. the row is in Redis');
is(worker_pid($node), $pid, '2. the same worker');

# 3. a file others may read: refused at the next attempt; fixed, used again
write_pw('second-pw', 0644);
$redis->call('CLIENT', 'KILL', 'TYPE', 'normal', 'SKIPME', 'yes');
wait_for_status($node, 'last_error', qr/password file.*group or world/, 30,
	'3. a password file others may read is refused at the next attempt');
$node->safe_psql('postgres', q{INSERT INTO t VALUES (3, 'three')});
chmod 0600, $pwfile;
wait_for_redis($node, 30, '3. fixed with chmod, it is used again, without a reload');
is($redis->call('GET', 't:3'), 'three', '3. the row is in Redis');
is(status_row($node)->{last_error}, undef, '3. last_error is cleared');
ok(!grep({ /first-pw|second-pw/ } split /\n/, slurp_file($node->logfile)),
	'the passwords are not in the log');

$node->stop;
done_testing();
