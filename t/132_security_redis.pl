# Copyright (c) pg2redis developers
#
# Security of the Redis side, against live servers:
#
# (a) the Redis password stays secret: a malformed URL (a mistyped '@')
#     shows neither in pg2redis_status(), last_error, SHOW (as a member of
#     pg_monitor) nor in the server log, and fixing the URL clears
#     last_error;
# (b) a password file and a TLS client key that others may read are
#     refused with an error saying why and how to fix it; an encrypted
#     client key is refused at once (no passphrase prompt);
#     redis_tls_verify = ca/none logs a WARNING;
# (c) pg2redis_redis(): read-only commands for roles outside
#     pg2redis_admin, data commands for its members, server commands and
#     pg2redis's own keys for superusers only;
# (d) on a Redis Cluster, pg2redis_redis() follows MOVED only to nodes of
#     the slot map: a fake node redirecting to a stranger is not followed,
#     and the stranger receives nothing (no AUTH, no command).

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use IO::Select;
use IPC::Run;
use IO::Socket::INET;
use POSIX ();
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Pg2RedisTest;
use Test::More;

my $password = 'S3cretPW-q7z';
my $redis = start_redis(name => 'sec', requirepass => $password);
my $port = $redis->port;

# postgresql.conf, not ALTER SYSTEM: the test cluster logs every statement
my $node = new_node(
	'sec',
	redis_url => "redis://default:$password\@127.0.0.1:$port/0",
	flush_interval => '5ms',
	conf => [ "pg2redis.retry_max_backoff = '500ms'", "pg2redis.redis_timeout = '2s'" ]);
wait_for_status($node, 'state', 'streaming', 60, 'streaming with a password in the URL');
$node->safe_psql(
	'postgres', q{
	CREATE TABLE t (id int PRIMARY KEY, v text);
	SELECT pg2redis_add_rule('t', 'insert', 'SET t:{id} {v}');
	INSERT INTO t VALUES (1, 'one');
	CREATE ROLE regress_carol LOGIN;
	GRANT pg_monitor TO regress_carol;
	GRANT pg2redis_monitor TO regress_carol;
});
wait_for_redis($node, 30, 'first row applied');

# set_url replaces pg2redis.redis_url in postgresql.conf and reloads.
sub set_url
{
	my ($url) = @_;
	$node->append_conf('postgresql.conf', "pg2redis.redis_url = '$url'\n");
	$node->reload;
}

# (a) a malformed URL: '#' typed instead of '@'
set_url("redis://default:$password#127.0.0.1:$port/0");
wait_for_status($node, 'last_error', qr/invalid/, 30, '(a) a malformed URL is reported in last_error');
my $st = status_text($node);
unlike($st, qr/\Q$password\E/, '(a) the password is not in pg2redis_status() (redis_url, last_error)');
like(status_row($node)->{redis_url}, qr/\*\*\*/, '(a) redis_url is shown masked');
my $shown = $node->safe_psql('postgres',
	"SET ROLE regress_carol; SELECT current_setting('pg2redis.redis_url')");
unlike($shown, qr/\Q$password\E/, '(a) a pg_monitor member reads the setting masked');
# (the statement is logged: it names the password backwards)
my $backwards = reverse $password;
is($node->safe_psql('postgres',
	"SET ROLE regress_carol; SELECT count(*) FROM pg_settings WHERE strpos(concat(setting, reset_val, boot_val), reverse('$backwards')) > 0"),
	'0', '(a) pg_settings does not show it either');

