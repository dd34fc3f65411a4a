# Copyright (c) pg2redis developers
#
# Redriving dead letters (pg2redis_redrive()): a dead letter records the key
# of its row; redriving it reads the row again by that key and applies the
# current rules (the snapshot rules, else the insert rules), in the stream's
# order.  WRONGTYPE refusals (keys pre-set in Redis to strings) make the dead
# letters; once the keys are removed, redriving them makes Redis equal
# PostgreSQL: a row changed since gets its current state, a row deleted since
# gets nothing.  A dead letter without a key (a table without one) is
# refused, so is a dead letter already redriven, and so is a role that is not
# pg2redis_admin or that may not SELECT the table.  Rows updated while their
# redrive runs end in their last state: the redrive never writes an older
# read over a later change of the stream.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use Pg2RedisTest;
use PostgreSQL::Test::Utils;
use Test::More;

my $redis = start_redis(name => 'redrive');
my $node = new_node(
	'redrive',
	redis => $redis,
	flush_interval => '5ms',
	conf => ['pg2redis.snapshot_batch_size = 10']);

$node->safe_psql(
	'postgres', q{
	CREATE TABLE t (id int PRIMARY KEY, v text);
	SELECT pg2redis_add_rule('t', 'insert', 'HSET t:{id} {pairs:*}');
	SELECT pg2redis_add_rule('t', 'update', 'HSET t:{id} {pairs:*}');
	SELECT pg2redis_add_rule('t', 'delete', 'DEL t:{id}');
	CREATE TABLE nokey (v text);
	SELECT pg2redis_add_rule('nokey', 'insert', 'HSET nokey:{v} v {v}');
	CREATE TABLE secret (id int PRIMARY KEY, v text);
	SELECT pg2redis_add_rule('secret', 'insert', 'HSET secret:{id} {pairs:*}');
	CREATE ROLE adm LOGIN IN ROLE pg2redis_admin;
	GRANT SELECT ON t, nokey TO adm;
	CREATE ROLE plain LOGIN;
});

# WRONGTYPE for rows 1 to 4 of t, for nokey and for secret
$redis->call('SET', "t:$_", 'x') foreach 1 .. 4;
$redis->call('SET', 'nokey:a', 'x');
$redis->call('SET', 'secret:1', 'x');
$node->safe_psql(
	'postgres', q{
	INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 5) g;
	INSERT INTO nokey VALUES ('a');
	INSERT INTO secret VALUES (1, 's');
});
# row 2 changes after its dead letter (the update is refused too), row 3 is
# deleted (DEL removes the string: nothing of it is left in Redis)
$node->safe_psql('postgres', "UPDATE t SET v = 'changed' WHERE id = 2");
$node->safe_psql('postgres', 'DELETE FROM t WHERE id = 3');
wait_for_redis($node);
ok( $node->poll_query_until(
		'postgres', "SELECT count(*) = 7 FROM pg2redis.dead_letters"),
	'7 dead letters: 4 inserts and an update of t, nokey, secret')
  or diag($node->safe_psql('postgres', 'TABLE pg2redis.dead_letters'));

is( $node->safe_psql(
		'postgres', q{
		SELECT string_agg(format('%s %s %s %s', relation, op, key,
		                         key_index = 't_pkey'::regclass), ', ' ORDER BY id)
		  FROM pg2redis.dead_letters WHERE relation = 't'::regclass}),
	't insert {1} t, t insert {2} t, t insert {3} t, t insert {4} t, t update {2} t',
	'dead letters record their row\'s key and key index');
is( $node->safe_psql(
		'postgres', q{
		SELECT key IS NULL AND key_index IS NULL
		  FROM pg2redis.dead_letters WHERE relation = 'nokey'::regclass}),
	't', 'the dead letter of a table without a key has no key');

my %dl = map { split /\|/ } split /\n/,
  $node->safe_psql(
	'postgres', q{
	SELECT relation || ':' || coalesce(key[1], '') || ':' || op, id
	  FROM pg2redis.dead_letters});

