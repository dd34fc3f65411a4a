# Copyright (c) pg2redis developers
#
# The initial load cannot be stopped for good by one table (attack review of
# the F5 fix): here the owner of a table with a snapshot filter revokes her
# own SELECT, so the filter's query, which runs as the owner, fails.  The
# first load ends the worker once (last_error says why); the next one skips
# that table with a WARNING and a dead letter, loads the others, and the
# stream starts.  Before, the worker restarted every 5 s for ever.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use Pg2RedisTest;
use PostgreSQL::Test::Utils;
use Test::More;

my $redis = start_redis();
my $node  = new_node(
	'loadfail',
	redis          => $redis,
	conf           => [ 'pg2redis.enabled = off' ],
	wait_streaming => 0);
$node->safe_psql('postgres', q{
	CREATE ROLE erin LOGIN;
	CREATE SCHEMA erin AUTHORIZATION erin;
	SET ROLE erin;
	CREATE TABLE erin.t (id int PRIMARY KEY, v text);
	INSERT INTO erin.t VALUES (1, 'live'), (2, 'archived');
	RESET ROLE;
	CREATE TABLE other (id int PRIMARY KEY);
	INSERT INTO other SELECT generate_series(1, 10);
	SELECT pg2redis_add_rule('erin.t', 'insert', 'SET t:{id} {v}');
	SELECT pg2redis_add_rule('other', 'insert', 'SET other:{id} 1');
	INSERT INTO pg2redis.snapshot_filters VALUES ('erin.t', $$v <> 'archived'$$);
	SET ROLE erin;
	REVOKE SELECT ON erin.t FROM erin;
});

my $offset = -s $node->logfile;
$node->append_conf('postgresql.conf', "pg2redis.enabled = on\n");
$node->reload;
wait_for_status($node, 'state', 'streaming', 90, 'the stream starts after the load');
is(scalar(redis_keys($redis, 'other:*')), 10, 'the other table is loaded');
is($redis->call('EXISTS', 't:1'), '0', 'the table whose filter fails is not');
my @exits = log_lines($node, qr/background worker "pg2redis" \(PID \d+\) exited with exit code 1/,
	$offset);
cmp_ok(scalar(@exits), '<=', 1, 'the worker restarted at most once');
ok(log_lines($node, qr/WARNING:  the snapshot filter of table "t" failed: permission denied/,
		$offset), 'a WARNING names the table and the reason');
ok(poll_until(30, sub {
		$node->safe_psql('postgres',
			q{SELECT count(*) FROM pg2redis.dead_letters WHERE error LIKE '%snapshot filter of table "t" failed%'}) eq '1' }),
	'and a dead letter records it');
like(status_row($node)->{last_error} // '', qr/during the initial load: .*permission denied/,
	'last_error says what stopped the first load');

# The stream goes on, and the table loads once its owner may read it again.
$node->safe_psql('postgres', q{
	INSERT INTO other VALUES (11);
	SET ROLE erin;
	GRANT SELECT ON erin.t TO erin;
});
my $rid = $node->safe_psql('postgres', q{SELECT pg2redis_snapshot('erin.t')});
ok(snapshot_reaches($node, $rid, 'done', 60), 'a snapshot of the table works once it is fixed');
wait_for_redis($node);
is($redis->call('GET', 'other:11'), '1', 'the stream goes on');
is($redis->call('GET', 't:1'), 'live', 'the table is loaded by its snapshot, filter applied');
is($redis->call('EXISTS', 't:2'), '0', 'and the filtered-out row is not');

# The owner's code cannot hold the worker up for long: a filter that sleeps
# fails its request after pg2redis.snapshot_statement_timeout, and the
# stream goes on meanwhile.
$node->append_conf('postgresql.conf', "pg2redis.snapshot_statement_timeout = '1s'\n");
$node->reload;
$node->safe_psql('postgres', q{
	SET ROLE erin;
	CREATE FUNCTION erin.slow(v text) RETURNS boolean LANGUAGE plpgsql AS $$
	BEGIN
		PERFORM pg_catalog.pg_sleep(30);
		RETURN true;
	END
	$$;
	RESET ROLE;
	UPDATE pg2redis.snapshot_filters SET filter = 'erin.slow(v)' WHERE relation = 'erin.t'::regclass;
});
my $t0  = time();
my $slow = $node->safe_psql('postgres', q{SELECT pg2redis_snapshot('erin.t')});
ok(snapshot_reaches($node, $slow, 'failed', 30), 'a snapshot whose filter sleeps fails');
cmp_ok(time() - $t0, '<', 20, 'after the timeout, not after the sleep');
like($node->safe_psql('postgres', "SELECT error FROM pg2redis_snapshots WHERE id = $slow"),
	qr/statement timeout/, 'saying why');
$node->safe_psql('postgres', 'INSERT INTO other VALUES (12)');
wait_for_redis($node);
is($redis->call('GET', 'other:12'), '1', 'and the stream goes on');

# A timeout that fires after the owner's query returned, while the worker
# renders the rows (no interrupt check there), fails the request; it does
# not end the worker later in its loop, which made every new worker serve
# the request again (re-attack of the timeout).
$node->safe_psql('postgres', q{
	CREATE TABLE erin.w (id int PRIMARY KEY, v text);
	ALTER TABLE erin.w OWNER TO erin;
	ALTER TABLE erin.w ALTER v SET STORAGE EXTERNAL;
	INSERT INTO erin.w SELECT g, repeat(md5(g::text), 3000) FROM generate_series(1, 1000) g;
	SELECT pg2redis_add_rule('erin.w', 'snapshot', ARRAY['HSET', 'ew:{id}', 'v', '{v}', 'v2', '{v}', 'v3', '{v}']);
	SET ROLE erin;
	CREATE FUNCTION erin.probe(i int) RETURNS boolean LANGUAGE plpgsql AS $$
	BEGIN
		IF i = 1 THEN PERFORM pg_catalog.pg_sleep(0.95); END IF;
		RETURN true;
	END
	$$;
	RESET ROLE;
	INSERT INTO pg2redis.snapshot_filters VALUES ('erin.w', 'erin.probe(id)');
});
my $before = worker_pid($node);
my $wreq = $node->safe_psql('postgres', q{SELECT pg2redis_snapshot('erin.w')});
ok( poll_until(60, sub {
		$node->safe_psql('postgres', "SELECT state FROM pg2redis_snapshots WHERE id = $wreq")
		  =~ /^(done|failed)$/ }),
	'the request ends');
is(worker_pid($node), $before, 'the worker was never restarted');
$node->safe_psql('postgres', 'INSERT INTO other VALUES (13)');
wait_for_redis($node);
is($redis->call('GET', 'other:13'), '1', 'the stream goes on');

$node->stop;
done_testing();
