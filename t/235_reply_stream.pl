# Copyright (c) pg2redis developers
#
# The reply stream of a block, read in pieces: a proxy between the worker
# and Redis hands Redis's replies over in chunks of 1 to 7 bytes, so that
# nearly every +QUEUED, error and EXEC array arrives split across reads.
# Through it, one group of each transaction meets both kinds of refusal:
#   - a command refused while queueing (NOPERM: the ACL user may not run
#     HSET), which aborts the EXEC (EXECABORT): the group is sent again
#     without it, and it is a dead letter;
#   - a command refused by EXEC itself (WRONGTYPE: LPUSH on the string the
#     same transaction just SET), a dead letter naming that very command
#     (its index in the EXEC array maps back to the right command, the
#     dropped HSET notwithstanding);
# and a protocol error injected in the middle of the replies makes the worker
# reconnect and go on, applying INCRBY exactly once.  A regression guard for
# the worker's reply parsing (issue 16): it passes on the code before and
# after the reply path was made allocation-free.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use IO::Select;
use IO::Socket::INET;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Pg2RedisTest;
use Socket qw(IPPROTO_TCP TCP_NODELAY);
use Test::More;
use Time::HiRes qw(sleep);

my $redis = start_redis(name => 'reply');
$redis->call('ACL', 'SETUSER', 'app', 'on', '>app-secret', '~*', '&*',
	'+@all', '-hset');

# The proxy: worker -> Redis verbatim, Redis -> worker in chunks of 1 to 7
# bytes.  SIGUSR1: the next reply bytes carry a byte that is no RESP type.
my $listen = IO::Socket::INET->new(
	LocalAddr => '127.0.0.1',
	LocalPort => 0,
	Listen    => 16,
	ReuseAddr => 1) or die "proxy: $!";
my $proxy_port = $listen->sockport;
my $proxy_pid  = fork();
die "fork: $!" unless defined $proxy_pid;
if ($proxy_pid == 0)
{
	my $garbage = 0;
	local $SIG{USR1} = sub { $garbage = 1 };
	my $sel = IO::Select->new($listen);
	my @conns;
	my $deadline = time() + 300;    # never outlive the test
	while (time() < $deadline)
	{
		foreach my $fh ($sel->can_read(0.05))
		{
			if ($fh == $listen)
			{
				my $client = $listen->accept or next;
				my $up     = IO::Socket::INET->new(
					PeerAddr => '127.0.0.1',
					PeerPort => $redis->port) or next;
				setsockopt($client, IPPROTO_TCP, TCP_NODELAY, 1);
				push @conns, { c => $client, u => $up };
				$sel->add($client, $up);
				next;
			}
			my ($c) = grep { $_->{c} == $fh || $_->{u} == $fh } @conns;
			next unless $c;
			my $n = sysread($fh, my $data, 65536);
			if (!$n)
			{
				$sel->remove($c->{c}, $c->{u});
				close($c->{u});
				close($c->{c});
				@conns = grep { $_ != $c } @conns;
				next;
			}
			if ($fh == $c->{c})
			{
				syswrite($c->{u}, $data);
				next;
			}
			if ($garbage && length($data) > 4)
			{
				substr($data, 3, 0) = "\x01junk\r\n";
				$garbage = 0;
			}
			while (length $data)
			{
				my $k = 1 + int(rand(7));
				last unless defined syswrite($c->{c}, substr($data, 0, $k, ''));
				sleep(0.0002);
			}
		}
	}
	exit 0;
}
END { kill 'KILL', $proxy_pid if $proxy_pid; }

my $node = new_node(
	'reply',
	redis_url      => "redis://app:app-secret\@127.0.0.1:$proxy_port/0",
	flush_interval => '5ms',
	conf           => [
		"pg2redis.retry_initial_backoff = '50ms'",
		"pg2redis.retry_max_backoff = '200ms'"
	],
	wait_streaming => 0);
wait_for_status($node, 'state', 'streaming', 60, 'streaming through the proxy');

$node->safe_psql(
	'postgres', q{
	CREATE TABLE t (id int PRIMARY KEY, v text, n int);
	SELECT pg2redis_add_rule('t', 'insert', 'SET t:{id} {v}');
	SELECT pg2redis_add_rule('t', 'insert', 'HSET h:{id} v {v}');   -- NOPERM
	SELECT pg2redis_add_rule('t', 'insert', 'INCRBY total {n}');
	SELECT pg2redis_add_rule('t', 'insert', 'LPUSH t:{id} x');      -- WRONGTYPE
	SELECT pg2redis_add_rule('t', 'insert', 'SADD ids {id}');
});

# insert_rows inserts rows $from..$to, $per rows a transaction.
sub insert_rows
{
	my ($from, $to, $per) = @_;
	my $sql = '';
	for (my $i = $from; $i <= $to; $i += $per)
	{
		my $last = $i + $per - 1;
		$last = $to if $last > $to;
		$sql .= "INSERT INTO t SELECT g, 'v' || g, g FROM generate_series($i, $last) g;\n";
	}
	$node->safe_psql('postgres', $sql);
}

# check checks Redis and the dead letters against rows 1..$n.
sub check
{
	my ($n, $what) = @_;
	wait_for_redis($node, 60, "$what: applied");
	my $sum = 0;
	$sum += $_ for 1 .. $n;
	is($redis->call('GET', 'total'), $sum, "$what: INCRBY applied exactly once");
	is_deeply([ sort { $a <=> $b } redis_smembers($redis, 'ids') ],
		[ 1 .. $n ], "$what: the command after the refused ones is applied");
	is($redis->call('GET', "t:$n"), "v$n", "$what: SET applied");
	is($redis->call('EXISTS', "h:$n"), '0', "$what: HSET refused");
	ok( $node->poll_query_until('postgres',
			"SELECT count(*) = 2 * $n FROM pg2redis.dead_letters"),
		"$what: two dead letters a row");
	is( $node->safe_psql(
			'postgres', q{
		SELECT string_agg(x, ',' ORDER BY x)
		  FROM (SELECT DISTINCT command[1] || ' ' || split_part(error, ' ', 1) AS x
		          FROM pg2redis.dead_letters) s}),
		'HSET NOPERM,LPUSH WRONGTYPE',
		"$what: the dead letters are the refused commands, with their errors");
	is( $node->safe_psql(
			'postgres', q{
		SELECT count(*) FROM pg2redis.dead_letters
		 WHERE command[2] <> CASE command[1] WHEN 'HSET' THEN 'h:' ELSE 't:' END
		                     || key[1]}),
		'0', "$what: each dead letter names its own row's command");
}

insert_rows(1, 60, 20);
insert_rows(61, 64, 1);
check(64, 'replies in pieces');

# A protocol error in the middle of the replies of a block.
my $offset = -s $node->logfile;
kill 'USR1', $proxy_pid;
insert_rows(65, 124, 30);
check(124, 'after a protocol error');
ok(scalar(log_lines($node, qr/could not parse Redis reply/, $offset)) >= 1,
	'the protocol error was seen and logged');
is($node->safe_psql('postgres',
		"SELECT state FROM pg2redis_status()"), 'streaming',
	'the stream goes on');

$node->stop;
done_testing();