# the cause is fixed
$redis->call('DEL', "t:$_") foreach 1 .. 4;
$redis->call('DEL', 'nokey:a', 'secret:1');

# who may redrive
my ($ret, $out, $err) =
  $node->psql('postgres', "SELECT * FROM pg2redis_redrive(ARRAY[$dl{'t:1:insert'}]::bigint[])",
	extra_params => [ '-U', 'plain' ]);
like($err, qr/permission denied for function pg2redis_redrive/,
	'a role that is not pg2redis_admin may not redrive');
($ret, $out, $err) =
  $node->psql('postgres', "SELECT * FROM pg2redis_redrive(ARRAY[$dl{'secret:1:insert'}]::bigint[])",
	extra_params => [ '-U', 'adm' ]);
like($err, qr/permission denied for table secret/,
	'pg2redis_admin may not redrive a dead letter of a table it may not SELECT');
($ret, $out, $err) = $node->psql(
	'postgres', q{
	INSERT INTO pg2redis.snapshots (relation, keys_only, retry_keys, key_index)
	VALUES ('secret', true, '{{1}}', 'secret_pkey'::regclass)},
	extra_params => [ '-U', 'adm' ]);
like($err, qr/permission denied to snapshot table (public\.)?secret/,
	'nor write a request for keys of that table itself');

# keyless: refused, with a hint
($ret, $out, $err) =
  $node->psql('postgres', "SELECT * FROM pg2redis_redrive(ARRAY[$dl{'nokey::insert'}]::bigint[])",
	extra_params => [ '-U', 'adm' ]);
like($err, qr/dead letter $dl{'nokey::insert'} has no key/,
	'a dead letter without a key is refused');
like($err, qr/HINT:.*pg2redis_snapshot/, '... with a hint to snapshot the table');

# redrive rows 1 to 3 by id, as adm
my $req = $node->safe_psql(
	'postgres',
	"SELECT string_agg(format('%s %s %s', request, relation, keys), ',')
	   FROM pg2redis_redrive(ARRAY[$dl{'t:1:insert'}, $dl{'t:2:insert'}, $dl{'t:3:insert'}])",
	extra_params => [ '-U', 'adm' ]);
like($req, qr/^\d+ t 3$/, 'one keys-only request for the three keys of t');
my ($req_id) = split / /, $req;
ok(snapshot_reaches($node, $req_id, 'done', 30), 'the redrive request is done')
  or diag($node->safe_psql('postgres', "TABLE pg2redis.snapshots"));
is( $node->safe_psql('postgres', "SELECT rows FROM pg2redis_snapshots WHERE id = $req_id"),
	'2', 'it read two rows: the deleted one is not there');
is_deeply(redis_hash($redis, 't:1'), { id => 1, v => 'v1' }, 'row 1 redriven');
is_deeply(redis_hash($redis, 't:2'), { id => 2, v => 'changed' },
	'row 2 redriven in its current state, not the one of its dead letter');
