# Copyright (c) pg2redis developers
#
# A primary-key change is applied as the delete rules on the old row and
# the insert rules on the new one.  With REPLICA IDENTITY DEFAULT, a value
# stored out of line (TOAST) that the update did not change is not in the
# WAL: the new row carries only a pointer and the old row only the key.
# It used to be left out of {pairs}/{json} as for an update in place, so
# the new key's hash silently lacked the field (the old key, which had it,
# deleted): no error, no dead letter.  It is now a render error, a dead
# letter naming the column, with REPLICA IDENTITY FULL as the remedy; with
# FULL the value comes from the old row.  Found by t/165 (seed 1).

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use Pg2RedisTest;
use PostgreSQL::Test::Utils;
use Test::More;

my $redis = start_redis();
my $node  = new_node('keychange_toast', redis => $redis, flush_interval => '5ms');

$node->safe_psql('postgres', q{
	CREATE TABLE kd (id int PRIMARY KEY, name text, body text);
	CREATE TABLE kf (id int PRIMARY KEY, name text, body text);
	ALTER TABLE kf REPLICA IDENTITY FULL;
	SELECT pg2redis_add_rule(t, op, ARRAY['HSET', t || ':{id}', '{pairs:*}'])
	  FROM unnest(ARRAY['kd', 'kf']) t, unnest(ARRAY['insert', 'update']) op;
	SELECT pg2redis_add_rule(t, 'insert', ARRAY['SET', t || ':j:{id}', '{json:*}'])
	  FROM unnest(ARRAY['kd', 'kf']) t;
	SELECT pg2redis_add_rule(t, 'delete', ARRAY['DEL', t || ':{id}', t || ':j:{id}'])
	  FROM unnest(ARRAY['kd', 'kf']) t;
	-- 6.4 kB of md5 text: incompressible, stored out of line
	INSERT INTO kd SELECT 1, 'big', string_agg(md5(g::text), '') FROM generate_series(1, 200) g;
	INSERT INTO kd VALUES (2, 'small', 'inline');
	INSERT INTO kf SELECT * FROM kd;
});
wait_for_redis($node);
is($node->safe_psql('postgres',
		q{SELECT pg_column_size(body) < octet_length(body) FROM kd WHERE id = 1}),
	'f', 'the big value is stored out of line, uncompressed');
my $big = $node->safe_psql('postgres', 'SELECT body FROM kd WHERE id = 1');

$node->safe_psql('postgres', q{
	UPDATE kd SET id = 11 WHERE id = 1;
	UPDATE kd SET id = 12 WHERE id = 2;
	UPDATE kf SET id = 11 WHERE id = 1;
	UPDATE kf SET id = 12, name = 'renamed' WHERE id = 2;
});
wait_for_redis($node);

# REPLICA IDENTITY FULL: the old row has the value.
is($redis->call('HGET', 'kf:11', 'body'), $big,
	'FULL: the unchanged out-of-line value moves to the new key');
like($redis->call('GET', 'kf:j:11'), qr/"body":"[0-9a-f]{6400}"/, 'FULL: and into its JSON');
is($redis->call('EXISTS', 'kf:1'), '0', 'FULL: the old key is gone');

# REPLICA IDENTITY DEFAULT: no hash or JSON lacking the value is written
# silently; the commands are dead letters that name the column.
is($redis->call('HEXISTS', 'kd:11', 'body') . $redis->call('EXISTS', 'kd:j:11'),
	'00', 'DEFAULT: no copy of the row without its out-of-line value');
is($node->safe_psql('postgres', q{
	SELECT count(*) FROM pg2redis.dead_letters
	 WHERE relation = 'kd'::regclass AND op = 'insert'
	   AND error LIKE '%column "body" is an unchanged TOASTed value%the row''s key changed%'}),
	'2', 'DEFAULT: the HSET and the SET of the new key are dead letters naming the column');
is_deeply(redis_hash($redis, 'kd:12'), { id => 12, name => 'small', body => 'inline' },
	'DEFAULT: a key change without an out-of-line value is applied as before');
is($redis->call('EXISTS', 'kd:1'), '0', 'DEFAULT: the old key is deleted');

# pg2redis_verify() shows it, and the remedy works.
like($node->safe_psql('postgres',
		q{SELECT string_agg(key || ' ' || problem, ',' ORDER BY key) FROM pg2redis_verify('kd') WHERE problem <> 'summary'}),
	qr/^kd:11 missing,kd:j:11 missing$/, 'pg2redis_verify() reports the new key missing');
$node->safe_psql('postgres', q{
	ALTER TABLE kd REPLICA IDENTITY FULL;
	UPDATE kd SET id = 21 WHERE id = 11;
	SELECT pg2redis_snapshot('kd');
});
wait_for_redis($node);
ok(poll_until(30, sub {
	$node->safe_psql('postgres', q{SELECT bool_and(state = 'done') FROM pg2redis_snapshots}) eq 't' }),
	'the snapshot is done');
is($redis->call('HGET', 'kd:21', 'body'), $big, 'with REPLICA IDENTITY FULL the next key change carries it');
is($node->safe_psql('postgres',
		q{SELECT count(*) FROM pg2redis_verify('kd') WHERE problem <> 'summary'}),
	'0', 'and pg2redis_verify() agrees after the snapshot');

$node->stop;
done_testing();
