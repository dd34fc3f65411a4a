# Copyright (c) pg2redis developers
#
# The worker's control paths: pg2redis.enabled = off pauses (and the slot
# keeps its position); pg2redis.on_command_error = stop stops on a rejected
# command, keeps the position, and resumes on reload once the cause is
# fixed; pg2redis_resync() reloads everything after Redis lost its data;
# the worker's own slot refuses SQL readers; the password can come from
# pg2redis.redis_password_file; pg2redis.decoding_work_mem applies on reload.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Pg2RedisTest;
use Test::More;

my $redis = start_redis(name => 'ctl', requirepass => 's3cret pass');
my $pwfile = PostgreSQL::Test::Utils::tempdir() . '/redis.pw';
PostgreSQL::Test::Utils::append_to_file($pwfile, "s3cret pass\n");
chmod 0600, $pwfile;

my $node = new_node(
	'control',
	redis_url => 'redis://127.0.0.1:' . $redis->port . '/0',
	flush_interval => '5ms',
	conf => ["pg2redis.redis_password_file = '$pwfile'"]);
wait_for_status($node, 'state', 'streaming', 60,
	'the password comes from pg2redis.redis_password_file');

$node->safe_psql(
	'postgres', q{
	CREATE TABLE t (id int PRIMARY KEY, v text);
	SELECT pg2redis_add_rule('t', 'insert', 'SET t:{id} {v}');
	SELECT pg2redis_add_rule('t', 'insert', 'SADD t:ids {id}');
	SELECT pg2redis_add_rule('t', 'insert', 'INCR t:count');
});
$node->safe_psql('postgres', "INSERT INTO t VALUES (1, 'one')");
wait_for_redis($node, 30, 'first insert applied');
is($redis->call('GET', 't:1'), 'one', 'row 1 is in Redis');

# The worker's slot refuses SQL readers.
my ($rc, $out, $err) = $node->psql('postgres',
	"SET output_plugin_libraries = pgoutput, test_decoding, pg2redis; "
	  . "SELECT * FROM pg_logical_slot_peek_changes('pg2redis', NULL, NULL)");
isnt($rc, 0, 'reading the worker slot through SQL fails');
like($err, qr/active for PID|belongs to the pg2redis worker/,
	'the error says the slot is the worker\'s');

# Pause: changes wait, the slot keeps them, status says paused.
$node->append_conf('postgresql.conf', 'pg2redis.enabled = off');
$node->reload;
wait_for_status($node, 'state', 'paused', 30, 'enabled = off pauses');
$node->safe_psql('postgres', "INSERT INTO t VALUES (2, 'two')");
is($node->safe_psql('postgres', "SELECT pg2redis_wait('1s')"),
	'f', 'pg2redis_wait times out while paused');
is($redis->call('EXISTS', 't:2'), '0', 'nothing reaches Redis while paused');
$node->append_conf('postgresql.conf', 'pg2redis.enabled = on');
$node->reload;
wait_for_redis($node, 30, 'resumed after enabled = on');
is($redis->call('GET', 't:2'), 'two', 'the change made while paused arrives');

# Stop mode: a rejected command stops the stream and keeps the position.
$node->append_conf('postgresql.conf', 'pg2redis.on_command_error = stop');
$node->reload;
$node->safe_psql('postgres', "SELECT pg_sleep(0.5)");
$redis->call('SET', 't:ids', 'not a set');
$node->safe_psql('postgres', "INSERT INTO t VALUES (3, 'three')");
wait_for_status($node, 'state', 'stopped', 30, 'a rejected command stops the stream');
like(status_row($node)->{last_error}, qr/WRONGTYPE/, 'last_error says why');
$node->safe_psql('postgres', "INSERT INTO t VALUES (4, 'four')");
is($node->safe_psql('postgres', "SELECT pg2redis_wait('2s')"),
	'f', 'nothing is applied while stopped');
is($redis->call('EXISTS', 't:4'), '0', 'the later change waits');
ok( $node->poll_query_until('postgres',
		"SELECT count(*) = 1 FROM pg2redis.dead_letters WHERE error LIKE 'WRONGTYPE%'"),
	'the rejected command is a dead letter');

