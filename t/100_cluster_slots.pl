# Copyright (c) pg2redis developers
#
# The groundwork of Redis Cluster mode, against a real 3-primary cluster built
# by the test: pg2redis_key_slot() computes the slot Redis computes (CLUSTER
# KEYSLOT) for random keys, hash tags and their edge cases included; routing
# by that slot and the cluster's slot map (CLUSTER SLOTS) reaches the owning
# primary, while any other primary answers MOVED; pg2redis_command_slot()
# accepts the multi-key commands the cluster accepts and refuses, like the
# cluster (CROSSSLOT), those whose keys span slots.  A worker pointed at a
# cluster node with a redis:// URL (a standalone server) stops with an error
# that says to write redis-cluster://, and loses nothing.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use Pg2RedisTest;
use PostgreSQL::Test::Utils;
use Test::More;

my @cluster = start_redis_cluster(primaries => 3);
my @primaries = @cluster[ 0 .. 2 ];
my $redis = start_redis(name => 'single');
my $node = new_node('slots', redis => $redis, flush_interval => '5ms');

# Random keys: ASCII with many braces, some multibyte UTF-8, some empty tags.
srand(20261126);
my @alphabet = ('a' .. 'z', '0' .. '9', ':', '{', '}', '{', '}', '-', "\xc3\xa9",
	"\xe2\x82\xac", ' ');
my @keys = ('', '{}', '{{}}', '}{', '{a}{b}', '{}{a}');
foreach my $i (1 .. 3000)
{
	my $len = 1 + int(rand(24));
	push @keys, join('', map { $alphabet[ int(rand(@alphabet)) ] } 1 .. $len);
}

sub sql_literal
{
	my ($s) = @_;
	$s =~ s/'/''/g;
	return "'$s'";
}

my $list = join(',', map { sql_literal($_) } @keys);
my @ours = split /\n/,
  $node->safe_psql('postgres',
	"SELECT pg2redis_key_slot(k) FROM unnest(ARRAY[$list]::text[]) "
	  . "WITH ORDINALITY AS u(k, n) ORDER BY n");
