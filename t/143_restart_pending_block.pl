# Copyright (c) pg2redis developers
#
# Exactly once across worker processes: a block that a killed worker left
# queued on its way to Redis must not run after the next worker read the
# stream position (streaming-core review, finding 2).  A TCP proxy between
# the worker and Redis holds back what the first worker sends (a network
# path that stalls); the worker is killed; the next one connects through a
# path that works, reads the position and applies the transaction; then the
# stalled path delivers the old block.  The new worker must have ended the
# old connection first (every data connection is named after the slot and
# the others of that name are killed before the position is read), so the
# counter is applied once.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use IO::Select;
use IO::Socket::INET;
use Pg2RedisTest;
use PostgreSQL::Test::Utils;
use Test::More;

my $redis = start_redis();

# start_proxy: a child process forwarding 127.0.0.1:<port> to Redis.  SIGUSR1
# holds back everything the connections open at that moment send to Redis
# (and keeps their Redis side open even when the client goes away); SIGUSR2
# delivers what was held and lets those connections go on.
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
	my ($freeze, $thaw) = (0, 0);
	local $SIG{USR1} = sub { $freeze = 1 };
	local $SIG{USR2} = sub { $thaw   = 1 };
	my $sel = IO::Select->new($listen);
	my @conns;
	my $deadline = time() + 300;    # never outlive the test
	while (time() < $deadline)
	{
		if ($freeze) { $_->{frozen} = 1 foreach @conns; $freeze = 0; }
		if ($thaw)
		{
			foreach my $c (grep { $_->{frozen} } @conns)
			{
				$c->{frozen} = 0;
				syswrite($c->{u}, $c->{buf}) if length $c->{buf};
				$c->{buf} = '';
				shutdown($c->{u}, 1) if $c->{ceof};
			}
			$thaw = 0;
		}
		foreach my $fh ($sel->can_read(0.05))
		{
			if ($fh == $listen)
			{
				my $client = $listen->accept or next;
				my $up     = IO::Socket::INET->new(
					PeerAddr => '127.0.0.1',
					PeerPort => $redis->port) or next;
				push @conns, { c => $client, u => $up, buf => '', frozen => 0, ceof => 0 };
				$sel->add($client, $up);
				next;
			}
			my ($c) = grep { $_->{c} == $fh || $_->{u} == $fh } @conns;
			next unless $c;
			my $n = sysread($fh, my $data, 65536);
			if ($fh == $c->{c})
			{
				if (!$n)
				{
					$c->{ceof} = 1;
					$sel->remove($fh);
					shutdown($c->{u}, 1) unless $c->{frozen};
				}
				elsif ($c->{frozen}) { $c->{buf} .= $data; }
				else { syswrite($c->{u}, $data); }
			}
			else
			{
				if (!$n)
				{
					$sel->remove($c->{u});
					$sel->remove($c->{c}) unless $c->{ceof};
					close($c->{u});
					close($c->{c});
					@conns = grep { $_ != $c } @conns;
				}
				elsif (!$c->{ceof}) { syswrite($c->{c}, $data); }
			}
		}
	}
	exit 0;
}
END { kill 'KILL', $proxy_pid if $proxy_pid; }

my $node = new_node(
	'pending',
	redis_url      => "redis://127.0.0.1:$proxy_port/0",
	conf           => [ 'restart_after_crash = on' ],
	wait_streaming => 0);
wait_for_status($node, 'state', 'streaming', 60, 'streaming through the proxy');
$node->safe_psql('postgres', q{
	CREATE TABLE moves (id int PRIMARY KEY, n int);
	SELECT pg2redis_add_rule('moves', 'insert', 'INCRBY total {n}');
	INSERT INTO moves VALUES (1, 1);
});
wait_for_redis($node);
is($redis->call('GET', 'total'), '1', 'the first transaction is applied');
like($redis->call('CLIENT', 'LIST'), qr/name=pg2redis:pg2redis /,
	'the data connection carries the slot\'s name');

# Stall the path, commit, and kill the worker while its block is held.
kill 'USR1', $proxy_pid;
sleep(1);
$node->safe_psql('postgres', q{INSERT INTO moves VALUES (2, 10)});
sleep(2);
is($redis->call('GET', 'total'), '1', 'the block is held on the stalled path');
my $old_pid = worker_pid($node);
kill 'KILL', $old_pid;

# The next worker connects through a new path, reads the position, and
# applies the transaction.
ok( poll_until(
		60,
		sub {
			my $p = eval { worker_pid($node) };
			defined $p && $p ne $old_pid && $p ne '';
		}),
	'a new worker runs');
wait_for_status($node, 'state', 'streaming', 60, 'the new worker streams');
wait_for_redis($node);
is($redis->call('GET', 'total'), '11', 'the new worker applied the transaction');

# The stalled path delivers the old block now.
kill 'USR2', $proxy_pid;
sleep(2);
is($redis->call('GET', 'total'), '11', 'the killed worker\'s block did not run again');
$node->safe_psql('postgres', q{INSERT INTO moves VALUES (3, 100)});
wait_for_redis($node);
is($redis->call('GET', 'total'), '111', 'and the stream goes on, exactly once');

$node->stop;
done_testing();
