# Copyright (c) pg2redis developers
#
# No single row, value or transaction stops the stream (security review F5,
# "poison pills").  Before, any ERROR while rendering a change was FATAL and
# came back at the same change after every restart, and a block of one
# transaction grew until it hit PostgreSQL's 1 GB allocation limit:
#
# 1. a value over pg2redis.max_argument_bytes becomes a dead letter naming
#    the rule, the relation and the row's key, without any ERROR;
# 2. an ERROR while rendering one change (here a {json:*} whose escaping
#    passes 1 GB) ends the worker once; the restarted worker renders that
#    transaction again in a subtransaction per rule, turns the failure into
#    a dead letter, and goes on; last_error says what happened;
# 3. a transaction whose commands pass 1 GB in all is sent in parts bounded
#    by pg2redis.batch_bytes, each atomic, and arrives whole; the worker's
#    peak RSS stays under 128 MiB meanwhile.
#
# Rows committed after each poison pill reach Redis.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use Pg2RedisTest;
use PostgreSQL::Test::Utils;
use Test::More;

my $redis = start_redis(extra_args => [ '--proto-max-bulk-len', '1gb' ]);
my $node  = new_node(
	'poison',
	redis => $redis,
	conf  => [ "pg2redis.max_argument_bytes = '8MB'", "pg2redis.batch_bytes = '16MB'" ]);

$node->safe_psql('postgres', q{
	CREATE TABLE docs (id int PRIMARY KEY, body text);
	SELECT pg2redis_add_rule('docs', 'insert', 'SET doc:{id} {body}');
	SELECT pg2redis_add_rule('docs', 'insert', 'SADD docs {id}');
	CREATE TABLE jdocs (id int PRIMARY KEY, body text);
	SELECT pg2redis_add_rule('jdocs', 'insert', 'SET jdoc:{id} {json:*}');
	SELECT pg2redis_add_rule('jdocs', 'insert', 'SADD jdocs {id}');
});

# 1. A 20 MB value (compressed to almost nothing on disk) over the 8 MB limit.
my $pid = worker_pid($node);
$node->safe_psql('postgres', q{
	INSERT INTO docs VALUES (1, repeat('x', 20 * 1024 * 1024));
	INSERT INTO docs VALUES (2, 'after');
});
wait_for_redis($node, 60);
is($redis->call('GET', 'doc:2'), 'after', 'a row after the oversized value arrives');
is($redis->call('EXISTS', 'doc:1'), '0', 'the oversized value is not written');
is($redis->call('SISMEMBER', 'docs', '1'), '1',
	'the other rule of the same change still applies');
my $dl = $node->safe_psql('postgres', q{
	SELECT relation, op, command[1], error FROM pg2redis.dead_letters ORDER BY id});
like($dl, qr/^docs\|insert\|SET\|.*max_argument_bytes/m,
	'a dead letter names the relation, op, rule command and the limit');
like($dl, qr/rule \d+/, 'the dead letter names the rule');
like($dl, qr/id=1/, 'the dead letter names the row key');
is(worker_pid($node), $pid, 'the worker did not restart');

# 2. An ERROR inside rendering: {json:*} of 180 MB of control characters,
# each escaped to six bytes, passes the 1 GB limit of a string buffer.
$node->append_conf('postgresql.conf', "pg2redis.max_argument_bytes = '512MB'\n");
$node->reload;
my $log_offset = -s $node->logfile;
$node->safe_psql('postgres', q{
	INSERT INTO jdocs VALUES (1, repeat(chr(1), 180 * 1024 * 1024));
	INSERT INTO jdocs VALUES (2, 'after');
});
ok( poll_until(
		120,
		sub { ($redis->call('GET', 'jdoc:2') // '') eq '{"id":2,"body":"after"}' }),
	'a row after the failing change arrives');
is($redis->call('EXISTS', 'jdoc:1'), '0', 'the change that failed to render is not written');
is($redis->call('SISMEMBER', 'jdocs', '1'), '1',
	'the other rule of the failing change still applies');
like(
	$node->safe_psql('postgres', q{
		SELECT error FROM pg2redis.dead_letters WHERE relation = 'jdocs'::regclass}),
	qr/rule \d+.*(enlarge string buffer|memory)/,
	'the failure is a dead letter with the rule and the reason');
my @restarts = log_lines($node, qr/background worker "pg2redis" \(PID \d+\) exited with exit code 1/,
	$log_offset);
cmp_ok(scalar(@restarts), '<=', 1, 'the worker restarted at most once (no FATAL loop)');
like(status_row($node)->{last_error} // '', qr/enlarge string buffer|memory|rendered again/,
	'last_error says what stopped the worker');

# 3. One transaction of 10,000 rows of 110 kB: 1.1 GB of commands, with
# the worker's memory under 128 MiB (issue 13 item 2 (b)): its peak is
# reset first (part 2 took more, by design), or the worker is a new one.
$pid = worker_pid($node);
if (!reset_peak_memory($pid))
{
	$node->safe_psql('postgres', "SELECT pg_terminate_backend($pid)");
	poll_until(60, sub { my $p = worker_pid($node); defined $p && $p ne $pid });
	$pid = worker_pid($node);
}
$node->safe_psql('postgres', q{
	TRUNCATE pg2redis.dead_letters;
	INSERT INTO docs SELECT g, repeat(chr(65 + g % 26), 110 * 1024) FROM generate_series(100, 10099) g;
	INSERT INTO docs VALUES (3, 'after the big one');
});
my $max_rss = 0;
ok( poll_until(
		180,
		sub {
			my %m = process_memory($pid);
			$max_rss = $m{VmRSS} if ($m{VmRSS} // 0) > $max_rss;
			($redis->call('GET', 'doc:3') // '') eq 'after the big one';
		}),
	'a row after a 1.1 GB transaction arrives');
{
	my %m = process_memory($pid);
	my $peak = $m{VmHWM} // 0;
	$peak = $max_rss if $max_rss > $peak;
	diag(sprintf('VmHWM after 10,000 rows of 110 kB in one transaction: %d MiB', $peak / 1024));
	is(worker_pid($node), $pid, 'the same worker applied it');
	ok($m{VmHWM} && $peak < 128 * 1024, "the worker's peak RSS stays under 128 MiB");
}
is($redis->call('SCARD', 'docs'), '10003', 'every row of the big transaction is in the set');
is(length($redis->call('GET', 'doc:10099') // ''), 110 * 1024, 'its values arrived whole');
is($node->safe_psql('postgres', 'SELECT count(*) FROM pg2redis.dead_letters'), '0',
	'no dead letter for the big transaction');

$node->stop;
done_testing();