is($redis->call('EXISTS', 't:3'), 0, 'row 3, deleted since: nothing written');
is( $node->safe_psql(
		'postgres',
		"SELECT count(*) FROM pg2redis.dead_letters
		  WHERE redriven_at IS NOT NULL AND redrive_request = $req_id"),
	'3', 'the dead letters are marked redriven by the request');

($ret, $out, $err) = $node->psql('postgres',
	"SELECT * FROM pg2redis_redrive(ARRAY[$dl{'t:1:insert'}]::bigint[])");
like($err, qr/dead letter $dl{'t:1:insert'} was already redriven/,
	'a dead letter is not redriven twice by accident');

# the rest of t, by relation: row 4 and the update of row 2; the keyless
# table's dead letter is left with a warning
$req = $node->safe_psql('postgres',
	"SELECT string_agg(format('%s %s', relation, keys), ',') FROM pg2redis_redrive(relation => 't')");
is($req, 't 2', 'redrive by relation queues the keys not redriven yet');
($ret, $out, $err) = $node->psql('postgres',
	"SELECT count(*) FROM pg2redis_redrive(relation => 'nokey')");
is($out, '0', 'redrive by relation of keyless dead letters queues nothing');
like($err, qr/WARNING:.*1 dead letter of table "nokey" has no key/,
	'... and says why');
$node->poll_query_until('postgres',
	"SELECT bool_and(state = 'done') FROM pg2redis.snapshots")
  or diag($node->safe_psql('postgres', "TABLE pg2redis.snapshots"));
check_table_in_redis($node, $redis, 't', 't',
	'after redriving, Redis equals t');

# a redrive Redis refuses again is a dead letter of its own, with the key;
# a dead letter whose redriven_at is cleared may be redriven again
$redis->call('DEL', 't:1');
$redis->call('SET', 't:1', 'x');
$node->safe_psql('postgres',
	"UPDATE pg2redis.dead_letters SET redriven_at = NULL WHERE id = $dl{'t:1:insert'}");
$req = $node->safe_psql('postgres',
	"SELECT request FROM pg2redis_redrive(ARRAY[$dl{'t:1:insert'}])");
ok(snapshot_reaches($node, $req, 'done', 30), 'redriven again');
ok( $node->poll_query_until(
		'postgres',
		"SELECT op = 'snapshot' AND key = '{1}' AND redriven_at IS NULL
		   FROM pg2redis.dead_letters ORDER BY id DESC LIMIT 1"),
	'refused again: a dead letter of op snapshot with the key')
  or diag($node->safe_psql('postgres', 'TABLE pg2redis.dead_letters'));
$redis->call('DEL', 't:1');
$req = $node->safe_psql('postgres',
	"SELECT request FROM pg2redis_redrive(ARRAY[(SELECT max(id) FROM pg2redis.dead_letters)])");
ok(snapshot_reaches($node, $req, 'done', 30), 'that one redriven');
is_deeply(redis_hash($redis, 't:1'), { id => 1, v => 'v1' }, 'row 1 is back');

# a partitioned table (dead letters name the partition; redriving the
# parent finds them) and a replica identity index that is not the primary
# key (the key recorded and read is the identity's)
$node->safe_psql(
	'postgres', q{
	CREATE TABLE p (id int, region text, v text, PRIMARY KEY (id, region))
	    PARTITION BY LIST (region);
	CREATE TABLE p_eu PARTITION OF p FOR VALUES IN ('eu');
	CREATE TABLE p_us PARTITION OF p FOR VALUES IN ('us');
	SELECT pg2redis_add_rule('p', 'insert', 'HSET p:{id}:{region} {pairs:*}');
	CREATE TABLE ri (id int PRIMARY KEY, code text NOT NULL UNIQUE, v text);
	ALTER TABLE ri REPLICA IDENTITY USING INDEX ri_code_key;
	SELECT pg2redis_add_rule('ri', 'insert', 'HSET ri:{id} {pairs:*}');
});
$redis->call('SET', $_, 'x') foreach ('p:1:eu', 'p:2:us', 'ri:1');
$node->safe_psql(
	'postgres', q{
	INSERT INTO p VALUES (1, 'eu', 'a'), (2, 'us', 'b'), (3, 'us', 'c');
	INSERT INTO ri VALUES (1, 'c1', 'a');
});
wait_for_redis($node);
ok( $node->poll_query_until(
		'postgres', q{
		SELECT string_agg(format('%s %s %s', relation, key, key_index::regclass), ', ' ORDER BY id)
		       = 'p_eu {1,eu} p_eu_pkey, p_us {2,us} p_us_pkey, ri {c1} ri_code_key'
		  FROM pg2redis.dead_letters WHERE relation::text ~ '^(p_|ri)'}),
	'keys of partitions, and of the replica identity index')
  or diag($node->safe_psql('postgres', 'TABLE pg2redis.dead_letters'));
$redis->call('DEL', 'p:1:eu', 'p:2:us', 'ri:1');
is( $node->safe_psql(
		'postgres',
		"SELECT string_agg(format('%s %s', relation, keys), ', ' ORDER BY relation::text)
		   FROM pg2redis_redrive(relation => 'p')"),
	'p_eu 1, p_us 1', 'redriving the parent queues one request per partition');
$req = $node->safe_psql('postgres',
	"SELECT request FROM pg2redis_redrive(relation => 'ri')");
ok( $node->poll_query_until(
		'postgres', "SELECT bool_and(state = 'done') FROM pg2redis.snapshots"),
	'the requests are done');
check_table_in_redis($node, $redis, 'ri', 'ri', 'ri redriven by its identity');
is_deeply(
	[ map { redis_hash($redis, $_) } ('p:1:eu', 'p:2:us', 'p:3:us') ],
	[
		{ id => 1, region => 'eu', v => 'a' },
		{ id => 2, region => 'us', v => 'b' },
		{ id => 3, region => 'us', v => 'c' }
	],
	'p redriven');

# order: rows updated while their redrive runs end in their last state.
# Their inserts are refused; only the redrive writes their id field, and
# the update writes n alone.  A snapshot filter that sleeps keeps each
# chunk's window open long enough for the update to commit in one: the
# chunk must not write the rows it read before the update after it.
$node->safe_psql(
	'postgres', q{
	CREATE TABLE o (id int PRIMARY KEY, n int);
	SELECT pg2redis_add_rule('o', 'insert', 'HSET o:{id} id {id} n {n}');
	SELECT pg2redis_add_rule('o', 'update', 'HSET o:{id} n {n}');
	INSERT INTO pg2redis.snapshot_filters VALUES ('o', 'pg_sleep(0.01) IS NOT NULL');
	CREATE TABLE marks (what text, at timestamptz);
});
$redis->pipeline(map { [ 'SET', "o:$_", 'x' ] } 1 .. 200);
$node->safe_psql('postgres',
	'INSERT INTO o SELECT g, 0 FROM generate_series(1, 200) g');
wait_for_redis($node);
ok( $node->poll_query_until(
		'postgres',
		"SELECT count(*) = 200 FROM pg2redis.dead_letters WHERE relation = 'o'::regclass"),
	'200 dead letters of o');
$redis->pipeline(map { [ 'DEL', "o:$_" ] } 1 .. 200);
# requests of snapshot_batch_size (10) keys each, served one after another
my ($first, $nreq);
($first, $req, $nreq) = split /\|/, $node->safe_psql('postgres',
	"SELECT min(request), max(request), count(*) FROM pg2redis_redrive('o'::regclass, now() - interval '1 hour')");
is($nreq, 20, 'the redrive of o is 20 requests of 10 keys');
ok( poll_until(
		30,
		sub {
			$node->safe_psql('postgres',
				"SELECT sum(rows) >= 20 FROM pg2redis.snapshots WHERE id BETWEEN $first AND $req") eq 't';
		}),
	'the redrive of o is under way');
$node->safe_psql('postgres', q{
	UPDATE o SET n = n + 1;
	INSERT INTO marks VALUES ('update', clock_timestamp());
});
ok(snapshot_reaches($node, $req, 'done', 60), 'the redrive of o is done')
  or diag($node->safe_psql('postgres', "TABLE pg2redis.snapshots"));
is( $node->safe_psql(
		'postgres', qq{
		SELECT s.finished_at > m.at FROM pg2redis.snapshots s, marks m
		 WHERE s.id = $req}),
	't', 'the rows were updated while the redrive ran');
wait_for_redis($node);
check_table_in_redis($node, $redis, 'o', 'o',
	'rows updated while redriven end in their last state');

$node->stop;
done_testing();
