# Copyright (c) pg2redis developers
#
# The worker's own commits (dead letters, snapshot progress) are
# bookkeeping: they do not wait for synchronous replication (issue 13, item
# 3; streaming-core review finding 14).  Before, with
# synchronous_standby_names naming a standby that is not there, the stream
# stopped for good at the first dead letter or snapshot chunk, also for
# transactions that sessions committed with synchronous_commit = local.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use Pg2RedisTest;
use PostgreSQL::Test::Utils;
use Test::More;

my $redis = start_redis();
my $node  = new_node('syncdown', redis => $redis, flush_interval => '5ms');
$node->safe_psql('postgres', q{
	CREATE TABLE t (id int PRIMARY KEY, v text);
	SELECT pg2redis_add_rule('t', 'insert', 'SET t:{id} {v}');
	SELECT pg2redis_add_rule('t', 'insert', 'SADD wrongtype {id}');
	INSERT INTO t VALUES (1, 'one');
});
wait_for_redis($node);
$redis->call('SET', 'wrongtype', 'a string');

# A synchronous standby that does not exist: every commit that waits for it
# waits for ever.  The test's sessions commit locally.
$node->safe_psql('postgres', "ALTER SYSTEM SET synchronous_standby_names = 'nowhere'");
$node->reload;
my $local = 'SET synchronous_commit = local;';

# sql runs SQL in a session that does not wait for the standby.
sub sql
{
	my ($q) = @_;
	return $node->safe_psql('postgres', "$local $q");
}

# A command Redis rejects is a dead letter, which the worker records in its
# own transaction; the stream goes on after it.
sql(q{INSERT INTO t VALUES (2, 'two')});
ok(poll_until(30, sub { ($redis->call('GET', 't:2') // '') eq 'two' }), 'the row arrives');
ok(poll_until(30, sub { sql('SELECT count(*) FROM pg2redis.dead_letters') ne '0' }),
	'the rejected command is recorded as a dead letter');
sql(q{INSERT INTO t VALUES (3, 'three')});
ok(poll_until(30, sub { ($redis->call('GET', 't:3') // '') eq 'three' }),
	'the stream goes on after the dead letter')
  or diag(status_text($node));

# A snapshot on demand records its progress in the worker's transactions.
$redis->call('DEL', 't:1');
my $id = sql(q{SELECT pg2redis_snapshot('t')});
ok(poll_until(60, sub { sql("SELECT state FROM pg2redis_snapshots WHERE id = $id") eq 'done' }),
	'a snapshot on demand completes')
  or diag(sql("SELECT * FROM pg2redis_snapshots WHERE id = $id"));
is($redis->call('GET', 't:1'), 'one', 'and writes its rows');
sql(q{INSERT INTO t VALUES (4, 'four')});
ok(poll_until(30, sub { ($redis->call('GET', 't:4') // '') eq 'four' }),
	'the stream goes on after the snapshot');

# Nothing of the worker waits for the standby.
is( $node->safe_psql('postgres', q{
		SELECT count(*) FROM pg_stat_activity
		 WHERE backend_type = 'pg2redis' AND wait_event = 'SyncRep'}),
	'0',
	'the worker is not waiting for synchronous replication');

$node->safe_psql('postgres', "ALTER SYSTEM RESET synchronous_standby_names");
$node->reload;
$node->stop;
done_testing();