# another malformed URL, the password alone with a mistyped '@'
set_url("redis://$password#127.0.0.1:$port/0");
ok(poll_until(30, sub { status_row($node)->{redis_url} !~ /#127/ }),
	'(a) the second malformed URL is in effect');
unlike(status_text($node), qr/\Q$password\E/, '(a) a password-only URL is masked too');

# fixing the URL clears last_error
set_url("redis://default:$password\@127.0.0.1:$port/0");
wait_for_status($node, 'state', 'streaming', 30, '(a) streaming again after the fix');
is(status_row($node)->{last_error}, undef, '(a) last_error was cleared by the new URL');
$node->safe_psql('postgres', "INSERT INTO t VALUES (2, 'two')");
wait_for_redis($node, 30, '(a) rows flow again');

# (b) the password file
my $dir = PostgreSQL::Test::Utils::tempdir();
my $pwfile = "$dir/redis.pw";
PostgreSQL::Test::Utils::append_to_file($pwfile, "$password\n");
chmod 0640, $pwfile;
my $log_offset = -s $node->logfile;
$node->append_conf('postgresql.conf',
	"pg2redis.redis_password_file = '$pwfile'\n");
set_url("redis://127.0.0.1:$port/0");
wait_for_status($node, 'last_error', qr/password file.*group or world/, 30,
	'(b) a group-readable password file is refused');
ok(poll_until(10, sub { log_lines($node, qr/HINT:.*chmod 0600/, $log_offset) }),
	'(b) the log says how to fix it');
chmod 0600, $pwfile;
$node->reload;
wait_for_status($node, 'state', 'streaming', 30,
	'(b) a reload after chmod 0600 uses the password file');
is(status_row($node)->{last_error}, undef, '(b) and clears last_error');
# a reload after the file changed reads it again (a new password)
$log_offset = -s $node->logfile;
open(my $pw, '>', $pwfile) or die "$pwfile: $!";
print $pw "$password\n# rotated\n";
close $pw;
$node->reload;
ok(poll_until(30, sub { log_lines($node, qr/Redis settings changed, connecting to/, $log_offset) }),
	'(b) a reload after the password file changed reconnects with it');
wait_for_status($node, 'state', 'streaming', 30, '(b) streaming after it');

# (b) the TLS client key
make_test_certs($dir, san => 'DNS:localhost');
my $tls_port = PostgreSQL::Test::Cluster::get_free_port();
my $tls = start_redis(
	name => 'tls',
	extra_args => [
		'--tls-port', $tls_port, '--tls-cert-file', "$dir/server.crt",
		'--tls-key-file', "$dir/server.key", '--tls-ca-cert-file', "$dir/ca.crt",
		'--tls-auth-clients', 'yes'
	]);
my ($out, $err);
IPC::Run::run([ 'openssl', 'pkey', '-in', "$dir/client.key", '-aes256',
		'-passout', 'pass:secret', '-out', "$dir/encrypted.key" ],
	'>', \$out, '2>', \$err) or die "openssl pkey: $err";
chmod 0600, "$dir/encrypted.key";
chmod 0644, "$dir/client.key";
$node->append_conf('postgresql.conf', qq{
pg2redis.redis_password_file = ''
pg2redis.redis_tls_ca_file = '$dir/ca.crt'
pg2redis.redis_tls_cert_file = '$dir/client.crt'
pg2redis.redis_tls_key_file = '$dir/client.key'
});
set_url("rediss://localhost:$tls_port/0");
wait_for_status($node, 'last_error', qr/key file.*group or world/, 30,
	'(b) a world-readable client key is refused');
($out, $err) = ('', '');
$node->psql('postgres', "SELECT pg2redis_redis('PING')", stderr => \$err);
like($err, qr/group or world access.*\n.*HINT:.*chmod 0600/s,
	'(b) pg2redis_redis() refuses it too, with a hint');

$node->append_conf('postgresql.conf', "pg2redis.redis_tls_key_file = '$dir/encrypted.key'\n");
$node->reload;
wait_for_status($node, 'last_error', qr/encrypted|passphrase/, 30,
	'(b) an encrypted client key is refused, without a prompt');
my $t0 = time;
$node->psql('postgres', "SELECT pg2redis_redis('PING')", stderr => \$err, timeout => 60);
like($err, qr/passphrase/, '(b) pg2redis_redis() says the key is encrypted');
ok(time - $t0 < 10, '(b) and does not hang');

chmod 0600, "$dir/client.key";
$log_offset = -s $node->logfile;
$node->append_conf('postgresql.conf', qq{
pg2redis.redis_tls_key_file = '$dir/client.key'
pg2redis.redis_tls_verify = ca
});
$node->reload;
wait_for_status($node, 'state', 'streaming', 30, '(b) a 0600 key is used');
ok(poll_until(10, sub { log_lines($node, qr/WARNING:.*redis_tls_verify/, $log_offset) }),
	'(b) verify = ca logs a WARNING');
$node->safe_psql('postgres', "INSERT INTO t VALUES (3, 'three')");
wait_for_redis($node, 30, '(b) rows flow over TLS');
is(scalar(log_lines($node, qr/WARNING:.*redis_tls_verify/, $log_offset)), 1,
	'(b) the WARNING is logged once');

# back to the plain server for (c)
$node->append_conf('postgresql.conf', qq{
pg2redis.redis_tls_ca_file = ''
pg2redis.redis_tls_cert_file = ''
pg2redis.redis_tls_key_file = ''
pg2redis.redis_tls_verify = full
});
set_url("redis://default:$password\@127.0.0.1:$port/0");
wait_for_status($node, 'redis_url', qr/^redis:/, 30, '(c) back on the plain server');
wait_for_status($node, 'state', 'streaming', 30, '(c) streaming');

# (c) pg2redis_redis() for a reader, an admin and a superuser
$node->safe_psql(
	'postgres', q{
	CREATE ROLE regress_reader;
	GRANT EXECUTE ON FUNCTION pg2redis_redis(text[]) TO regress_reader;
	CREATE ROLE regress_admin;
	GRANT pg2redis_admin TO regress_admin;
});
# try(role, args...) runs pg2redis_redis as role: its output, or ERROR: ...
sub try_redis
{
	my ($role, @args) = @_;
	my $list = join(', ', map { "'$_'" } @args);
	my ($o, $e) = ('', '');
	$node->psql('postgres', "SET ROLE $role; SELECT pg2redis_redis($list)",
		stdout => \$o, stderr => \$e);
	return $e =~ /ERROR:\s+(.*)/ ? "ERROR: $1" : $o;
}
is(try_redis('regress_reader', 'GET', 't:1'), '"one"', '(c) a reader may GET');
is(try_redis('regress_reader', 'HGETALL', 'nothing'), '[]', '(c) a reader may HGETALL');
is(try_redis('regress_reader', 'DBSIZE') =~ /^\d+$/ ? 1 : 0, 1, '(c) a reader may DBSIZE');
like(try_redis('regress_reader', 'SET', 't:1', 'x'), qr/ERROR:.*permission denied to run Redis command/,
	'(c) a reader may not SET');
like(try_redis('regress_reader', 'CONFIG', 'GET', 'requirepass'),
	qr/ERROR:.*permission denied to run Redis command/, '(c) a reader may not CONFIG GET');
is($redis->call('GET', 't:1'), 'one', '(c) the refused SET changed nothing');
is(try_redis('regress_admin', 'SET', 'fix:1', 'x'), '"OK"', '(c) an admin may SET');
like(try_redis('regress_admin', 'CONFIG', 'GET', 'requirepass'),
	qr/ERROR:.*permission denied to run Redis command/, '(c) an admin may not CONFIG GET');
like(try_redis('regress_admin', 'EVAL', 'return 1', '0'),
	qr/ERROR:.*permission denied to run Redis command/,
	'(c) an admin may not EVAL');
like(try_redis('regress_admin', 'SET', 'pg2redis:pg2redis:lsn', 'FFFFFFFF/FFFFFFFF'),
	qr/ERROR:.*permission denied to write Redis key/,
	"(c) an admin may not write pg2redis's position key");
like(try_redis('regress_admin', 'MSET', 'fix:2', 'y', 'pg2redis:other:lsn', '0/0'),
	qr/ERROR:.*permission denied to write Redis key/, '(c) not even as a later key of MSET');
isnt($redis->call('GET', 'pg2redis:pg2redis:lsn'), 'FFFFFFFF/FFFFFFFF',
	'(c) the position key is untouched');
is($redis->call('EXISTS', 'fix:2'), '0', '(c) the refused MSET wrote nothing');
like($node->safe_psql('postgres', "SELECT pg2redis_redis('CONFIG', 'GET', 'maxmemory')"),
	qr/maxmemory/, '(c) a superuser may run CONFIG GET');

# (d) MOVED to a host outside the slot map is not followed
my $recfile = "$dir/stranger.bin";
my ($stranger_port, $stranger_pid) = fake_server(undef, $recfile);
my $fake_port;
my $fake_pid;
($fake_port, $fake_pid) = fake_server(
	sub {
		my ($cmd, $self_port) = @_;
		my $name = uc $cmd->[0];
		return "+OK\r\n" if $name eq 'AUTH';
		return "*1\r\n*3\r\n:0\r\n:16383\r\n*2\r\n\$9\r\n127.0.0.1\r\n:$self_port\r\n"
		  if $name eq 'CLUSTER';
		return "-MOVED 1 127.0.0.1:$stranger_port\r\n";
	});
set_url("redis-cluster://default:$password\@127.0.0.1:$fake_port");
wait_for_status($node, 'redis_url', qr/^redis-cluster:/, 30, '(d) a cluster URL naming the fake node');
($out, $err) = ('', '');
$node->psql('postgres', "SELECT pg2redis_redis('GET', 'k')", stderr => \$err, timeout => 60);
like($err, qr/ERROR:.*not a node of (its|the) slot map/,
	'(d) pg2redis_redis() refuses a redirection to a host outside the slot map');
is(-s $recfile // 0, 0, '(d) the stranger received nothing: no AUTH, no command');
kill 'KILL', $fake_pid, $stranger_pid;
waitpid($_, 0) foreach ($fake_pid, $stranger_pid);

$node->stop;
# not even PostgreSQL's own "parameter ... changed to" line shows it
is_deeply([ log_lines($node, qr/\Q$password\E/) ], [],
	'(a) the password is not in the server log');
ok(scalar(log_lines($node, qr/parameter "pg2redis\.redis_url" changed to "redis:\/\/\*\*\*\@/)),
	'(a) the reload message of PostgreSQL shows the URL masked');
is_deeply([ log_lines($node, qr/terminated by signal|PANIC/) ], [], 'no process crashed');

done_testing();

# fake_server($reply, $recfile) starts a child that listens on 127.0.0.1
# and answers each RESP command with $reply->($cmd, $port) (undef: never
# answers, records what it receives in $recfile).  Returns (port, pid).
sub fake_server
{
	my ($reply, $recfile) = @_;
	my $listen = IO::Socket::INET->new(
		LocalAddr => '127.0.0.1',
		LocalPort => 0,
		Listen    => 5,
		ReuseAddr => 1) or die "listen: $!";
	my $lport = $listen->sockport;
	my $pid = fork();
	die "fork: $!" unless defined $pid;
	if ($pid == 0)
	{
		# die with the test (PR_SET_PDEATHSIG, SIGKILL), as Redis does
		syscall(157, 1, 9) if (POSIX::uname())[4] eq 'x86_64';
		my $sel = IO::Select->new($listen);
		my %buf;
		while (1)
		{
			foreach my $s ($sel->can_read(1))
			{
				if ($s == $listen)
				{
					my $c = $listen->accept or next;
					binmode $c;
					$sel->add($c);
					$buf{$c} = '';
					next;
				}
				my $n = sysread($s, $buf{$s}, 65536, length $buf{$s});
				if (!$n)
				{
					$sel->remove($s);
					close $s;
					next;
				}
				if (!$reply)
				{
					open(my $fh, '>>', $recfile) or die;
					binmode $fh;
					print $fh $buf{$s};
					close $fh;
					$buf{$s} = '';
					next;
				}
				while ($buf{$s} =~ /^\*(\d+)\r\n/)
				{
					my ($argc, $pos, @args) = ($1, length("*$1\r\n"));
					my $complete = 1;
					for (1 .. $argc)
					{
						if (substr($buf{$s}, $pos) =~ /^\$(\d+)\r\n/
							&& length($buf{$s}) >= $pos + length("\$$1\r\n") + $1 + 2)
						{
							my $len = $1;
							$pos += length("\$$len\r\n");
							push @args, substr($buf{$s}, $pos, $len);
							$pos += $len + 2;
						}
						else
						{
							$complete = 0;
							last;
						}
					}
					last unless $complete;
					substr($buf{$s}, 0, $pos, '');
					syswrite($s, $reply->(\@args, $lport));
				}
			}
		}
	}
	close $listen;
	return ($lport, $pid);
}
