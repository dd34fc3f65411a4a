# Copyright (c) pg2redis developers
#
# Snapshots never run code a non-superuser controls with superuser rights.
# An unprivileged table owner (erin) gives her mapped tables a domain-typed
# primary key whose CHECK calls her function, and an enum primary key with
# her own cast from text; tables bigger than pg2redis.snapshot_batch_size
# (so that later chunks are selected by the last key) are updated while
# their snapshots run (so that keys are selected again).  A database-level
# search_path puts her now() and =(regclass, regclass) in front of
# pg_catalog.  Snapshot watermarks are forged with pg_logical_emit_message(),
# and a pgwalk config with an injected filter is imported.  Her functions
# must never run as the superuser (a snapshot filter may run them, as her),
# she must not become superuser, and Redis must equal PostgreSQL.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Pg2RedisTest;
use Test::More;
use JSON::PP;

my $redis = start_redis(name => 'secsnap');
my $node = new_node(
	'secsnap',
	redis => $redis,
	flush_interval => '5ms',
	conf => ['pg2redis.snapshot_batch_size = 10']);
my $super = $node->safe_psql('postgres',
	'SELECT rolname FROM pg_catalog.pg_roles WHERE oid = 10');

# erin owns a schema and her tables; she has no pg2redis privilege.  Each of
# her functions logs who runs it, and makes her superuser if it can.
$node->safe_psql(
	'postgres', q{
	CREATE ROLE erin LOGIN;
	CREATE SCHEMA erin AUTHORIZATION erin;
	CREATE ROLE mallory LOGIN;
});
$node->safe_psql(
	'postgres', q{
	SET ROLE erin;
	CREATE FUNCTION erin.pwn(what text) RETURNS boolean LANGUAGE plpgsql AS $$
	BEGIN
		RAISE LOG 'pg2redis-test: % ran as %', what, current_user;
		IF (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user) THEN
			EXECUTE 'ALTER ROLE erin SUPERUSER';
		END IF;
		RETURN true;
	END
	$$;
	CREATE FUNCTION erin.f(v int) RETURNS boolean LANGUAGE sql
		AS $$ SELECT erin.pwn('domain check') $$;
	CREATE DOMAIN erin.okey AS int CHECK (erin.f(VALUE));
	CREATE TABLE erin.orders (id erin.okey PRIMARY KEY, v int);

	DO $$ BEGIN
		EXECUTE 'CREATE TYPE erin.color AS ENUM ('
		  || (SELECT string_agg(pg_catalog.quote_literal('c' || pg_catalog.lpad(g::text, 3, '0')), ', ')
		        FROM pg_catalog.generate_series(1, 40) g) || ')';
	END $$;
	CREATE FUNCTION erin.text_to_color(t text) RETURNS erin.color LANGUAGE plpgsql AS $$
	BEGIN
		PERFORM erin.pwn('cast to color');
		RETURN (SELECT c FROM pg_catalog.unnest(pg_catalog.enum_range(NULL::erin.color)) c
		         WHERE c::text OPERATOR(pg_catalog.=) t);
	END
	$$;
	CREATE CAST (text AS erin.color) WITH FUNCTION erin.text_to_color(text);
	CREATE TABLE erin.paints (id erin.color PRIMARY KEY, v int);
	CREATE FUNCTION erin.keep(v int) RETURNS boolean LANGUAGE sql
		AS $$ SELECT erin.pwn('filter') AND v >= 0 $$;
	-- a two-column text key whose values hold the unit separator U+001F
	CREATE TABLE erin.pairs (a text, b text, v int, PRIMARY KEY (a, b));
	CREATE FUNCTION erin.slow(v int) RETURNS boolean LANGUAGE plpgsql AS $$
	BEGIN
		PERFORM pg_catalog.pg_sleep(0.001);
		RETURN true;
	END
	$$;
});

