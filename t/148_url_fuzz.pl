# Copyright (c) pg2redis developers
#
# A fuzz pass over pg2redis.redis_url: seeded random mutations of valid URLs
# (every scheme, users, passwords with escapes, IPv6, databases, cluster
# seed lists, sentinel lists and primary names, unix sockets) are set with ALTER SYSTEM and reloaded, and the
# worker and a backend parse each.  The password (present in every one)
# must never show in pg2redis_status(), SHOW, an error of pg2redis_redis()
# or the server log, and nothing may crash.  PG2REDIS_FUZZ_SEED replays a
# run; PG2REDIS_FUZZ_URLS sets the count (default 150).

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use Pg2RedisTest;
use PostgreSQL::Test::Utils;
use Test::More;

my $seed = $ENV{PG2REDIS_FUZZ_SEED} // 20261201;
my $count = $ENV{PG2REDIS_FUZZ_URLS} // 150;
srand($seed);
diag("url fuzz seed $seed, $count urls");

my $pw    = 'Pw9zQx';
my $redis = start_redis(requirepass => $pw);
my $port  = $redis->port;
my $node  = new_node('urlfuzz', redis_url => "redis://default:$pw\@127.0.0.1:$port/0",
	wait_streaming => 0);
my $pm_pid = $node->safe_psql('postgres', 'SELECT pg_backend_pid()');

my @valid = (
	"redis://default:$pw\@127.0.0.1:$port/0",
	"redis://:$pw\@127.0.0.1:$port",
	"rediss://user:$pw\@localhost:$port/3",
	"redis://us%40er:$pw\@[::1]:$port/1",
	"redis-cluster://default:$pw\@127.0.0.1:$port,127.0.0.1:7001",
	"rediss-cluster://u:$pw\@h1:1,h2:2,[::1]:3",
	"redis-sentinel://default:$pw\@127.0.0.1:$port,127.0.0.1:7001/mymaster/0",
	"rediss-sentinel://u:$pw\@h1,[::1]:26380/my%2Fmaster",
	"unix:///tmp/redis.sock?db=2&password=$pw",
	"redis://default:${pw}%2F%40\@127.0.0.1:$port/0");
my @tokens = ('@', ':', '/', '%', '%4', '%zz', '[', ']', '[::1', '?', '=', '&', ',', '#',
	' ', "'", '\\', '0', '65536', '-1', '99999999999', 'redis://', '//', '@@', '::', ',,',
	"\x01", "\xc3\xa9", 'x' x 300);

# mutate S: 1-3 random edits (insert a token, delete, duplicate, replace)
sub mutate
{
	my ($s) = @_;
	for (1 .. 1 + int(rand(3)))
	{
		my $p = int(rand(length($s) + 1));
		my $r = rand();
		if ($r < 0.4) { substr($s, $p, 0) = $tokens[ int(rand(@tokens)) ]; }
		elsif ($r < 0.6) { substr($s, $p, 1 + int(rand(4))) = ''; }
		elsif ($r < 0.8) { substr($s, $p, 0) = substr($s, $p, 1 + int(rand(6))); }
		else { substr($s, $p, 1) = chr(33 + int(rand(94))); }
	}
	return $s;
}

my ($leaks, $crashes) = (0, 0);
my $log_offset = -s $node->logfile;
for my $i (1 .. $count)
{
	my $url = mutate($valid[ int(rand(@valid)) ]);

	# the secret must still be where a secret goes: before the last '@' (or
	# with no '@' left, after the scheme), or in unix:// parameters
	my $at = rindex($url, '@');
	my $where = index($url, $pw);
	redo if $where < 0 || ($at >= 0 && $where > $at && $url !~ /^unix:/);
	(my $sql_url = $url) =~ s/'/''/g;
	$sql_url =~ s/\x00//g;
	my ($rc, $out, $err) = $node->psql('postgres',
		"ALTER SYSTEM SET pg2redis.redis_url = '$sql_url'; SELECT pg_reload_conf();");
	next if $rc != 0 && $err =~ /invalid byte sequence|syntax error/;
	($rc, $out, $err) = $node->psql('postgres', q{
		SELECT pg_sleep(0.02);
		SHOW pg2redis.redis_url;
		SELECT redis_url, last_error FROM pg2redis_status();
		SELECT pg2redis_redis('PING');});
	if (index($out . $err, $pw) >= 0)
	{
		$leaks++;
		diag("password shown for URL: $url\n$out\n$err") if $leaks <= 5;
	}
	if ($err =~ /server closed the connection|terminated abnormally/)
	{
		$crashes++;
		diag("crash for URL: $url") if $crashes <= 5;
		$node->restart;
	}
}
$node->psql('postgres', 'ALTER SYSTEM RESET pg2redis.redis_url; SELECT pg_reload_conf();');
is($crashes, 0, "no crash for $count fuzzed URLs");
is($leaks, 0, 'the password never showed in SHOW, pg2redis_status() or an error');
my $log = slurp_file($node->logfile, $log_offset);
my @logged = grep { index($_, $pw) >= 0 && !/statement: ALTER SYSTEM/ } split /\n/, $log;
is(scalar(@logged), 0, 'nor in the server log (but the ALTER SYSTEM statements themselves)')
  or diag(join("\n", @logged[ 0 .. ($#logged < 4 ? $#logged : 4) ]));
unlike($log, qr/terminated by signal/, 'no process was terminated by a signal');

$node->stop;
done_testing();
