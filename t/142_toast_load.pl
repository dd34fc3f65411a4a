# Copyright (c) pg2redis developers
#
# The initial load and pg2redis_resync() read whole values, whatever their
# storage: inline, compressed inline, out of line (compressed or not, and
# STORAGE EXTERNAL).  The load's heap scan hands on-disk TOAST pointers to
# the mapping, which took them for "unchanged TOAST" values of an update:
# {pairs:*} dropped the field, {json:*} the key, and {col} became a dead
# letter (streaming-core review, finding 1).  pg2redis_verify() is the
# oracle, with direct reads of the values.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use Pg2RedisTest;
use PostgreSQL::Test::Utils;
use Test::More;

my $redis = start_redis();
my $node  = new_node(
	'toastload',
	redis          => $redis,
	conf           => [ 'pg2redis.enabled = off' ],
	wait_streaming => 0);

# Rows first (held back by enabled = off, so that the rules exist before
# the worker makes its slot and loads them).
$node->safe_psql('postgres', q{
	CREATE TABLE docs (id int PRIMARY KEY, body text, ext text);
	ALTER TABLE docs ALTER COLUMN ext SET STORAGE EXTERNAL;
	INSERT INTO docs VALUES
	  (1, 'short', 'short'),
	  (2, repeat('x', 6000), repeat('y', 6000)),
	  (3, (SELECT string_agg(md5(g::text), '') FROM generate_series(1, 300) g),
	      (SELECT string_agg(md5(g::text), '') FROM generate_series(1, 300) g)),
	  (4, (SELECT string_agg(md5(g::text), '') FROM generate_series(1, 30000) g), NULL);
	SELECT pg2redis_add_rule('docs', 'insert', ARRAY['HSET', 'doc:{id}', '{pairs:*}']);
	SELECT pg2redis_add_rule('docs', 'insert', 'SET body:{id} {body}');
	SELECT pg2redis_add_rule('docs', 'insert', 'SET json:{id} {json:*}');
	SELECT pg2redis_add_rule('docs', 'update', ARRAY['HSET', 'doc:{id}', '{pairs:*}']);
});
is($node->safe_psql('postgres', q{
	SELECT pg_relation_size(reltoastrelid) > 0 FROM pg_class WHERE oid = 'docs'::regclass}),
	't', 'values are stored out of line');
is($node->safe_psql('postgres', q{
	SELECT count(*) > 0 FROM docs WHERE pg_column_size(body) < octet_length(body)}),
	't', 'some compressed');

# check_docs LABEL: Redis holds every value of every row, whole.
sub check_docs
{
	my ($label) = @_;
	foreach my $id (1 .. 4)
	{
		my ($body, $ext) = split /\|/,
		  $node->safe_psql('postgres', "SELECT body, coalesce(ext, '') FROM docs WHERE id = $id"), -1;
		is($redis->call('HGET', "doc:$id", 'body'), $body, "$label: {pairs:*} has row ${id}'s body");
		is($redis->call('HGET', "doc:$id", 'ext') // '', $ext, "$label: {pairs:*} has row ${id}'s ext");
		is($redis->call('GET', "body:$id"), $body, "$label: {body} of row $id");
		like($redis->call('GET', "json:$id") // '', qr/"body":"\Q$body\E"/, "$label: {json:*} of row $id");
	}
	is($node->safe_psql('postgres', 'SELECT count(*) FROM pg2redis.dead_letters'), '0',
		"$label: no dead letter");
	is($node->safe_psql('postgres',
			q{SELECT count(*) FROM pg2redis_verify() WHERE problem <> 'summary'}),
		'0', "$label: pg2redis_verify() finds nothing");
}

$node->append_conf('postgresql.conf', "pg2redis.enabled = on\n");
$node->reload;
wait_for_status($node, 'state', 'streaming', 60, 'streaming after the initial load');
wait_for_redis($node);
check_docs('initial load');

# Resync into an emptied Redis: the same path.
$redis->call('FLUSHALL');
$node->safe_psql('postgres', 'SELECT pg2redis_resync()');
ok(poll_until(60, sub { ($redis->call('EXISTS', 'doc:4') // 0) == 1 }), 'the resync loads again');
wait_for_status($node, 'state', 'streaming', 60, 'streaming after the resync');
wait_for_redis($node);
check_docs('resync');

$node->stop;
done_testing();
