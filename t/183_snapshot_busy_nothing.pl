# Copyright (c) pg2redis developers
#
# An on-demand snapshot of a table with REPLICA IDENTITY NOTHING while one
# row of it is updated all the time.  A decoded update of such a table does
# not say which key it had, so every row of the open chunk is read again:
# the rows of the chunk did not change.  After RETRY_ROUNDS rereads the
# request left the rows still to read "to the stream", which never wrote
# them, and ended "done": an emptied Redis was refilled with a fraction of
# the table.  No row that no change touched may be left out.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use Pg2RedisTest;
use PostgreSQL::Test::Utils;
use Test::More;

my $redis = start_redis();
my $node = new_node(
	'snapshot_busy_nothing',
	redis          => $redis,
	flush_interval => '5ms',
	conf           => ['pg2redis.snapshot_batch_size = 20']);

$node->safe_psql('postgres', q{
	CREATE TABLE stop ();
	CREATE TABLE hot (id int PRIMARY KEY, v int NOT NULL DEFAULT 0);
	ALTER TABLE hot REPLICA IDENTITY NOTHING;
	INSERT INTO hot SELECT g FROM generate_series(1, 200) g;
	SELECT pg2redis_add_rule('hot', op, 'SET hot:{id} {id}')
	  FROM unnest(ARRAY['snapshot', 'insert']) op;
});
wait_for_redis($node);
my @before = redis_keys($redis, 'hot:*');
is(scalar(@before), 0, 'no row in Redis yet');

# one row updated without pause while the snapshot runs
my $busy = start_psql_script($node, q{
	DO $$
	BEGIN
		FOR i IN 1 .. 1000000 LOOP
			UPDATE public.hot SET v = v + 1 WHERE id = 1;
			COMMIT;
			EXIT WHEN EXISTS (SELECT 1 FROM public.stop);
			PERFORM pg_catalog.pg_sleep(0.001);
		END LOOP;
	END
	$$;
}, timeout => 200);
sleep 1;
my $id = $node->safe_psql('postgres', "SELECT pg2redis_snapshot('hot')");
# done or failed, whichever comes first
my $ok = poll_until(150, sub {
		$node->safe_psql('postgres',
			"SELECT state IN ('done', 'failed') FROM pg2redis_snapshots WHERE id = $id") eq 't';
	});
$node->safe_psql('postgres', 'INSERT INTO stop DEFAULT VALUES');
finish_psql_script($busy);
ok($ok, 'the request ended');
wait_for_redis($node);
my $state = $node->safe_psql('postgres',
	"SELECT state || ' ' || coalesce(error, '') FROM pg2redis_snapshots WHERE id = $id");
note "request: $state";
my @keys = redis_keys($redis, 'hot:*');
my $n = scalar(@keys);
ok($n == 200 || $state =~ /^failed /,
	"every row is in Redis ($n of 200), or the request failed saying why");

$node->stop;
done_testing();
