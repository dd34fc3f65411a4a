# Copyright (c) pg2redis developers
#
# pg2redis.check_ddl (the event trigger after ALTER TABLE, DROP INDEX and
# REVOKE) runs pg2redis_validate_rules() as the extension's owner and
# disables every rule whose check fails.  A check that fails for a reason
# that is not the rule's (a lock_timeout or statement_timeout the caller
# set, a query cancel) is not the rule's problem: any role that can REVOKE
# on an object it owns (a temporary table will do) could otherwise disable
# other roles' rules at will, by setting lock_timeout while the rule's table
# is locked, or a short statement_timeout.  Such an error fails the
# caller's statement instead.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use Pg2RedisTest;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = new_node(
	'ddl_check_abuse',
	redis_url => 'redis://127.0.0.1:1',
	wait_streaming => 0);

$node->safe_psql('postgres', q{
	CREATE ROLE mallory LOGIN;
	CREATE TABLE item (id int PRIMARY KEY, name text);
	SELECT pg2redis_add_rule('item', 'insert', 'SET item:{id} {name}');
});

# Someone works on the table (here: holds a lock, as any writer with UPDATE
# may with LOCK TABLE).
my $locker = $node->background_psql('postgres');
$locker->query_safe('BEGIN; LOCK TABLE item IN ACCESS EXCLUSIVE MODE;');

my ($ret, $out, $err) = $node->psql(
	'postgres', q{
	SET lock_timeout = '200ms';
	CREATE TEMP TABLE mine (x int);
	REVOKE ALL ON mine FROM PUBLIC;
}, extra_params => [ '-U', 'mallory' ]);
note "mallory: ret $ret, stderr: $err";
$locker->query_safe('COMMIT;');
$locker->quit;

is($node->safe_psql('postgres', 'SELECT enabled FROM pg2redis.rules'),
	't', 'a lock timeout in the check does not disable the rule');
unlike($err, qr/disabled/, 'no rule reported disabled');
like($err, qr/lock timeout/, 'the REVOKE fails on its own lock timeout');

# A statement cancelled by its timeout while the rules are checked: the
# statement fails, no rule is disabled.
$node->safe_psql('postgres', 'UPDATE pg2redis.rules SET enabled = true');
$locker = $node->background_psql('postgres');
$locker->query_safe('BEGIN; LOCK TABLE item IN ACCESS EXCLUSIVE MODE;');
($ret, $out, $err) = $node->psql(
	'postgres', q{
	SET statement_timeout = '300ms';
	CREATE TEMP TABLE mine2 (x int);
	REVOKE ALL ON mine2 FROM PUBLIC;
}, extra_params => [ '-U', 'mallory' ]);
note "mallory: ret $ret, stderr: $err";
$locker->query_safe('COMMIT;');
$locker->quit;
like($err, qr/canceling statement due to statement timeout/,
	'the statement is cancelled');
is($node->safe_psql('postgres', 'SELECT enabled FROM pg2redis.rules'),
	't', 'a statement timeout in the check does not disable the rule');

# A rule that is really broken is still disabled by the check.
$node->safe_psql('postgres', q{
	SET client_min_messages = error;
	ALTER TABLE item DROP COLUMN name;
});
is($node->safe_psql('postgres', 'SELECT enabled FROM pg2redis.rules'),
	'f', 'a rule the change broke is disabled');

$node->stop;
done_testing();
