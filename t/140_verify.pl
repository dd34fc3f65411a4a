# Copyright (c) pg2redis developers
#
# pg2redis_verify() compares Redis with what the rules make of the rows:
# nothing to report when they agree; missing keys, differing values and
# members, and orphan keys (a key the rules' patterns cover that no row
# renders) when Redis drifted; event-like commands skipped and counted; a
# sample; a caller without SELECT sees counts only; nothing is written to
# Redis; and its speed on 50,000 rows (printed).

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use Pg2RedisTest;
use PostgreSQL::Test::Utils;
use Test::More;

my $redis = start_redis();
my $node  = new_node('verify', redis => $redis, flush_interval => '5ms');

$node->safe_psql('postgres', q{
	CREATE TABLE products (id int PRIMARY KEY, name text, price numeric(10,2),
	                       active boolean, body text);
	SELECT pg2redis_add_rule('products', 'insert', ARRAY['HSET', 'product:{id}', '{pairs:id,name,price,active,body}']);
	SELECT pg2redis_add_rule('products', 'insert', 'SADD products:all {id}');
	SELECT pg2redis_add_rule('products', 'insert', 'ZADD products:price {price} {id}');
	SELECT pg2redis_add_rule('products', 'insert', 'SET product:{id}:name {name}');
	SELECT pg2redis_add_rule('products', 'insert', 'INCRBY products:count 1');
	SELECT pg2redis_add_rule('products', 'insert', 'XADD products:events * id {id}');
	SELECT pg2redis_add_rule('products', 'update', ARRAY['HSET', 'product:{id}', '{pairs:id,name,price,active,body}']);
	SELECT pg2redis_add_rule('products', 'update', 'SET product:{id}:name {name}');
	SELECT pg2redis_add_rule('products', 'update', 'ZADD products:price {price} {id}');
	SELECT pg2redis_add_rule('products', 'delete', 'DEL product:{id} product:{id}:name');
	SELECT pg2redis_add_rule('products', 'delete', 'SREM products:all {id}');
	SELECT pg2redis_add_rule('products', 'delete', 'ZREM products:price {id}');
	INSERT INTO products SELECT g, 'p' || g, g * 1.5, g % 2 = 0,
	  CASE WHEN g = 7 THEN repeat(md5(g::text), 400) ELSE 'short' END
	  FROM generate_series(1, 20) g;
	ALTER TABLE products ALTER COLUMN body SET STORAGE EXTERNAL;
	UPDATE products SET body = repeat('x', 5000) WHERE id = 8;
});
wait_for_redis($node);