# the superuser maps erin's tables (and one of its own, for the watermarks)
$node->safe_psql(
	'postgres', q{
	SELECT pg2redis_add_rule('erin.orders', op, ARRAY['HSET', 'ord:{id}', '{pairs:*}'])
	  FROM unnest(ARRAY['insert', 'update']) op;
	SELECT pg2redis_add_rule('erin.orders', 'delete', 'DEL ord:{id}');
	SELECT pg2redis_add_rule('erin.paints', op, ARRAY['HSET', 'paint:{id}', '{pairs:*}'])
	  FROM unnest(ARRAY['insert', 'update']) op;
	SELECT pg2redis_add_rule('erin.paints', 'delete', 'DEL paint:{id}');
	SELECT pg2redis_add_rule('erin.pairs', op, 'HSET pairs {a}|{b} {v}')
	  FROM unnest(ARRAY['insert', 'update']) op;

	CREATE TABLE acct (id int PRIMARY KEY, balance int);
	ALTER TABLE acct REPLICA IDENTITY FULL;
	SELECT pg2redis_add_rule('acct', 'insert', 'HSET acct:{id} balance {balance}');
	SELECT pg2redis_add_rule('acct', 'snapshot', 'HSET acct:{id} balance {balance}');
	SELECT pg2redis_add_rule('acct', 'update', 'HINCRBY acct:{id} balance {diff:balance}');
	CREATE TABLE filler (id int, pad text);
});
$node->safe_psql(
	'postgres', q{
	SET ROLE erin;
	INSERT INTO erin.orders SELECT g, g FROM generate_series(1, 1000) g;
	INSERT INTO erin.paints SELECT c, 1 FROM unnest(enum_range(NULL::erin.color)) c;
	INSERT INTO erin.pairs SELECT 'k' || g % 50, 'b' || g, g FROM generate_series(1, 300) g;
	INSERT INTO erin.pairs VALUES ('p' || chr(31) || 'q', 'r', 1), ('p', 'q' || chr(31) || 'r', 2);
});
$node->safe_psql('postgres', 'INSERT INTO acct VALUES (1, 120)');
wait_for_redis($node, 60, 'the rows are streamed');

# superuser_ran returns the log lines (from $offset) of erin's functions run
# as the superuser.
sub superuser_ran
{
	my ($offset) = @_;
	return log_lines($node, qr/pg2redis-test: .* ran as \Q$super\E\b/,
		$offset);
}

# erin_is_super tells whether erin became superuser, and takes it back, so
# that each part of the test starts over.
sub erin_is_super
{
	my $r = $node->safe_psql('postgres',
		"SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = 'erin'");
	$node->safe_psql('postgres', 'ALTER ROLE erin NOSUPERUSER');
	return $r eq 't';
}

# --- forged watermarks ----------------------------------------------------

# The worker is paused while a big transaction on an unmapped table, forged
# high watermarks for the next requests' first chunks, an update and the
# request are committed.  Once resumed, it opens the chunk after one decoding
# batch, long before it decodes the forged messages: a chunk sent at one of
# them would land before the update, which HINCRBY would then apply twice.
$node->append_conf('postgresql.conf', "pg2redis.enabled = off\n");
$node->reload;
wait_for_status($node, 'state', 'paused', 30, 'the worker pauses');
$node->safe_psql('postgres',
	"INSERT INTO filler SELECT g, 'x' FROM generate_series(1, 60000) g");
my $next = $node->safe_psql('postgres',
	'SELECT last_value + is_called::int FROM pg2redis.snapshots_id_seq');
$node->safe_psql(
	'postgres', qq{
	SET ROLE mallory;
	SELECT count(pg_logical_emit_message(false, 'pg2redis', m))
	  FROM generate_series($next, $next + 2) id, generate_series(1, 50) seq,
	       LATERAL (VALUES (format('H:%s:%s', id, seq)), (format('L:%s:%s', id, seq))) v(m);
});
$node->safe_psql('postgres', 'UPDATE acct SET balance = 150 WHERE id = 1');
my $wid = $node->safe_psql('postgres', "SELECT pg2redis_snapshot('acct')");
is($wid, $next, 'the request got the id the forger guessed');
$node->append_conf('postgresql.conf', "pg2redis.enabled = on\n");
$node->reload;
ok(snapshot_reaches($node, $wid, 'done', 60), 'the snapshot under forged watermarks is done');
wait_for_redis($node, 60, 'stream caught up after the forged watermarks');
is($redis->call('HGET', 'acct:1', 'balance'), '150',
	'forged watermarks are ignored: the update is applied once (Redis equals PostgreSQL)');

# --- key types the table owner controls ---------------------------------

