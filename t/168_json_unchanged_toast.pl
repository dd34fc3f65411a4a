# Copyright (c) pg2redis developers
#
# With REPLICA IDENTITY DEFAULT, an update that does not change a TOASTed
# column sends only a pointer for it.  {pairs:…} leaves such a column out
# (HSET keeps the field), but a {json:…} value is written whole (SET,
# JSON.SET, a hash field, an event), so leaving the column out lost it from
# Redis without a trace.  It is a render error instead: the update is a dead
# letter naming the column, and Redis keeps the JSON it had.  With REPLICA
# IDENTITY FULL the value comes from the old row.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use Pg2RedisTest;
use PostgreSQL::Test::Utils;
use Test::More;

my $redis = start_redis();
my $node  = new_node('json_toast', redis => $redis, flush_interval => '5ms');

$node->safe_psql('postgres', q{
	CREATE TABLE doc (id int PRIMARY KEY, price int, body text);
	SELECT pg2redis_add_rule('doc', op, ARRAY['SET', 'doc:{id}', '{json:*}'])
	  FROM unnest(ARRAY['insert', 'update']) op;
	SELECT pg2redis_add_rule('doc', op, ARRAY['HSET', 'h:{id}', '{pairs:*}'])
	  FROM unnest(ARRAY['insert', 'update']) op;
	INSERT INTO doc SELECT 1, 10, string_agg(md5(g::text), '') FROM generate_series(1, 200) g;
});
wait_for_redis($node);
like($redis->call('GET', 'doc:1'), qr/"price":10,"body":"[0-9a-f]{6400}"/, 'inserted whole');

$node->safe_psql('postgres', 'UPDATE doc SET price = 11 WHERE id = 1');
wait_for_redis($node);
my $json = $redis->call('GET', 'doc:1');
like($json, qr/"body":"[0-9a-f]{6400}"/,
	'the unchanged out-of-line column is not lost from the JSON');
is($redis->call('HGET', 'h:1', 'price'), '11', 'HSET {pairs} applied the update (the field kept)');
is(length($redis->call('HGET', 'h:1', 'body') // ''), 6400, '... and kept the unsent field');
like($node->safe_psql('postgres',
		q{SELECT error FROM pg2redis.dead_letters WHERE relation = 'doc'::regclass}),
	qr/column "body" of \{json:…\} is an unchanged TOASTed value that PostgreSQL did not send/,
	'the JSON update is a dead letter naming the column');
like($node->safe_psql('postgres',
		q{SELECT found FROM pg2redis_verify('doc') WHERE problem = 'summary'}),
	qr/1 differing/, 'pg2redis_verify() shows the stale JSON');

# REPLICA IDENTITY FULL: the old row has the value
$node->safe_psql('postgres', q{
	ALTER TABLE doc REPLICA IDENTITY FULL;
	DELETE FROM pg2redis.dead_letters;
	UPDATE doc SET price = 12 WHERE id = 1;
});
wait_for_redis($node);
like($redis->call('GET', 'doc:1'), qr/"price":12,"body":"[0-9a-f]{6400}"/,
	'with REPLICA IDENTITY FULL the JSON is written whole');
is($node->safe_psql('postgres', 'SELECT count(*) FROM pg2redis.dead_letters'), '0', 'no dead letter');
is($node->safe_psql('postgres',
		q{SELECT count(*) FROM pg2redis_verify('doc') WHERE problem <> 'summary'}),
	'0', 'pg2redis_verify() finds nothing');

$node->stop;
done_testing();
