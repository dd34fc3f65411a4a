# Copyright (c) pg2redis developers
#
# What a rule grants its writer, live in the worker: a table whose
# row-level security applies to the writer is refused; a rule whose writer
# loses SELECT (directly or through a group role), becomes subject to
# row-level security or is dropped stops applying (a WARNING in the log, a
# dead letter per change), and applies again once the writer may read the
# table again; superusers' rules go on.  Then a database with rules that
# need primary keys and replica identities survives pg_dump and restore
# (plain SQL and custom format) with every rule and its writer, and
# pg2redis_validate_rules() finds only the rule of the dropped writer.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Pg2RedisTest;
use Test::More;

my $redis = start_redis(name => 'sec');
# The checks when rules are loaded are what this file tests: with
# pg2redis.ddl_check (sql/ddl_rules) the REVOKE and ALTER TABLE below would
# disable the rules at once.
my $node = new_node('sec', redis => $redis, flush_interval => '5ms',
	conf => ["pg2redis.ddl_check = off"]);

$node->safe_psql(
	'postgres', q{
	CREATE TABLE salaries (id int PRIMARY KEY, owner text, salary int);
	ALTER TABLE salaries ENABLE ROW LEVEL SECURITY;
	CREATE POLICY own ON salaries USING (owner = current_user);
	CREATE TABLE items (id int PRIMARY KEY, secret text);
	CREATE ROLE alice;
	GRANT USAGE ON SCHEMA pg2redis TO alice;
	GRANT SELECT, INSERT ON pg2redis.rules TO alice;
	GRANT USAGE ON SEQUENCE pg2redis.rules_id_seq TO alice;
	GRANT EXECUTE ON FUNCTION pg2redis_add_rule(regclass, text, text, jsonb) TO alice;
	GRANT SELECT ON salaries, items TO alice;
});

# Row-level security that applies to the writer: refused when written.
my ($ret, $out, $err) = $node->psql('postgres',
	"SET ROLE alice; SELECT pg2redis_add_rule('salaries', 'insert', 'HSET leak:{id} {pairs:*}')"
);
isnt($ret, 0, 'a rule on a table whose row-level security applies to its writer is refused');
like($err, qr/row-level security applies to role "alice"/, '... saying why');

my $alice_rule = $node->safe_psql('postgres',
	"SET ROLE alice; SELECT pg2redis_add_rule('items', 'insert', 'SET item:{id} {secret}')");
$node->safe_psql('postgres', "SELECT pg2redis_add_rule('items', 'insert', 'SADD items {id}')");
is($node->safe_psql('postgres', "SELECT created_by FROM pg2redis.rules WHERE id = $alice_rule"),
	'alice', 'the rule records its writer');

$node->safe_psql('postgres', "INSERT INTO items VALUES (1, 'one')");
wait_for_redis($node);
is($redis->call('GET', 'item:1'), 'one', 'the writer\'s rule applies while it may read the table');

# The writer loses SELECT: the rule stops, each change is a dead letter.
my $log_offset = -s $node->logfile;
$node->safe_psql('postgres', 'REVOKE SELECT ON items FROM alice');
$node->safe_psql('postgres', "INSERT INTO items VALUES (2, 'two')");
$node->safe_psql('postgres', "INSERT INTO items VALUES (3, 'three')");
wait_for_redis($node);
is($redis->call('EXISTS', 'item:2', 'item:3'), '0',
	'after REVOKE SELECT, the writer\'s rule no longer writes to Redis');
is_deeply([ redis_smembers($redis, 'items') ], [ 1, 2, 3 ],
	'a superuser\'s rule on the same table goes on');
ok( $node->poll_query_until(
		'postgres',
		"SELECT count(*) = 2 FROM pg2redis.dead_letters WHERE relation = 'items'::regclass AND error LIKE '%rule $alice_rule on table \"items\" no longer applies: role \"alice\" that wrote it may no longer SELECT%'"
	),
	'each change the rule would have handled is a dead letter naming rule, table and role');
ok( poll_until(
		30,
		sub {
			log_lines($node,
				qr/WARNING:  pg2redis rule $alice_rule on table "items" no longer applies: role "alice" that wrote it may no longer SELECT from the table/,
				$log_offset);
		}),
	'the worker logs a WARNING naming rule, table and role');