# Chunks of 10 rows: every chunk after the first is selected after the last
# key sent; concurrent updates make the stream drop rows from open chunks,
# which are then selected again by key.  A slow filter (1 ms a row) keeps
# the chunks of erin.pairs open while every row of it is updated.
$node->append_conf('postgresql.conf', "log_min_messages = debug1\n");
$node->reload;
$node->safe_psql('postgres',
	"INSERT INTO pg2redis.snapshot_filters VALUES ('erin.pairs', 'erin.slow(v)')");
my $offset = -s $node->logfile;
$redis->call('FLUSHALL');
my $w = '';
for my $i (1 .. 200)
{
	$w .= "UPDATE erin.orders SET v = v + 1 WHERE id % 50 = " . ($i % 50) . ";\n"
	  . "UPDATE erin.paints SET v = v + 1 WHERE id = 'c" . sprintf('%03d', $i % 40 + 1) . "';\n"
	  . "UPDATE erin.pairs SET v = v + 1;\n"
	  . "SELECT pg_sleep(0.01);\n";
}
my $bg = start_psql_script($node, "SET ROLE erin;\n$w");
my $kid = $node->safe_psql('postgres', "SELECT pg2redis_snapshot('erin.pairs')");
my $oid = $node->safe_psql('postgres', "SELECT pg2redis_snapshot('erin.orders')");
my $pid = $node->safe_psql('postgres', "SELECT pg2redis_snapshot('erin.paints')");
my ($rc, $out, $err) = finish_psql_script($bg);
is($rc, 0, 'the concurrent workload ran') or diag($err);
ok(snapshot_reaches($node, $oid, 'done', 120), 'the snapshot of the domain-keyed table is done')
  or diag($node->safe_psql('postgres', "SELECT error FROM pg2redis_snapshots WHERE id = $oid"));
ok(snapshot_reaches($node, $pid, 'done', 120), 'the snapshot of the enum-keyed table is done')
  or diag($node->safe_psql('postgres', "SELECT error FROM pg2redis_snapshots WHERE id = $pid"));
ok(snapshot_reaches($node, $kid, 'done', 120), 'the snapshot of the two-column text key is done')
  or diag($node->safe_psql('postgres', "SELECT error FROM pg2redis_snapshots WHERE id = $kid"));
wait_for_redis($node, 60, 'stream caught up after the snapshots');
is(join("\n", superuser_ran($offset)), '',
	'the domain CHECK and the cast from text never ran as the superuser');
ok(!erin_is_super(), 'the table owner did not become superuser through her key types');
check_table_in_redis($node, $redis, 'erin.orders', 'ord',
	'after the snapshot, Redis equals PostgreSQL (domain key)');
check_table_in_redis($node, $redis, 'erin.paints', 'paint',
	'after the snapshot, Redis equals PostgreSQL (enum key)');
my $json = JSON::PP->new->utf8->canonical;
is( $json->encode({ @{ $redis->call('HGETALL', 'pairs') } }),
	$json->encode($json->decode($node->safe_psql('postgres',
		"SELECT json_object_agg(a || '|' || b, v::text) FROM erin.pairs"))),
	'after the snapshot, Redis equals PostgreSQL (two-column key with U+001F)');
ok(log_lines($node, qr/reads \d+ rows of "pairs" again/, $offset),
	'rows the stream changed while their chunk was open were read again by key');
$node->safe_psql('postgres', 'DELETE FROM pg2redis.snapshot_filters');
$node->append_conf('postgresql.conf', "log_min_messages = warning\n");
$node->reload;

# --- snapshot filters -----------------------------------------------------

# A filter may call the owner's functions: they run as the owner, in the
# on-demand chunks and in the initial load after a resync.
$offset = -s $node->logfile;
$node->safe_psql('postgres',
	"INSERT INTO pg2redis.snapshot_filters VALUES ('erin.orders', 'erin.keep(v) AND id <= 500')");
$redis->call('FLUSHALL');
my $fid = $node->safe_psql('postgres', "SELECT pg2redis_snapshot('erin.orders')");
ok(snapshot_reaches($node, $fid, 'done', 60), 'the filtered snapshot is done')
  or diag($node->safe_psql('postgres', "SELECT error FROM pg2redis_snapshots WHERE id = $fid"));
