# Copyright (c) pg2redis developers
#
# pg2redis_status() shows the progress of the initial load: tables done of
# total, rows sent of an estimate (reltuples), rows per second and an ETA;
# after the load, the totals of the last one.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use Pg2RedisTest;
use PostgreSQL::Test::Utils;
use Test::More;

my $redis = start_redis();
# paused from the first start, so that the load happens when we say
my $node = new_node('loadprogress', redis => $redis, flush_interval => '5ms',
	wait_streaming => 0, conf => ['pg2redis.enabled = off', 'pg2redis.snapshot_batch_size = 1000']);
$node->safe_psql('postgres', q{
	CREATE TABLE a (id int PRIMARY KEY, v text);
	CREATE TABLE b (id int PRIMARY KEY, v text);
	SELECT pg2redis_add_rule('a', 'insert', 'SET a:{id} {v}');
	SELECT pg2redis_add_rule('b', 'insert', 'SET b:{id} {v}');
	INSERT INTO a SELECT g, 'x' FROM generate_series(1, 200000) g;
	INSERT INTO b SELECT g, 'y' FROM generate_series(1, 100000) g;
});
$node->safe_psql('postgres', 'VACUUM ANALYZE a, b');
is($node->safe_psql('postgres',
		'SELECT load_tables_total IS NULL AND load_rows IS NULL FROM pg2redis_status()'),
	't', 'no load yet: no progress');

# Redis stalled during the load: the progress is visible while it waits
$node->append_conf('postgresql.conf', 'pg2redis.enabled = on');
$node->reload;
ok(poll_status($node, 'state', 'snapshotting', 30), 'the load starts');
$redis->pause;
my $row;
ok( poll_until(
		30,
		sub {
			$row = $node->safe_psql('postgres',
				q{SELECT state, load_tables_total, load_tables_done, load_rows > 0,
				         load_rows_estimate FROM pg2redis_status()});
			$row =~ /^(snapshotting|redis_unavailable)\|2\|[01]\|t\|300000$/;
		}),
	'while loading: 2 tables, rows sent of an estimate of 300000')
  or diag($row);
$redis->resume;
wait_for_redis($node, 120);
is($node->safe_psql('postgres',
		q{SELECT load_tables_total, load_tables_done, load_rows, load_rows_estimate,
		         load_rows_per_second > 0, load_eta FROM pg2redis_status()}),
	'2|2|300000|300000|t|00:00:00', 'after the load: every table and row, a rate, no time left');

$node->stop;
done_testing();
