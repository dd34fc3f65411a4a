# Copyright (c) pg2redis developers

=pod

=head1 NAME

HoldProxy - a TCP proxy between the worker and Redis that can hold Redis's
replies, cut the connections or stop reading the worker, for the tests of
the held EXEC (t/236, t/237, t/238)

=head1 SYNOPSIS

  use HoldProxy;
  my $proxy = start_hold_proxy($redis->port);
  ... redis_url => "redis://127.0.0.1:$proxy->{port}/0" ...
  kill 'USR1', $proxy->{pid};    # hold Redis's replies from now on
  kill 'USR2', $proxy->{pid};    # hand them over, and the next ones

Worker -> Redis bytes are forwarded at once and appended to the file
$proxy->{log}; Redis -> worker bytes are forwarded, or kept while held.
Signals to $proxy->{pid}:

=over

=item USR1: hold Redis's replies (with arm_pattern: from the first bytes of
the worker that match it on)

=item USR2: release what is kept, stop holding and disarm

=item HUP: close every connection (both sides), and stop holding

=item WINCH: toggle stalling: the worker's bytes are not read meanwhile

=back

Options: arm_pattern => qr/.../ (see USR1), release_on_connect => 1 (a new
connection stops holding).  The proxy exits after 600 s at the latest, and
is killed when the test ends.

=cut

package HoldProxy;

use strict;
use warnings;

use Exporter 'import';
use IO::Select;
use POSIX ();
use IO::Socket::INET;
use PostgreSQL::Test::Utils;
use Pg2RedisTest;
use Socket qw(IPPROTO_TCP TCP_NODELAY);
use Time::HiRes qw(sleep);

our @EXPORT = qw(start_hold_proxy proxy_sent proxy_node);

my @pids;

END { kill 'KILL', $_ foreach @pids; }

# start_hold_proxy(REDIS_PORT, %opts) forks the proxy and returns
# { port, pid, log }.
sub start_hold_proxy
{
	my ($redis_port, %opts) = @_;
	my $log    = PostgreSQL::Test::Utils::tempdir() . '/up.log';
	my $listen = IO::Socket::INET->new(
		LocalAddr => '127.0.0.1',
		LocalPort => 0,
		Listen    => 16,
		ReuseAddr => 1) or die "proxy: $!";
	my $pid = fork();
	die "fork: $!" unless defined $pid;
	if ($pid == 0)
	{
		serve($listen, $redis_port, $log, %opts);
		POSIX::_exit(0);    # none of the test's END blocks in here
	}
	push @pids, $pid;
	return { port => $listen->sockport, pid => $pid, log => $log };
}

# proxy_node(NAME, PROXY, %opts) starts a node streaming through the proxy
# (reconnects retried every 50-200 ms, replies awaited up to 60 s) and waits
# until it streams.  Options: auth ('user:password@'), flush_interval
# (default 1ms), conf (more settings).
sub proxy_node
{
	my ($name, $proxy, %opts) = @_;
	my $node = new_node(
		$name,
		redis_url      => "redis://" . ($opts{auth} // '') . "127.0.0.1:$proxy->{port}/0",
		flush_interval => $opts{flush_interval} // '1ms',
		conf           => [
			"pg2redis.redis_timeout = '60s'",
			"pg2redis.retry_initial_backoff = '50ms'",
			"pg2redis.retry_max_backoff = '200ms'",
			@{ $opts{conf} // [] }
		],
		wait_streaming => 0);
	wait_for_status($node, 'state', 'streaming', 60,
		'streaming through the proxy');
	return $node;
}

# proxy_sent(PROXY, FROM, CMD) counts the commands CMD (a RESP bulk string:
# MULTI, EXEC, ...) in what the worker wrote after byte FROM of the log.
sub proxy_sent
{
	my ($proxy, $from, $cmd) = @_;
	open(my $fh, '<', $proxy->{log}) or return 0;
	binmode $fh;
	local $/;
	my $all = <$fh> // '';
	close $fh;
	my $pat = '$' . length($cmd) . "\r\n$cmd\r\n";
	my $n   = () = substr($all, $from) =~ /\Q$pat\E/g;
	return $n;
}

# serve runs the proxy (in the child) until its deadline.
sub serve
{
	my ($listen, $redis_port, $logfile, %opts) = @_;
	my $pattern = $opts{arm_pattern};
	my ($hold, $arm, $cut, $stall) = (0, 0, 0, 0);
	local $SIG{USR1} = sub {
		if   ($pattern) { $arm  = 1 }
		else            { $hold = 1 }
	};
	local $SIG{USR2}  = sub { ($hold, $arm) = (0, 0) };
	local $SIG{HUP}   = sub { $cut   = 1 };
	local $SIG{WINCH} = sub { $stall = !$stall };
	open(my $log, '>>', $logfile) or die "log: $!";
	$log->autoflush(1);
	my $sel = IO::Select->new($listen);
	my @conns;
	my $deadline = time() + 600;    # never outlive the test
	my $close    = sub {
		my ($c) = @_;
		$sel->remove($c->{c}, $c->{u});
		close($c->{u});
		close($c->{c});
		@conns = grep { $_ != $c } @conns;
	};

	while (time() < $deadline)
	{
		if ($cut)
		{
			$close->($_) foreach @conns;
			($cut, $hold) = (0, 0);
		}
		if (!$hold)
		{
			foreach my $c (@conns)
			{
				syswrite($c->{c}, $c->{kept}) if length($c->{kept} // '');
				$c->{kept} = '';
			}
		}
		sleep(0.01) if $stall;
		foreach my $fh ($sel->can_read(0.02))
		{
			if ($fh == $listen)
			{
				my $client = $listen->accept or next;
				my $up     = IO::Socket::INET->new(
					PeerAddr => '127.0.0.1',
					PeerPort => $redis_port) or next;
				setsockopt($client, IPPROTO_TCP, TCP_NODELAY, 1);
				setsockopt($up,     IPPROTO_TCP, TCP_NODELAY, 1);
				push @conns, { c => $client, u => $up, kept => '' };
				$sel->add($client, $up);
				$hold = 0 if $opts{release_on_connect};
				next;
			}
			my ($c) = grep { $_->{c} == $fh || $_->{u} == $fh } @conns;
			next unless $c;
			next if $stall && $fh == $c->{c};
			my $n = sysread($fh, my $data, 65536);
			if (!$n)
			{
				$close->($c);
				next;
			}
			if ($fh == $c->{c})
			{
				print $log $data;
				($hold, $arm) = (1, 0) if $arm && $data =~ $pattern;
				syswrite($c->{u}, $data);
			}
			elsif ($hold)
			{
				$c->{kept} .= $data;
			}
			else
			{
				syswrite($c->{c}, $data);
			}
		}
	}
	return;
}

1;