is($node->safe_psql('postgres',
		"SELECT count(*) FROM pg2redis.dead_letters WHERE command::text LIKE '%two%' OR error LIKE '%two%'"),
	'0', 'the dead letters hold the rule\'s template, not the row');

# SELECT given back: the rule applies again.
$node->safe_psql('postgres', 'GRANT SELECT ON items TO alice');
$node->safe_psql('postgres', "INSERT INTO items VALUES (4, 'four')");
wait_for_redis($node);
is($redis->call('GET', 'item:4'), 'four', 'once SELECT is granted again, the rule applies again');

# Row-level security that now applies to the writer stops the rule, until
# the writer bypasses it (a role change: pg_authid).
$node->safe_psql(
	'postgres', q{
	ALTER TABLE items ENABLE ROW LEVEL SECURITY;
	CREATE POLICY none ON items USING (false);
	INSERT INTO items VALUES (5, 'five');
});
wait_for_redis($node);
is($redis->call('EXISTS', 'item:5'), '0',
	'with row-level security applying to its writer, the rule stops');
ok( $node->poll_query_until(
		'postgres',
		"SELECT count(*) = 1 FROM pg2redis.dead_letters WHERE error LIKE '%row-level security of the table applies to role \"alice\"%'"
	),
	'... and the change is a dead letter saying why');
$node->safe_psql('postgres', 'ALTER ROLE alice BYPASSRLS');
$node->safe_psql('postgres', "INSERT INTO items VALUES (6, 'six')");
wait_for_redis($node);
is($redis->call('GET', 'item:6'), 'six', 'BYPASSRLS given to the writer: the rule applies again');

# SELECT through a group role: revoking the membership stops the rule (a
# role membership change: pg_auth_members).
$node->safe_psql(
	'postgres', q{
	ALTER TABLE items DISABLE ROW LEVEL SECURITY;
	CREATE ROLE readers;
	CREATE ROLE carol IN ROLE readers;
	GRANT SELECT ON items TO readers;
	GRANT USAGE ON SCHEMA pg2redis TO carol;
	GRANT SELECT, INSERT ON pg2redis.rules TO carol;
	GRANT USAGE ON SEQUENCE pg2redis.rules_id_seq TO carol;
	GRANT EXECUTE ON FUNCTION pg2redis_add_rule(regclass, text, text, jsonb) TO carol;
});
my $carol_rule = $node->safe_psql('postgres',
	"SET ROLE carol; SELECT pg2redis_add_rule('items', 'insert', 'SET carol:{id} {secret}')");
$node->safe_psql('postgres', "INSERT INTO items VALUES (100, 'hundred')");
wait_for_redis($node);
is($redis->call('GET', 'carol:100'), 'hundred', 'a writer reading through a group role maps the table');
$node->safe_psql('postgres', 'REVOKE readers FROM carol');
$node->safe_psql('postgres', "INSERT INTO items VALUES (101, 'hundred and one')");
wait_for_redis($node);
is($redis->call('EXISTS', 'carol:101'), '0', 'once out of the group, the writer\'s rule stops');
ok( $node->poll_query_until(
		'postgres',
		"SELECT count(*) = 1 FROM pg2redis.dead_letters WHERE error LIKE '%rule $carol_rule on table \"items\" no longer applies: role \"carol\"%'"
	),
	'... and the change is a dead letter');
$node->safe_psql('postgres', "DELETE FROM pg2redis.rules WHERE id = $carol_rule");

# The writer is dropped: the rule stops for good.
$log_offset = -s $node->logfile;
my $alice_oid = $node->safe_psql('postgres', "SELECT 'alice'::regrole::oid");
$node->safe_psql(
	'postgres', q{
	DROP OWNED BY alice;
	DROP ROLE alice;
	INSERT INTO items VALUES (7, 'seven');
});
wait_for_redis($node);
is($redis->call('EXISTS', 'item:7'), '0', 'a dropped writer\'s rule no longer applies');
ok( $node->poll_query_until(
		'postgres',
		"SELECT count(*) = 1 FROM pg2redis.dead_letters WHERE error LIKE '%rule $alice_rule on table \"items\" no longer applies: the role that wrote it no longer exists'"
	),
	'... and the change is a dead letter');
