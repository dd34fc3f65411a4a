# Copyright (c) pg2redis developers
#
# One randomized differential test shared by every path rows take to Redis.
# From a seed (PG2REDIS_SEED replays one; it is printed), RandomWorkload
# makes 1 to 3 tables of random columns (composite and bigint keys,
# numeric, timestamptz, arrays, jsonb, short text, long text compressed
# inline, out of line compressed or not, STORAGE EXTERNAL, NULLs, unicode),
# their rules (HSET {pairs}, SET {json} and a column, SADD, ZADD with a
# numeric score under conditions, an INCRBY/DECRBY row counter, an INCRBY
# {diff:q} sum) and random transactions (key changes, deletes, rollbacks,
# savepoints, 70 subtransactions, prepared transactions committed later,
# transactions of thousands of rows; two sessions at once; tables now and
# then hash-partitioned), and pushes them through:
#
#   1. the initial load: rows committed before the slot exists (the first
#      start paused, or Redis down), with transactions racing the load;
#   2. the stream;
#   3. an on-demand snapshot of every table after Redis was emptied, while
#      transactions go on;
#   4. pg2redis_resync() into an emptied Redis, transactions racing it;
#   5. a pause (pg2redis.enabled = off) while transactions go on: nothing
#      written once paused, a snapshot request waits; then resumed;
#   6. a Redis Cluster (redis-cluster://): a resync into it, the stream, and
#      an on-demand snapshot into the flushed cluster.
#
# The oracle after each: pg2redis_verify() reports no problem (on the cluster
# through its per-node scans), the counters equal count(*) and sum(q)
# exactly, the set and sorted-set sizes equal the rows, no dead letter.
# Settings (batch size, transaction split, snapshot chunk size, the
# decoder's memory before it spills to disk) come from the seed too.  PG2REDIS_SOAK=1 runs larger and longer (more rounds, more rows).

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Pg2RedisTest;
use RandomWorkload;
use Test::More;
use Time::HiRes qw(usleep);
use JSON::PP;

my $seed = $ENV{PG2REDIS_SEED} // int(Time::HiRes::time() * 1000) % 1_000_000_000;
my $soak = $ENV{PG2REDIS_SOAK} ? 1 : 0;
diag("random workload seed $seed (PG2REDIS_SEED=$seed replays it)"
	  . ($soak ? ', soak run' : ''));
my $rw = RandomWorkload->new(seed => $seed, scale => $soak ? 4 : 1, two_phase => 1);
my $node;
my $x = $soak ? 8 : 1;    # transactions per phase, multiplied
my $rounds = $soak ? 3 : 1;

my %set = (
	batch_size               => $rw->pick(10, 100, 1000),
	max_transaction_commands => $rw->pick(10, 100, 10000),
	snapshot_batch_size      => $rw->pick(100, 1000, 5000),
	decoding_work_mem        => $rw->pick("'64kB'", "'16MB'"));    # spills large ones
my $first_start = $rw->pick('paused', 'Redis down');
diag($rw->describe);
diag(join(', ', map { "pg2redis.$_ = $set{$_}" } sort keys %set)
	  . "; first start: $first_start");

# start_sessions: two psql sessions of random transactions at once (each
# on its own rows, RandomWorkload::batch_sqls); finish_sessions waits for
# them, a test each.
sub start_sessions
{
	my ($n, %opts) = @_;
	return map { start_psql_script($node, $_) } $rw->batch_sqls($n, sessions => 2, %opts);
}

