# Copyright (c) pg2redis developers
#
# Upgrading: a database with pg2redis 1.0 (as released) under the current
# library.  The worker waits (state waiting_for_extension, a LOG saying
# what to run) instead of reading 1.0's tables with 1.1's code; after
# ALTER EXTENSION pg2redis UPDATE it streams, the rule written under 1.0
# included.  sql/upgrade compares the upgraded catalog with a fresh one.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use Pg2RedisTest;
use PostgreSQL::Test::Utils;
use Test::More;

my $redis = start_redis();
my $node = new_node('upgrade', redis => $redis, flush_interval => '5ms',
	create_extension => 0, wait_streaming => 0,
	conf => ["pg2redis.redis_timeout = 2s"]);
my $offset = -s $node->logfile;

$node->safe_psql('postgres', q{
	CREATE EXTENSION pg2redis VERSION '1.0';
	CREATE TABLE items (id int PRIMARY KEY, name text);
	ALTER TABLE pg2redis.rules DISABLE TRIGGER validate;
	INSERT INTO pg2redis.rules (relation, op, command)
	    VALUES ('items', 'insert', ARRAY['SET', 'item:{id}', '{name}']);
	ALTER TABLE pg2redis.rules ENABLE TRIGGER validate;
	INSERT INTO items VALUES (1, 'before the update');
});
# the worker polls for the extension every 10 s, or on a commit's wakeup
ok( poll_until(
		30,
		sub {
			log_lines($node,
				qr/the worker waits for ALTER EXTENSION pg2redis UPDATE: the library is version 1\.1, the extension in database "postgres" version 1\.0/,
				$offset);
		}),
	'the worker logs that it waits for ALTER EXTENSION UPDATE');
is($node->safe_psql('postgres', 'SELECT state FROM pg2redis_status()'),
	'waiting_for_extension', 'and waits, reading nothing of 1.0');
is($redis->call('EXISTS', 'item:1'), '0', 'nothing written to Redis');

$node->safe_psql('postgres', 'ALTER EXTENSION pg2redis UPDATE');
wait_for_status($node, 'state', 'streaming', 60, 'streaming after the update');
$node->safe_psql('postgres', "INSERT INTO items VALUES (2, 'after the update')");
wait_for_redis($node);
is($redis->call('GET', 'item:1'), 'before the update',
	'the initial load after the update has the row committed before it');
is($redis->call('GET', 'item:2'), 'after the update', 'the rule written under 1.0 streams');
is($node->safe_psql('postgres', 'SELECT count(*) FROM pg2redis_validate_rules()'), '0',
	'the 1.0 rule validates under 1.1');

$node->stop;
done_testing();
