# Copyright (c) pg2redis developers
#
# A row that cannot even be fetched whole for the initial load (two values
# stored out of line, uncompressed, that together pass PostgreSQL's 1 GB
# limit of a tuple) ends the load once; the next load takes each row in a
# subtransaction of its own, records that one as a dead letter, and loads
# the rest (re-attack of the F5 fix: the careful load guarded the rules, not
# the fetch, and restarted for ever).

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use Pg2RedisTest;
use PostgreSQL::Test::Utils;
use Test::More;

my $redis = start_redis();
my $node  = new_node('loadpoison', redis => $redis);
$node->safe_psql('postgres', q{
	CREATE TABLE big (id int PRIMARY KEY, a text, b text);
	ALTER TABLE big ALTER a SET STORAGE EXTERNAL, ALTER b SET STORAGE EXTERNAL;
	SELECT pg2redis_add_rule('big', 'snapshot', ARRAY['HSET', 'big:{id}', 'id', '{id}']);
	INSERT INTO big SELECT g, 'small', NULL FROM generate_series(2, 50) g;
	INSERT INTO big VALUES (1, repeat('x', 545000000), NULL);
	UPDATE big SET b = repeat('y', 545000000) WHERE id = 1;
});
wait_for_redis($node, 120);

my $offset = -s $node->logfile;
$node->safe_psql('postgres', 'SELECT pg2redis_resync()');
ok( poll_until(
		180,
		sub {
			$node->safe_psql('postgres',
				q{SELECT count(*) FROM pg2redis.dead_letters WHERE error LIKE '%could not be loaded%'}) eq '1';
		}),
	'the row that cannot be fetched whole is a dead letter');
wait_for_status($node, 'state', 'streaming', 120, 'the stream starts after the load');
is(scalar(redis_keys($redis, 'big:*')), 49, 'every other row is loaded');
my @exits = log_lines($node, qr/background worker "pg2redis" \(PID \d+\) exited with exit code 1/,
	$offset);
cmp_ok(scalar(@exits), '<=', 2, 'the worker restarted at most twice (the resync, then once)');

$node->safe_psql('postgres', 'DELETE FROM big WHERE id = 1');
$node->stop;
done_testing();