sub finish_sessions
{
	my ($label, @h) = @_;
	foreach my $i (0 .. $#h)
	{
		my ($rc, $out, $err) = finish_psql_script($h[$i]);
		is($rc, 0, "$label (session " . ($i + 1) . ')') or diag($err);
	}
	return;
}

my $t0 = Time::HiRes::time();
sub phase
{
	my ($name) = @_;
	note(sprintf('%.1f s: %s', Time::HiRes::time() - $t0, $name));
	return;
}

# --- 1. the initial load ----------------------------------------------------

phase('initial load');
my $port = PostgreSQL::Test::Cluster::get_free_port();
$node = new_node(
	'random',
	redis_url      => "redis://127.0.0.1:$port/0",
	flush_interval => '5ms',
	wait_streaming => 0,
	conf           => [
		(map { "pg2redis.$_ = $set{$_}" } sort keys %set),
		"pg2redis.retry_max_backoff = '500ms'",
		"max_prepared_transactions = 20",
		($first_start eq 'paused' ? ('pg2redis.enabled = off') : ())
	]);
my $redis;
$redis = start_redis(name => 'random', port => $port) if $first_start eq 'paused';

$node->safe_psql('postgres', $rw->schema_sql . $rw->rules_sql);
my ($rc, $out, $err) =
  run_psql_script($node, $rw->initial_rows_sql(200 * $x) . $rw->batch_sql(30 * $x));
is($rc, 0, 'rows committed before the slot exists') or diag($err);
is($node->safe_psql('postgres', 'SELECT count(*) FROM pg_replication_slots'),
	'0', "no slot yet ($first_start)");
is($redis->call('DBSIZE'), '0', 'nothing written to Redis while paused')
  if $redis;

# transactions race the slot's creation and the load
my @h = start_sessions(40 * $x, pause => 0.02);
usleep(300_000);
if ($redis)
{
	$node->append_conf('postgresql.conf', "pg2redis.enabled = on\n");
	$node->reload;
}
else
{
	$redis = start_redis(name => 'random', port => $port);
}
finish_sessions('transactions during the initial load', @h);
wait_for_status($node, 'state', 'streaming', 60, 'streaming after the initial load');
$rw->check($node, $redis, 'initial load');

# --- 2. the stream ---------------------------------------------------------------

foreach my $round (1 .. $rounds)
{
	phase("stream, round $round");
	finish_sessions("stream round $round: transactions", start_sessions(80 * $x, large => 0.02));
	$rw->check($node, $redis, "stream round $round");

	# --- 3. an on-demand snapshot into the emptied Redis, under load -----

	phase("on-demand snapshot, round $round");
	$node->safe_psql('postgres', $rw->snapshot_rules_sql);
	wait_for_redis($node, 60, "snapshot round $round: quiet before the flush");
	my @counters = $rw->counter_commands($node);
	$redis->call('FLUSHALL');
	$redis->pipeline(@counters) if @counters;
	@h = start_sessions(60 * $x, pause => 0.005, large => 0.02);
	usleep(100_000);
	my $sid = $node->safe_psql('postgres', 'SELECT pg2redis_snapshot()');
	finish_sessions("snapshot round $round: transactions during the snapshot", @h);
	ok(snapshot_reaches($node, $sid, 'done', 120), "snapshot round $round: the request is done")
	  or diag($node->safe_psql('postgres', "SELECT * FROM pg2redis_snapshots WHERE id = $sid"));
	$rw->check($node, $redis, "on-demand snapshot round $round");
	$node->safe_psql('postgres', $rw->drop_snapshot_rules_sql);
}

# --- 4. pg2redis_resync() ------------------------------------------------------

# resync runs the insert rules again (counters included) on every row of
# the new slot's snapshot: Redis is emptied first, while nothing runs
# (README: reset counters first), then transactions race the new slot.
sub resync_racing
{
	my ($target, $label) = @_;
	wait_for_redis($node, 60, "$label: quiet before the resync");
	$node->safe_psql('postgres', 'SELECT pg2redis_resync()');
	ok( poll_until(
			30,
			sub {
				$node->safe_psql('postgres', 'SELECT count(*) FROM pg_replication_slots') eq '0';
			}),
		"$label: the old slot is dropped");
	finish_sessions("$label: transactions racing the new slot and its load",
		start_sessions(70 * $x, pause => 0.08));
	wait_for_status($node, 'state', 'streaming', 60, "$label: streaming again");
	$rw->check($node, $target, $label);
	return;
}

phase('resync');
wait_for_redis($node, 60, 'resync: quiet');
$redis->call('FLUSHALL');
resync_racing($redis, 'resync');

# --- 5. pause and resume ----------------------------------------------------------

phase('pause');
$node->safe_psql('postgres', $rw->snapshot_rules_sql);
# paused mid-stream: what is in flight lands, then nothing is written
@h = start_sessions(60 * $x, pause => 0.01, large => 0.02);
usleep(300_000);
$node->append_conf('postgresql.conf', "pg2redis.enabled = off\n");
$node->reload;
wait_for_status($node, 'state', 'paused', 30, 'paused while transactions go on');
my $writes = write_calls($redis);
finish_sessions('transactions while pausing and paused', @h);
my $sid = $node->safe_psql('postgres', 'SELECT pg2redis_snapshot()');
sleep(1);
is(write_calls($redis), $writes, 'nothing is written to Redis while paused');
is($node->safe_psql('postgres', "SELECT state FROM pg2redis_snapshots WHERE id = $sid"),
	'pending', 'a snapshot request made while paused waits');
@h = start_sessions(40 * $x, pause => 0.005);
$node->append_conf('postgresql.conf', "pg2redis.enabled = on\n");
$node->reload;
finish_sessions('transactions after resuming', @h);
ok(snapshot_reaches($node, $sid, 'done', 120), 'the request made while paused is served');
$rw->check($node, $redis, 'pause and resume');
$node->safe_psql('postgres', $rw->drop_snapshot_rules_sql);

# --- 6. a Redis Cluster -------------------------------------------------------------

phase('cluster');
my @cnodes = start_redis_cluster(primaries => 3, replicas => $soak ? 1 : 0);
my $client = Pg2RedisTest::ClusterClient->new(@cnodes);
wait_for_redis($node, 60, 'cluster: quiet before the switch');
$node->append_conf('postgresql.conf',
	sprintf("pg2redis.redis_url = 'redis-cluster://127.0.0.1:%d,127.0.0.1:%d'\n",
		$cnodes[0]->port, $cnodes[1]->port));
$node->reload;
wait_for_status($node, q{state = 'streaming' AND redis_url LIKE 'redis-cluster:%'},
	't', 60, 'cluster: streaming to the cluster');
resync_racing($client, 'cluster resync');

foreach my $round (1 .. $rounds)
{
	phase("cluster stream and snapshot, round $round");
	finish_sessions("cluster round $round: transactions", start_sessions(60 * $x, large => 0.02));
	$rw->check($node, $client, "cluster stream round $round");

	$node->safe_psql('postgres', $rw->snapshot_rules_sql);
	wait_for_redis($node, 60, "cluster round $round: quiet before the flush");
	my @counters = $rw->counter_commands($node);
	$client->refresh;
	$_->call('FLUSHALL') foreach $client->primaries;
	$client->pipeline(@counters) if @counters;
	@h = start_sessions(50 * $x, pause => 0.005);
	usleep(100_000);
	$sid = $node->safe_psql('postgres', 'SELECT pg2redis_snapshot()');
	finish_sessions("cluster round $round: transactions during the snapshot", @h);
	ok(snapshot_reaches($node, $sid, 'done', 120), "cluster round $round: the request is done");
	$rw->check($node, $client, "cluster snapshot round $round");
	$node->safe_psql('postgres', $rw->drop_snapshot_rules_sql);
}

# The oracle can fail on a cluster too: drift planted on the cluster's
# nodes behind the stream's back is what pg2redis_verify() reports, no more.
phase('planted drift');
wait_for_redis($node, 60, 'cluster: quiet before the drift');
my ($t1) = $rw->tables;
my @hashes = grep { !/:u$/ && $_ ne $t1->{cnt} } $client->keys_matching("$t1->{name}:h:*");
# one key per node first, so that both are on different nodes if they can
my %on_node;
$on_node{ $client->node_of($_)->port } //= $_ foreach @hashes;
my @spread = ((map { $on_node{$_} } sort keys %on_node), @hashes);
my $differ = $spread[0];
my ($gone) = grep { $_ ne $differ } @spread;
my $orphan = "$differ planted";    # under the same pattern, whatever the key's shape
my $field = ($client->call('HKEYS', $differ))->[0];
$client->call('HSET', $differ, $field, 'planted drift');
$client->call('DEL', $gone);
$client->call('SET', $orphan, 'x');
my ($vrc, $vout, $verr) = $node->psql('postgres',
	qq{SELECT coalesce(json_agg(json_build_object('key', key, 'problem', problem)), '[]')
	     FROM pg2redis_verify('$t1->{name}') WHERE problem <> 'summary'});
is_deeply(
	[ sort map { "$_->{key} $_->{problem}" } @{ JSON::PP->new->decode($vrc == 0 ? $vout : '[]') } ],
	[ sort("$differ differing", "$gone missing", "$orphan orphan") ],
	'planted drift on the cluster: the differing field, the missing key and the orphan, no more')
  or diag($verr);

phase('done');
diag(sprintf('seed %d: %.0f s', $seed, Time::HiRes::time() - $t0));
$node->stop;
done_testing();

# write_calls returns how many write commands Redis ran so far.
sub write_calls
{
	my ($r) = @_;
	my $n = 0;
	foreach my $line (split /\r?\n/, $r->call('INFO', 'commandstats'))
	{
		$n += $2
		  if $line =~ /^cmdstat_(set|hset|sadd|zadd|zrem|srem|del|unlink|incrby|decrby|multi|exec):calls=(\d+)/;
	}
	return $n;
}