ok( poll_until(
		30,
		sub {
			log_lines($node, qr/DETAIL:  The role had OID $alice_oid\./, $log_offset);
		}),
	'the WARNING gives the dropped role\'s OID');
is_deeply([ redis_smembers($redis, 'items') ], [ 1 .. 7, 100, 101 ],
	'the superuser\'s rule applied to every change');
is($node->safe_psql('postgres', 'SELECT state FROM pg2redis_status()'),
	'streaming', 'the stream went on throughout');

# Dump and restore.  Primary keys and replica identity indexes are restored
# after the rules (post-data), so rules that need them must be kept.
$node->safe_psql(
	'postgres', q{
	CREATE TABLE orders (tenant text, id int, total int, PRIMARY KEY (tenant, id));
	CREATE TABLE ledger (id int NOT NULL, amount int);
	CREATE UNIQUE INDEX ledger_id ON ledger (id);
	ALTER TABLE ledger REPLICA IDENTITY USING INDEX ledger_id;
	CREATE ROLE bob;
	GRANT USAGE ON SCHEMA pg2redis TO bob;
	GRANT SELECT, INSERT ON pg2redis.rules TO bob;
	GRANT USAGE ON SEQUENCE pg2redis.rules_id_seq TO bob;
	GRANT EXECUTE ON FUNCTION pg2redis_add_rule(regclass, text, text, jsonb) TO bob;
	GRANT SELECT ON orders, ledger TO bob;
	SET ROLE bob;
	SELECT pg2redis_add_rule('orders', 'insert', 'SET order:{%pk%} {total}');
	SELECT pg2redis_add_rule('orders', 'delete', 'DEL order:{%pk_escaped%}');
	SELECT pg2redis_add_rule('ledger', 'insert', 'SET ledger:{%pk%} {amount}',
	                         '{"column": "amount", "op": ">", "value": 0}');
	RESET ROLE;
	SELECT pg2redis_add_rule('ledger', 'delete', 'DEL ledger:{id}');
	SELECT pg2redis_add_rule('ledger', 'update', 'SET ledger:{id}:was {old:id}');
	UPDATE pg2redis.rules SET position = 5, enabled = false
	 WHERE command[2] = 'ledger:{id}:was';
});
my $rules_sql = q{
	SELECT id, relation, op, command, condition, position, enabled, created_by
	  FROM pg2redis.rules ORDER BY id};
my $rules = $node->safe_psql('postgres', $rules_sql);
like($rules, qr/\|bob$/m, 'rules written by bob record him');
like($rules, qr/\{%pk%\}/, 'a {%pk%} rule is among those dumped');

my $dir = PostgreSQL::Test::Utils::tempdir('dumps');
$node->command_ok([ 'pg_dump', '-d', 'postgres', '-f', "$dir/plain.sql" ],
	'pg_dump, plain SQL');
$node->command_ok([ 'pg_dump', '-d', 'postgres', '-Fc', '-f', "$dir/dump.custom" ],
	'pg_dump, custom format');

$node->safe_psql('postgres', 'CREATE DATABASE restored_plain');
$node->command_ok(
	[
		'psql', '-X', '-q', '-v', 'ON_ERROR_STOP=1', '-d', 'restored_plain',
		'-f', "$dir/plain.sql"
	],
	'the plain SQL dump restores without an error');
$node->safe_psql('postgres', 'CREATE DATABASE restored_custom');
$node->command_ok(
	[
		'pg_restore', '--exit-on-error', '-d', 'restored_custom',
		"$dir/dump.custom"
	],
	'pg_restore of the custom-format dump runs without an error');

# alice's rule keeps its writer's OID (she was dropped): the one problem
my $expected_problems = "$alice_rule|items|insert|$alice_oid|the role that wrote the rule no longer exists";
foreach my $db ('restored_plain', 'restored_custom')
{
	is($node->safe_psql($db, $rules_sql), $rules,
		"$db has every rule, with its writer, position and state");
	is($node->safe_psql($db, 'SELECT * FROM pg2redis_validate_rules()'),
		$expected_problems,
		"$db: pg2redis_validate_rules() finds only the rule of the dropped writer");
}
is($node->safe_psql('postgres', 'SELECT * FROM pg2redis_validate_rules()'),
	$expected_problems, 'the same as in the dumped database');

$node->stop;
done_testing();