# Fix the cause, reload: the worker restarts and goes on from its position.
$redis->call('DEL', 't:ids');
$node->append_conf('postgresql.conf', 'pg2redis.on_command_error = dead_letter');
$node->reload;
wait_for_redis($node, 60, 'the stream resumes after reload');
is($redis->call('GET', 't:4'), 'four', 'the change made while stopped arrives');
is($redis->call('GET', 't:count'), '4', 'INCR applied once per row, stop included');

# Redis loses its data: resync loads everything again.
$redis->call('FLUSHALL');
$node->safe_psql('postgres', "SELECT pg2redis_resync()");
poll_until(60, sub { ($redis->call('EXISTS', 't:4') // '') eq '1' })
  or diag(status_text($node));
wait_for_status($node, 'state', 'streaming', 60, 'streaming again after resync');
$node->safe_psql('postgres', "INSERT INTO t VALUES (5, 'five')");
wait_for_redis($node, 30, 'streaming after resync');
is_deeply([ redis_smembers($redis, 't:ids') ], [ 1, 2, 3, 4, 5 ],
	'resync reloaded every row and the stream went on');
is($redis->call('GET', 't:count'), '5', 'the reloaded counter equals the rows');

# pg2redis.decoding_work_mem applies on reload, without a restart: a
# transaction larger than the new 64kB spills to disk (the slot's
# spill_txns counts it).  The reload reaches the worker asynchronously, so
# try a few transactions.
$node->safe_psql('postgres', "CREATE TABLE big (id int, v text)");
$node->append_conf('postgresql.conf', "pg2redis.decoding_work_mem = '64kB'");
$node->reload;
my $spilled = 0;
for my $try (1 .. 5)
{
	$node->safe_psql('postgres',
		"INSERT INTO big SELECT g, repeat('x', 200) FROM generate_series(1, 2000) g");
	wait_for_redis($node, 30, "big transaction $try decoded");
	$spilled = $node->safe_psql('postgres',
		"SELECT spill_txns > 0 FROM pg_stat_replication_slots WHERE slot_name = 'pg2redis'")
	  eq 't';
	last if $spilled;
	sleep 1;
}
ok($spilled, 'a new pg2redis.decoding_work_mem applies on reload');

# No password in the log or the status.
my $status = status_text($node);
unlike($status, qr/s3cret/, 'the password is not in pg2redis_status()');
ok(!log_lines($node, qr/s3cret/), 'the password is not in the server log');

$node->stop;

# A unix:// URL, with a database number.
my $sockdir = PostgreSQL::Test::Utils::tempdir_short();
my $unix = start_redis(name => 'unix', extra_args => [ '--unixsocket', "$sockdir/redis.sock" ]);
my $unode = new_node('unix', redis_url => "unix://$sockdir/redis.sock?db=3",
	flush_interval => '5ms');
wait_for_status($unode, 'state', 'streaming', 60, 'streaming over a unix socket');
$unode->safe_psql('postgres', q{
	CREATE TABLE u (id int PRIMARY KEY);
	SELECT pg2redis_add_rule('u', 'insert', 'SADD u {id}');
	INSERT INTO u VALUES (1), (2);
});
wait_for_redis($unode, 30, 'changes arrive over a unix socket');
is($unix->cli('-n', '3', 'SCARD', 'u'), '2',
	'the rows are in database 3 of the unix-socket Redis');
is($unode->safe_psql('postgres', "SELECT pg2redis_redis('SCARD', 'u')"), '2',
	'pg2redis_redis uses the unix socket and database too');

# DROP EXTENSION and CREATE EXTENSION again: the worker picks up the new
# rules table and streams by the rules added to it.
# The worker decodes a change while there is no extension (and so no rules
# table) before the extension comes back.
$unode->safe_psql('postgres', 'DROP EXTENSION pg2redis CASCADE');
$unode->safe_psql('postgres', 'INSERT INTO u VALUES (10)');
sleep(2);
$unode->safe_psql('postgres', q{
	CREATE EXTENSION pg2redis;
	SELECT pg2redis_add_rule('u', 'insert', 'SADD u2 {id}');
	INSERT INTO u VALUES (3);
});
wait_for_redis($unode, 60, 'streaming after the extension was created again');
is($unix->cli('-n', '3', 'SMEMBERS', 'u2'), '3',
	'a rule of the re-created extension applies');
$unode->stop;
done_testing();