wait_for_redis($node, 60, 'filtered snapshot applied');
check_table_in_redis($node, $redis, 'erin.orders', 'ord',
	'the filtered snapshot wrote the rows the filter keeps',
	where => 'id <= 500');
ok(log_lines($node, qr/pg2redis-test: filter ran as erin\b/, $offset),
	'the filter ran as the table owner');

# The import refuses a filter that is not one boolean expression.
my ($irc, $iout, $ierr) = $node->psql(
	'postgres', q{SELECT pg2redis_import('{"snapshot": {"config": [{"name": "erin.orders", "type": "query",
		"query": "SELECT * FROM erin.orders WHERE v > 0) UNION ALL SELECT NULL WHERE (true"}]}}')});
isnt($irc, 0, 'the import of an injected filter is refused');
like($ierr, qr/snapshot filter/, 'and says why');
is($node->safe_psql('postgres', 'SELECT filter FROM pg2redis.snapshot_filters'),
	'erin.keep(v) AND id <= 500', 'the stored filter is unchanged');

$redis->call('FLUSHALL');
$node->safe_psql('postgres', 'SELECT pg2redis_resync()');
ok( poll_until(60, sub { log_lines($node, qr/initial load sent/, $offset) }),
	'the resync loaded the tables again');
wait_for_redis($node, 60, 'resync applied');
check_table_in_redis($node, $redis, 'erin.orders', 'ord',
	'the initial load wrote the rows the filter keeps',
	where => 'id <= 500');
check_table_in_redis($node, $redis, 'erin.paints', 'paint',
	'the initial load wrote the unfiltered table');
is(join("\n", superuser_ran($offset)), '', 'the filter never ran as the superuser');
ok(!erin_is_super(), 'the table owner did not become superuser through a filter');
$node->safe_psql('postgres', 'DELETE FROM pg2redis.snapshot_filters');

# --- a search_path set for the database -------------------------------------

# The database owner's setting reaches the worker when it starts (it is
# reset right after, so that the test's own sessions do not use it).
$node->safe_psql(
	'postgres', q{
	SET ROLE erin;
	CREATE FUNCTION erin.now() RETURNS timestamptz LANGUAGE plpgsql AS $$
	BEGIN
		PERFORM erin.pwn('now()');
		RETURN pg_catalog.now();
	END
	$$;
	CREATE FUNCTION erin.regclass_eq(a regclass, b regclass) RETURNS boolean LANGUAGE plpgsql AS $$
	BEGIN
		PERFORM erin.pwn('=(regclass, regclass)');
		RETURN a::pg_catalog.oid OPERATOR(pg_catalog.=) b::pg_catalog.oid;
	END
	$$;
	CREATE OPERATOR erin.= (LEFTARG = regclass, RIGHTARG = regclass, FUNCTION = erin.regclass_eq);
});
$offset = -s $node->logfile;
my $old_pid = worker_pid($node);
$node->safe_psql('postgres',
	'ALTER DATABASE postgres SET search_path = erin, pg_catalog, public');
$node->safe_psql('postgres', "SELECT pg_terminate_backend($old_pid)");
ok( poll_until(
		60,
		sub {
			my $p = worker_pid($node);
			defined $p && $p ne $old_pid;
		}),
	'the worker restarted with the database setting');
$node->safe_psql('postgres', 'ALTER DATABASE postgres RESET search_path');
wait_for_status($node, 'state', 'streaming', 60, 'the restarted worker streams');
$redis->call('FLUSHALL');
$node->safe_psql('postgres',
	"INSERT INTO pg2redis.snapshot_filters VALUES ('erin.paints', 'v >= 0')");
my $sid = $node->safe_psql('postgres', "SELECT pg2redis_snapshot('erin.paints')");
ok(snapshot_reaches($node, $sid, 'done', 60), 'the snapshot under the database search_path is done')
  or diag($node->safe_psql('postgres', "SELECT error FROM pg2redis_snapshots WHERE id = $sid"));
wait_for_redis($node, 60, 'snapshot applied');
check_table_in_redis($node, $redis, 'erin.paints', 'paint',
	'after the snapshot, Redis equals PostgreSQL');
is(join("\n", log_lines($node, qr/pg2redis-test: .* ran as /, $offset)), '',
	"the worker resolved none of erin's functions or operators");
ok(!erin_is_super(), 'the database owner did not become superuser through the search_path');

$node->stop;
done_testing();