my @theirs = $primaries[0]->pipeline(map { [ 'CLUSTER', 'KEYSLOT', $_ ] } @keys);
is(scalar @ours, scalar @keys, 'a slot for every key');
my @differ = grep { ($ours[$_] // '') ne ($theirs[$_] // '') } 0 .. $#keys;
is(scalar @differ, 0,
	'pg2redis_key_slot() equals CLUSTER KEYSLOT for ' . scalar(@keys) . ' keys')
  or diag(join("\n", map { "'$keys[$_]': ours $ours[$_], Redis $theirs[$_]" }
		  @differ[ 0 .. ($#differ < 9 ? $#differ : 9) ]));

# The slot map: which primary owns each slot.
my %by_port = map { $_->port => $_ } @primaries;
my @owner;
foreach my $range (@{ $primaries[0]->call('CLUSTER', 'SLOTS') })
{
	$owner[$_] = $by_port{ $range->[2][1] } foreach $range->[0] .. $range->[1];
}
is(scalar(grep { defined } @owner), 16384, 'the slot map covers every slot');

# Route the first 300 keys by our slot: the owner takes each write, the next
# primary redirects it to the owner with MOVED.
my ($taken, $moved) = (0, 0);
foreach my $i (0 .. 299)
{
	my $slot  = $ours[$i];
	my $owner = $owner[$slot];
	my ($reply) = $owner->pipeline([ 'SET', $keys[$i], "v$i" ]);
	$taken++ if !ref $reply && $reply eq 'OK';
	my ($other) = grep { $_ != $owner } @primaries;
	my ($redirect) = $other->pipeline([ 'SET', $keys[$i], "w$i" ]);
	$moved++
	  if ref $redirect eq 'HASH'
	  && $redirect->{error} eq "MOVED $slot 127.0.0.1:" . $owner->port;
}
is($taken, 300, 'the primary owning the computed slot takes every write');
is($moved, 300, 'every other primary answers MOVED to that owner and slot');

# Multi-key commands: a common hash tag makes them routable.
my $slot = $node->safe_psql('postgres',
	"SELECT pg2redis_command_slot(ARRAY['MSET', '{order:1}:items', '3', "
	  . "'{order:1}:total', '42'])");
is($owner[$slot]->call('MSET', '{order:1}:items', '3', '{order:1}:total', '42'),
	'OK', 'a tagged MSET goes to the owner of the slot pg2redis computed');
my ($ret, $stdout, $stderr) = $node->psql('postgres',
	"SELECT pg2redis_command_slot(ARRAY['MSET', 'order:1:items', '3', "
	  . "'order:1:total', '42'])");
like($stderr, qr/hash to different Redis Cluster slots/,
	'pg2redis_command_slot() refuses an untagged MSET across slots');
my ($crossslot) = $primaries[0]->pipeline(
	[ 'MSET', 'order:1:items', '3', 'order:1:total', '42' ]);
like(ref $crossslot ? $crossslot->{error} : $crossslot, qr/^CROSSSLOT/,
	'and so does the cluster');

$node->stop;

# A redis:// URL naming a cluster node: the worker stops with a clear error
# and retries, and dead-letters nothing: Redis's redirections and CROSSSLOT
# are not command errors there.
my $keys_before = 0;
$keys_before += $_->call('DBSIZE') foreach @primaries;
my $cnode = new_node('tocluster', redis_url => $primaries[0]->url,
	flush_interval => '5ms');
$cnode->safe_psql('postgres', q{
	CREATE TABLE c (id int PRIMARY KEY, v text);
	SELECT pg2redis_add_rule('c', 'insert', 'SET c:{id} {v}');
	SELECT pg2redis_add_rule('c', 'insert', 'DEL c:{id}:a c:{id}:b c:{id}:c');
	INSERT INTO c SELECT i, 'v' || i FROM generate_series(1, 20) i;
});
ok(poll_status($cnode, 'last_error', qr/names a node of a Redis Cluster, or a proxy .*; write it as redis-cluster:/, 30),
	'a redis:// URL naming a cluster node: the error says to write redis-cluster://');
is($cnode->safe_psql('postgres', 'SELECT count(*) FROM pg2redis.dead_letters'),
	'0', 'and records no dead letters');
my $keys_after = 0;
$keys_after += $_->call('DBSIZE') foreach @primaries;
is($keys_after, $keys_before, 'and writes nothing to the cluster');
isnt($cnode->safe_psql('postgres', 'SELECT state FROM pg2redis_status()'),
	'streaming', 'and does not claim to be streaming');
$cnode->stop;

# A one-node cluster owning every slot: the position reads fine, the commands
# queue, and it is the transaction across slots that Redis refuses
# (CROSSSLOT, on the multi-key DEL and on EXEC).  The same: no dead letters.
# This is also what the proxy of a sharded Redis Enterprise or Redis Cloud
# database answers (it refuses a MULTI across slots): the message says to
# enable the OSS Cluster API and use redis-cluster:// (issue 15 item 4).
my $one = start_redis(name => 'one',
	extra_args => [ '--cluster-enabled', 'yes', '--cluster-port', PostgreSQL::Test::Cluster::get_free_port() ]);
$one->call('CLUSTER', 'ADDSLOTSRANGE', '0', '16383');
poll_until(30, sub { $one->call('CLUSTER', 'INFO') =~ /cluster_state:ok/ })
  or BAIL_OUT('the one-node cluster is not ready');
my $onode = new_node('toone', redis_url => $one->url, flush_interval => '5ms');
$onode->safe_psql('postgres', q{
	CREATE TABLE c (id int PRIMARY KEY, v text);
	SELECT pg2redis_add_rule('c', 'insert', 'SET c:{id} {v}');
	SELECT pg2redis_add_rule('c', 'insert', 'DEL c:{id}:a c:{id}:b c:{id}:c');
	INSERT INTO c VALUES (1, 'one');
});
ok(poll_status($onode, 'last_error',
		qr/CROSSSLOT.*proxy of a sharded database that refuses a MULTI across hash slots; write it as redis-cluster:\/\/host:port, with the OSS Cluster API enabled on Redis Enterprise or Redis Cloud/, 30),
	'a one-node cluster (or a sharding proxy): CROSSSLOT, and a message saying what to do');
is($onode->safe_psql('postgres', 'SELECT count(*) FROM pg2redis.dead_letters'),
	'0', 'no dead letters there either');
is_deeply($one->call('KEYS', 'c:*'), [], 'no data written there either');
$onode->stop;
done_testing();