# verify_rows ARGS returns the problem rows (relation|key|problem|expected|found)
# and the summary rows apart.
sub verify_rows
{
	my ($args) = @_;
	my $out = $node->safe_psql('postgres',
		"SELECT relation, coalesce(key, ''), problem, coalesce(expected, ''), coalesce(found, '')
		   FROM pg2redis_verify($args) ORDER BY problem = 'summary', key, expected");
	my @rows = split /\n/, $out;
	return ([ grep { !/\|summary\|/ } @rows ], [ grep { /\|summary\|/ } @rows ]);
}

my ($problems, $summary) = verify_rows('');
is_deeply($problems, [], 'Redis equals the rules applied to the rows: no problem');
like($summary->[0], qr/^products\|\|summary\|20 rows, \d+ commands checked, 40 skipped \(INCRBY: 20, XADD: 20\)\|0 missing, 0 differing, 0 orphans$/,
	'summary: rows, commands checked, event-like commands skipped by name');

# Drift, behind the stream's back.
my %before = commandstats();
$redis->call('HSET', 'product:1', 'name', 'wrong');
$redis->call('DEL', 'product:2');
$redis->call('SREM', 'products:all', '3');
$redis->call('ZADD', 'products:price', '999', '4');
$redis->call('DEL', 'product:5:name');
$redis->call('SET', 'product:6:name', 'stale');
$redis->call('HSET', 'product:99', 'name', 'gone');
$redis->call('SET', 'product:98:name', 'gone too');
$redis->call('HDEL', 'product:7', 'body');
%before = commandstats();

($problems, $summary) = verify_rows(q{'products'});
is_deeply(
	$problems,
	[
		'products|product:1|differing|name: p1|name: wrong',
		'products|product:2|missing|5 field(s)|',
		'products|product:5:name|missing|p5|',
		'products|product:6:name|differing|p6|stale',
		'products|product:7|missing|field body|',
		'products|product:98:name|orphan||a key no row renders',
		'products|product:99|orphan||a key no row renders',
		'products|products:all|missing|member 3|',
		'products|products:price|differing|4: 6.00|4: 999',
	],
	'every drift is reported: differing field, missing key, missing member, differing score, orphans, a TOASTed value')
  or diag(explain $problems);
like($summary->[0], qr/\|4 missing, 3 differing, 2 orphans$/, 'the summary counts them');
my %after = commandstats();
is_deeply({ map { $_ => $after{$_} } grep { /^(hset|set|sadd|zadd|del|srem|zrem|incrby|xadd|hdel|unlink|expire)$/ } keys %after },
	{ map { $_ => $before{$_} } grep { /^(hset|set|sadd|zadd|del|srem|zrem|incrby|xadd|hdel|unlink|expire)$/ } keys %before },
	'verify wrote nothing to Redis');

# A sample: only sampled rows, orphans not looked for.
($problems, $summary) = verify_rows(q{'products', 5});
like($summary->[0], qr/5 rows \(a sample\).*orphans not looked for/, 'a sample of 5 rows, no orphan scan');

# A caller without SELECT on the table sees counts only.
$node->safe_psql('postgres', q{
	CREATE ROLE mon LOGIN;
	GRANT USAGE ON SCHEMA pg2redis TO mon;
	GRANT EXECUTE ON FUNCTION pg2redis_verify(regclass, int) TO mon;
});
my $mon = $node->safe_psql('postgres',
	"SELECT problem, coalesce(key, '-') FROM pg2redis_verify()", extra_params => [ '-U', 'mon' ]);
is($mon, "summary|-", 'without SELECT: the summary row only, no key or value');

# Row-level security that applies to the caller: counts only as well.
$node->safe_psql('postgres', q{
	CREATE TABLE secrets (id int PRIMARY KEY, owner name, v text);
	ALTER TABLE secrets ENABLE ROW LEVEL SECURITY;
	CREATE POLICY mine ON secrets USING (owner = current_user);
	GRANT SELECT ON secrets TO mon;
	SELECT pg2redis_add_rule('secrets', 'insert', 'SET secret:{id} {v}');
	INSERT INTO secrets VALUES (1, 'mon', 'visible'), (2, 'ceo', 'hidden');
});
wait_for_redis($node);
$redis->call('SET', 'secret:2', 'tampered');
is($node->safe_psql('postgres',
		"SELECT string_agg(problem || ':' || coalesce(key, '-'), ',') FROM pg2redis_verify('secrets')",
		extra_params => [ '-U', 'mon' ]),
	'summary:-', 'with row-level security applying: the summary only, no hidden row shows');
like($node->safe_psql('postgres',
		"SELECT found FROM pg2redis_verify('secrets') WHERE problem = 'summary'",
		extra_params => [ '-U', 'mon' ]),
	qr/0 missing, 1 differing.*keys not shown/, 'but its counts are there');
$node->safe_psql('postgres', q{
	DELETE FROM pg2redis.rules WHERE relation = 'secrets'::regclass;
});
$redis->call('DEL', 'secret:1', 'secret:2');

# Fix Redis, then speed on 50,000 rows (and no problem).
$node->safe_psql('postgres', q{
	INSERT INTO products SELECT g, 'p' || g, g, true, 'b' FROM generate_series(100, 50099) g;
});
$redis->call('DEL', 'product:99', 'product:98:name');
$node->safe_psql('postgres', q{UPDATE products SET name = name WHERE id < 100});
wait_for_redis($node, 120);
my $t0 = time();
use Time::HiRes qw(time);
$t0 = time();
($problems, $summary) = verify_rows('');
my $secs = time() - $t0;
my ($rows) = $summary->[0] =~ /\|(\d+) rows/;
diag(sprintf('pg2redis_verify(): %d rows in %.2f s: %.0f rows/s', $rows, $secs, $rows / $secs));
is_deeply($problems, ['products|products:all|missing|member 3|'],
	'after the update rules ran again, only the set member no rule restores is missing')
  or diag(explain $problems);

# Bytes that are not text come back as hex, never as invalid text.
$redis->call('SET', 'product:100:name', "\xff\xfe\x80");
is($node->safe_psql('postgres',
		q{SELECT found || ' ' || length(found) FROM pg2redis_verify('products') WHERE key = 'product:100:name'}),
	'\xfffe80 8', 'a value that is not valid text is shown as hex');

$node->stop;
done_testing();

# commandstats returns Redis's calls per command name.
sub commandstats
{
	my %n;
	foreach my $line (split /\r?\n/, $redis->call('INFO', 'commandstats'))
	{
		$n{$1} = $2 if $line =~ /^cmdstat_([a-z.|]+):calls=(\d+)/;
	}
	return %n;
}
