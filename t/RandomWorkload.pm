# Copyright (c) pg2redis developers

=pod

=head1 NAME

RandomWorkload - a seeded random schema, mapping and transaction mix, with
pg2redis_verify() and exact counters as the oracle

=head1 SYNOPSIS

  my $rw = RandomWorkload->new(seed => $seed);
  diag($rw->describe);
  $node->safe_psql('postgres', $rw->schema_sql . $rw->rules_sql);
  run_psql_script($node, $rw->batch_sql(100));
  $rw->check($node, $redis, 'after streaming');

=head1 DESCRIPTION

From one seed (its own random generator, so that nothing else the test does
changes what it makes) it makes 1 to 3 tables C<rw1>, C<rw2>, C<rw3>, each
with a key that is an C<int>, a C<bigint> past 2^40 or a composite
C<(a int, b text)> whose text holds unicode, separators and braces; a
random replica identity (C<DEFAULT> or C<FULL>); and a random set of columns
among:

  q   int          summed exactly by an INCRBY {diff:q} counter (FULL tables)
  n   numeric      a sorted-set score (numeric(14,3) or unconstrained, with
                   infinities); NULL removes the member (conditions)
  f   float8       NaN, infinities, -0, subnormals, shortest digits
  ts  timestamptz  offsets, fractions, BC, infinities
  tags text[]      NULL elements, quotes, unicode, empty
  nums int[]       NULL elements, two dimensions
  doc jsonb        nested, escapes, unicode keys, big and exact numbers
  s   text         short: unicode (multi-byte, combining, U+2028, emoji),
                   quotes, backslashes, control characters
  c   text         long and compressible (compressed inline)
  x   text         long and incompressible (out of line), or compressible
                   enough to be compressed out of line
  e   text         STORAGE EXTERNAL (out of line, uncompressed)
  ok  boolean

Rules, per table (C<{K}> is the key: C<{id}>, C<{a}:{esc:b}> or
C<{%pk_escaped%}>; C<{M}> the member):

  insert, update  HSET rwN:h:{K} {pairs:*}          (or a subset of columns)
  insert, update  SET rwN:j:{K} {json:...}          (every column on FULL
                                                     tables, else the columns
                                                     that are never TOASTed)
  insert, update  SET rwN:s:{K} {s}                 (with s)
  insert / delete SADD / SREM rwN:all {M}           (most tables)
  insert, update  ZADD rwN:z {n} {M} if n is not null; update: ZREM if null;
  delete          ZREM rwN:z {M}                    (with n)
  update          SET rwN:h:{K}:u {%op%}            (some tables: a key only
                                                     updates write)
  delete          DEL rwN:h:{K} rwN:j:{K} rwN:s:{K} rwN:h:{K}:u
  insert / delete INCRBY / DECRBY rwN:cnt 1         (always; or rwN:h:count,
                                                     under the hash pattern)
  all three       INCRBY rwN:sum {diff:q}           (FULL tables with q)

and, on demand (C<snapshot_rules_sql>), C<snapshot> rules: the readable
ones of the insert rules, without the counters, so that an on-demand
snapshot may write a row twice.

Tables are hash-partitioned now and then (key changes then move rows
between partitions).

Transactions: 1 to 6 statements on random tables (inserts, updates of random
columns, TOASTed ones changed or not, key changes, deletes), savepoints
rolled back or released, one transaction in six rolled back, some held
open a moment; and, now and then, a large one (thousands of rows inserted,
updated, re-keyed or deleted in one statement), one of 70 subtransactions
(more than a snapshot records), or a prepared one (two-phase) committed or
rolled back a few transactions later. Inserted keys are never reused, so that a
statement never fails whatever the model believes. A key change on a table
with C<REPLICA IDENTITY DEFAULT> also sets the columns that may be TOASTed:
PostgreSQL logs an unchanged TOASTed value of such a change nowhere, and
pg2redis makes it a dead letter (t/166).

=over

=item $rw->check($node, $redis, $label)

Tests, once C<pg2redis_wait()> says Redis caught up: C<pg2redis_verify()>
reports no problem (the problems are printed when it does); the counters
equal C<count(*)> and C<sum(q)> exactly, the set and sorted-set cardinalities
equal the rows that render a member; no dead letter. C<$redis> is a
C<Pg2RedisTest::Redis> or a C<Pg2RedisTest::ClusterClient>.

=item $rw->reset_counters_sql_values($node), $rw->counter_commands($node)

The commands that set every counter to its exact value now (after Redis was
emptied while nothing ran).

=back

=cut

package RandomWorkload;

use strict;
use warnings;

use JSON::PP;
use Pg2RedisTest;
use Test::More;

my $BIG = 1099511627776;    # 2^40: bigint keys start past 32 bits

# Pieces of text: multi-byte (2, 3 and 4 bytes), combining, U+2028, RTL,
# what JSON escapes, what keys escape, what redis-cli splitting cares about.
my @pieces = (
	'plain', "\xc3\xbcn\xc3\xafc\xc3\xb8d\xc3\xa9", "\xe2\x98\x83",
	"\xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e", "\xf0\x9f\x98\x80\xf0\x9f\x9a\x80",
	'quote "x"', "back\\slash", "tab\there", "new\nline", 'braces {id}',
	'pct %25 :colon:', "\xd7\xa2\xd7\x91\xd7\xa8\xd7\x99\xd7\xaa", "e\xcc\x81",
	"\xe2\x80\xa8sep", "it's", '', ' ', '\\u0041 is no escape', '*?[glob]');

# --- the random generator -------------------------------------------------

# xorshift32: the workload's own generator, so that a seed replays it
sub _next
{
	my ($self) = @_;
	my $x = $self->{state};
	$x ^= ($x << 13) & 0xFFFFFFFF;
	$x ^= $x >> 17;
	$x ^= ($x << 5) & 0xFFFFFFFF;
	$self->{state} = $x;
	return $x;
}

# rnd(n): an integer in [0, n)
sub rnd
{
	my ($self, $n) = @_;
	return $n <= 1 ? 0 : $self->_next % $n;
}

# chance(p): true with probability p
sub chance
{
	my ($self, $p) = @_;
	return $self->_next / 4294967296.0 < $p;
}

sub pick
{
	my ($self, @list) = @_;
	return $list[ $self->rnd(scalar @list) ];
}

# --- construction -----------------------------------------------------------

=pod

=over

=item RandomWorkload->new(seed => N, scale => 1, tables => undef, two_phase => 0)

C<scale> multiplies the sizes of large transactions (the soak run uses
more); C<tables> fixes the number of tables; C<two_phase> lets transactions
be prepared and committed later (the server needs
C<max_prepared_transactions>).

=back

=cut

sub new
{
	my ($class, %opts) = @_;
	my $seed = $opts{seed} // time();
	my $self = bless {
		seed      => $seed,
		scale     => $opts{scale} // 1,
		two_phase => $opts{two_phase},
		state  => (($seed * 2654435761 + 12345) & 0xFFFFFFFF) || 1,
		tables => [],
		salt   => 0,
	}, $class;
	$self->_next for 1 .. 10;
	my $ntables = $opts{tables} // 1 + $self->rnd(3);
	$self->_make_table("rw$_") for 1 .. $ntables;
	return $self;
}

sub seed   { return $_[0]->{seed}; }
sub tables { return @{ $_[0]->{tables} }; }

my @column_kinds = qw(q n f ts tags nums doc s c x e ok);
my %column_type  = (
	q    => 'int',
	f    => 'float8',
	ts   => 'timestamptz',
	tags => 'text[]',
	nums => 'int[]',
	doc  => 'jsonb',
	s    => 'text',
	c    => 'text',
	x    => 'text',
	e    => 'text',
	ok   => 'boolean');

# columns whose values can be TOASTed (left out of an update that does not
# change them, unless the replica identity is FULL)
my %toastable = map { $_ => 1 } qw(c x e doc tags);

sub _make_table
{
	my ($self, $name) = @_;
	my $t = {
		name     => $name,
		key      => $self->pick('int', 'bigint', 'composite'),
		full     => $self->chance(0.5),
		next     => 1,
		live     => [],
		pos      => {},
	};
	my @cols = grep { $self->chance(0.55) } @column_kinds;
	push @cols, 's' unless grep { $_ eq 's' } @cols;
	push @cols, $self->pick('x', 'c', 'e') unless grep { $toastable{$_} } @cols;
	$t->{cols} = [ grep { my $c = $_; grep { $_ eq $c } @cols } @column_kinds ];
	$t->{has} = { map { $_ => 1 } @{ $t->{cols} } };
	$t->{numeric_type} = $self->pick('numeric(14,3)', 'numeric');
	$t->{keycols} = $t->{key} eq 'composite' ? [ 'a', 'b' ] : ['id'];
	$t->{kcol} = $t->{key} eq 'composite' ? 'a' : 'id';    # unique on its own
	$t->{ktpl} =
	    $t->{key} ne 'composite' ? '{id}'
	  : $self->chance(0.5) ? '{a}:{esc:b}'
	  :                      '{%pk_escaped%}';
	$t->{member} = $t->{key} eq 'composite' ? '{%pk_escaped%}' : '{id}';
	$t->{set}    = $self->chance(0.75);
	$t->{pairs} =
	  $self->chance(0.7)
	  ? '*'
	  : join(',', @{ $t->{keycols} }, grep { $self->chance(0.5) } @{ $t->{cols} });
	my @never_toasted = grep { !$toastable{$_} } @{ $t->{cols} };
	$t->{json} =
	    $t->{full} ? '*'
	  : join(',', @{ $t->{keycols} }, @never_toasted);
	$t->{json} = undef if $self->chance(0.2);
	$t->{sum} = $t->{full} && $t->{has}{q};
	# keys under a checked rule's pattern that other rules write: the
	# counter, and a key only updates write
	$t->{cnt} = $self->chance(0.5) ? "$name:h:count" : "$name:cnt";
	# hash-partitioned by the unique key column: key changes move rows
	# between partitions
	$t->{parts} = $self->chance(0.3) ? 2 + $self->rnd(3) : 0;
	$t->{touched} = $self->chance(0.3);
	push @{ $self->{tables} }, $t;
	return;
}

=pod

=over

=item $rw->describe

The schema and mapping in one line per table, for the test's diagnostics.

=back

=cut

sub describe
{
	my ($self) = @_;
	return join(
		"\n",
		map {
			sprintf('%s%s: key %s (%s), replica identity %s, columns %s, '
				  . 'HSET {pairs:%s}%s%s%s%s%s',
				$_->{name}, $_->{parts} ? " ($_->{parts} hash partitions)" : '',
				$_->{key}, $_->{ktpl}, $_->{full} ? 'FULL' : 'DEFAULT',
				join(' ', @{ $_->{cols} }),
				$_->{pairs}, defined $_->{json} ? ", SET {json:$_->{json}}" : '',
				$_->{has}{s} ? ', SET {s}' : '', $_->{set} ? ', SADD' : '',
				$_->{has}{n} ? ", ZADD {n} ($_->{numeric_type})" : '',
				$_->{sum} ? ', INCRBY {diff:q}' : '')
			  . ", counter $_->{cnt}" . ($_->{touched} ? ', SET :u on update' : '')
		} $self->tables);
}

sub _key_columns_sql
{
	my ($t) = @_;
	return $t->{key} eq 'int' ? 'id int PRIMARY KEY'
	  : $t->{key} eq 'bigint' ? 'id bigint PRIMARY KEY'
	  :                         'a int, b text, PRIMARY KEY (a, b)';
}

=pod

=over

=item $rw->schema_sql, $rw->rules_sql

The tables, and their insert, update and delete rules.

=item $rw->snapshot_rules_sql, $rw->drop_snapshot_rules_sql

Adds (drops) the C<snapshot> rules: the readable insert rules without the
counters, so that an on-demand snapshot leaves the counters alone.

=back

=cut

sub schema_sql
{
	my ($self) = @_;
	my $sql = '';
	foreach my $t ($self->tables)
	{
		my @defs = (_key_columns_sql($t));
		foreach my $c (@{ $t->{cols} })
		{
			push @defs, "$c " . ($c eq 'n' ? $t->{numeric_type} : $column_type{$c});
		}
		$sql .= "CREATE TABLE $t->{name} (" . join(', ', @defs) . ")"
		  . ($t->{parts} ? " PARTITION BY HASH ($t->{kcol})" : '') . ";\n";
		my @rels = ($t->{name});
		foreach my $p (0 .. $t->{parts} - 1)
		{
			$sql .= "CREATE TABLE $t->{name}_p$p PARTITION OF $t->{name} "
			  . "FOR VALUES WITH (MODULUS $t->{parts}, REMAINDER $p);\n";
			push @rels, "$t->{name}_p$p";
		}
		foreach my $r (@rels)
		{
			$sql .= "ALTER TABLE $r REPLICA IDENTITY FULL;\n" if $t->{full};
			$sql .= "ALTER TABLE $r ALTER COLUMN e SET STORAGE EXTERNAL;\n"
			  if $t->{has}{e};
		}
	}
	return $sql;
}

sub _rule
{
	my ($table, $op, $args, $cond) = @_;
	my $arr = 'ARRAY[' . join(', ', map { _lit($_) } @$args) . ']';
	return "SELECT pg2redis_add_rule('$table', '$op', $arr"
	  . (defined $cond ? ", " . _lit($cond) . "::jsonb" : '') . ");\n";
}

# the readable rules of the insert op (and of snapshots)
sub _load_rules
{
	my ($self, $t, $op) = @_;
	my ($n, $k, $m) = ($t->{name}, $t->{ktpl}, $t->{member});
	my $sql = _rule($n, $op, [ 'HSET', "$n:h:$k", "{pairs:$t->{pairs}}" ]);
	$sql .= _rule($n, $op, [ 'SET', "$n:j:$k", "{json:$t->{json}}" ]) if defined $t->{json};
	$sql .= _rule($n, $op, [ 'SET', "$n:s:$k", '{s}' ]) if $t->{has}{s};
	$sql .= _rule($n, $op, [ 'SADD', "$n:all", $m ]) if $t->{set};
	$sql .= _rule($n, $op, [ 'ZADD', "$n:z", '{n}', $m ],
		'{"column": "n", "op": "is_not_null"}')
	  if $t->{has}{n};
	return $sql;
}

sub rules_sql
{
	my ($self) = @_;
	my $sql = '';
	foreach my $t ($self->tables)
	{
		my ($n, $k, $m) = ($t->{name}, $t->{ktpl}, $t->{member});
		$sql .= $self->_load_rules($t, 'insert');
		$sql .= _rule($n, 'insert', [ 'INCRBY', $t->{cnt}, '1' ]);
		# updates: the same, without the set (a key change is a delete
		# and an insert) and with the member leaving the sorted set on NULL
		$sql .= _rule($n, 'update', [ 'HSET', "$n:h:$k", "{pairs:$t->{pairs}}" ]);
		$sql .= _rule($n, 'update', [ 'SET', "$n:j:$k", "{json:$t->{json}}" ])
		  if defined $t->{json};
		$sql .= _rule($n, 'update', [ 'SET', "$n:s:$k", '{s}' ]) if $t->{has}{s};
		if ($t->{has}{n})
		{
			$sql .= _rule($n, 'update', [ 'ZADD', "$n:z", '{n}', $m ],
				'{"column": "n", "op": "is_not_null"}');
			$sql .= _rule($n, 'update', [ 'ZREM', "$n:z", $m ],
				'{"column": "n", "op": "is_null"}');
			$sql .= _rule($n, 'delete', [ 'ZREM', "$n:z", $m ]);
		}
		$sql .= _rule($n, 'update', [ 'SET', "$n:h:$k:u", '{%op%}' ]) if $t->{touched};
		my @del = ("$n:h:$k");
		push @del, "$n:h:$k:u" if $t->{touched};
		push @del, "$n:j:$k" if defined $t->{json};
		push @del, "$n:s:$k" if $t->{has}{s};
		$sql .= _rule($n, 'delete', [ 'DEL', @del ]);
		$sql .= _rule($n, 'delete', [ 'SREM', "$n:all", $m ]) if $t->{set};
		$sql .= _rule($n, 'delete', [ 'DECRBY', $t->{cnt}, '1' ]);
		if ($t->{sum})
		{
			$sql .= _rule($n, $_, [ 'INCRBY', "$n:sum", '{diff:q}' ])
			  foreach qw(insert update delete);
		}
	}
	return $sql;
}

sub snapshot_rules_sql
{
	my ($self) = @_;
	return join('', map { $self->_load_rules($_, 'snapshot') } $self->tables);
}

sub drop_snapshot_rules_sql
{
	return "DELETE FROM pg2redis.rules WHERE op = 'snapshot';\n";
}

# --- values -------------------------------------------------------------------

# _lit: an SQL string literal of bytes (standard_conforming_strings)
sub _lit
{
	my ($s) = @_;
	$s =~ s/'/''/g;
	return "'$s'";
}

# _text: an SQL text expression of 1..n pieces, perhaps a control character
sub _text
{
	my ($self, $n) = @_;
	my @parts;
	foreach (1 .. 1 + $self->rnd($n))
	{
		push @parts, $self->chance(0.1)
		  ? 'chr(' . $self->pick(1, 7, 27, 31, 127) . ')'
		  : _lit($self->pick(@pieces));
	}
	push @parts, _lit(' ' . $self->rnd(1000)) if $self->chance(0.5);
	return '(' . join(' || ', @parts) . ')';
}

sub _salt { return ++$_[0]->{salt} . '.' . $_[0]->rnd(1_000_000); }

sub _json_string
{
	my ($self) = @_;
	my $s = $self->pick(@pieces) . ($self->chance(0.2) ? "\x01" : '');
	$s =~ s/(["\\])/\\$1/g;
	$s =~ s/([\x00-\x1f])/sprintf('\\u%04x', ord($1))/ge;
	return "\"$s\"";
}

sub _json_value
{
	my ($self, $depth) = @_;
	my $k = $self->rnd($depth > 2 ? 5 : 7);
	return $self->pick('1', '-0', '1.50', '1e10', '123456789012345678901234567890.123',
		'-3.25e-5', '0.1')
	  if $k == 0;
	return $self->pick('true', 'false', 'null') if $k == 1;
	return $self->_json_string if $k <= 3;
	return '"' . ('x' x $self->rnd(50)) . '"' if $k == 4;
	if ($k == 5)
	{
		return '[' . join(', ', map { $self->_json_value($depth + 1) } 1 .. $self->rnd(4)) . ']';
	}
	return '{'
	  . join(', ', map { $self->_json_string . ': ' . $self->_json_value($depth + 1) } 1 .. $self->rnd(4))
	  . '}';
}

# _value(t, column): an SQL expression of a random value of that column
sub _value
{
	my ($self, $t, $c) = @_;
	return 'NULL' if $self->chance($c eq 's' ? 0.08 : 0.15);
	if ($c eq 'q') { return $self->rnd(200) - 50; }
	if ($c eq 'n')
	{
		return $self->pick("'Infinity'", "'-Infinity'")
		  if $t->{numeric_type} eq 'numeric' && $self->chance(0.05);
		my $int = $self->pick(0, $self->rnd(10), $self->rnd(100000), $self->rnd(999999999));
		my $frac = $self->rnd(4) ? '.' . join('', map { $self->rnd(10) } 1 .. 1 + $self->rnd(3)) : '';
		$frac .= join('', map { $self->rnd(10) } 1 .. 12)
		  if $t->{numeric_type} eq 'numeric' && $self->chance(0.1);
		return ($self->chance(0.3) ? '-' : '') . "$int$frac";
	}
	if ($c eq 'f')
	{
		return $self->pick("'NaN'", "'Infinity'", "'-Infinity'", "'-0'", "'5e-324'",
			"'1e300'", '0.1', '1.0/3', ($self->rnd(2_000_000) - 1_000_000) . '/7.0')
		  . '::float8';
	}
	if ($c eq 'ts')
	{
		return $self->pick("'infinity'", "'-infinity'", "'0044-03-15 12:00:00+00 BC'")
		  if $self->chance(0.08);
		return sprintf("'%04d-%02d-%02d %02d:%02d:%02d.%06d%s'::timestamptz",
			1900 + $self->rnd(200), 1 + $self->rnd(12), 1 + $self->rnd(28),
			$self->rnd(24), $self->rnd(60), $self->rnd(60),
			$self->pick(0, $self->rnd(1000000)),
			$self->pick('+00', '+05:30', '-08', '+14'));
	}
	if ($c eq 'tags')
	{
		return "'{}'::text[]" if $self->chance(0.1);
		return 'ARRAY[' . join(', ', map { $self->chance(0.2) ? 'NULL' : $self->_text(2) }
			  1 .. 1 + $self->rnd(4)) . ']::text[]';
	}
	if ($c eq 'nums')
	{
		return "'{{1,2},{3,NULL}}'::int[]" if $self->chance(0.15);
		return 'ARRAY[' . join(', ', map { $self->chance(0.2) ? 'NULL' : $self->rnd(1000) - 500 }
			  1 .. 1 + $self->rnd(5)) . ']::int[]';
	}
	if ($c eq 'doc')
	{
		return _lit($self->_json_value(0)) . '::jsonb' if $self->rnd(3);
		# a large document, TOASTed
		return "(SELECT jsonb_object_agg('k' || g, md5(g::text || '" . $self->_salt
		  . "')) FROM generate_series(1, " . (100 + $self->rnd(300)) . ") g)";
	}
	if ($c eq 's') { return $self->_text(3); }
	if ($c eq 'c')
	{
		# compressible: inline once compressed, or small
		return $self->_text(2) if $self->chance(0.3);
		return 'repeat(' . $self->_text(2) . ', ' . (300 + $self->rnd(3000)) . ')';
	}
	if ($c eq 'x')
	{
		my $k = $self->rnd(4);
		my $salt = $self->_salt;
		return $self->_text(2) if $k == 0;
		# incompressible, out of line (> 2 kB of md5 hex)
		return "(SELECT string_agg(md5(g::text || '$salt'), '') FROM generate_series(1, "
		  . (70 + $self->rnd(300)) . ") g)"
		  if $k <= 2;
		# half compressible: compressed, and still out of line
		return "(SELECT string_agg(md5(g::text || '$salt') || repeat('z', 40), '') "
		  . "FROM generate_series(1, " . (200 + $self->rnd(400)) . ") g)";
	}
	if ($c eq 'e')
	{
		return $self->_text(2) if $self->chance(0.3);
		return 'repeat(' . $self->_text(2) . ', ' . (100 + $self->rnd(1500)) . ')';
	}
	if ($c eq 'ok') { return $self->pick('true', 'false'); }
	die "unknown column kind $c";
}

# _bulk_value(t, column, g): an SQL expression over the integer g, for
# statements of thousands of rows
sub _bulk_value
{
	my ($self, $t, $c, $g) = @_;
	my $salt = $self->_salt;
	my %e = (
		q    => "($g % 97)::int - 20",
		n    => "CASE WHEN $g % 11 = 0 THEN NULL ELSE ($g % 1000) * 1.25 END",
		f    => "$g / 7.0::float8",
		ts   => "timestamptz '2021-03-04 05:06:07.891+00' + ($g % 100000) * interval '37 seconds'",
		tags => "ARRAY['bulk ' || $g, NULL, '\xc3\xbc \"q\"']",
		nums => "ARRAY[($g % 100000)::int, NULL, -($g % 1000)::int]",
		doc  => "jsonb_build_object('g', $g, '\xc3\xbc \"x\"', ARRAY[$g, $g + 1], 'n', $g * 0.5)",
		s    => "'bulk \xe2\x98\x83 ' || $g || ' $salt'",
		c    => "CASE WHEN $g % 20 = 0 THEN repeat('bulk \xc3\xbc ', 1000) ELSE 'c' || $g END",
		x    => "CASE WHEN $g % 25 = 0 THEN (SELECT string_agg(md5(h::text || $g || '$salt'), '') "
		  . "FROM generate_series(1, 80) h) END",
		e  => "CASE WHEN $g % 30 = 0 THEN repeat('ext ' || $g, 700) ELSE 'e' END",
		ok => "$g % 2 = 0");
	return $e{$c};
}

# --- the model of the live keys -------------------------------------------------

sub _add
{
	my ($t, $k) = @_;
	return if exists $t->{pos}{$k};
	$t->{pos}{$k} = scalar @{ $t->{live} };
	push @{ $t->{live} }, $k;
	return;
}

sub _remove
{
	my ($t, $k) = @_;
	my $i = delete $t->{pos}{$k};
	return unless defined $i;
	my $last = pop @{ $t->{live} };
	if ($i < @{ $t->{live} })
	{
		$t->{live}[$i] = $last;
		$t->{pos}{$last} = $i;
	}
	return;
}

# Concurrent sessions (batch_sqls) each own the keys of one residue class
# (their lane) modulo the number of sessions, so that they never wait for
# each other's row locks in an order that deadlocks.
sub _lanes { return $_[0]->{lanes} // 1; }
sub _lane  { return $_[0]->{lane}  // 0; }

# _mine: the SQL condition that a row is the current session's
sub _mine
{
	my ($self, $t) = @_;
	return '' if $self->_lanes == 1;
	return " AND $t->{kcol} % " . $self->_lanes . ' = ' . $self->_lane;
}

sub _is_mine
{
	my ($self, $k) = @_;
	return $k % $self->_lanes == $self->_lane;
}

# a fresh key value of the unique key column (id, or a), of the session's
# lane, the first of $n (one lane apart)
sub _fresh
{
	my ($self, $t, $n) = @_;
	my $k = $t->{next};
	$k++ while $k % $self->_lanes != $self->_lane;
	$t->{next} = $k + $self->_lanes * ($n // 1);
	return $t->{key} eq 'bigint' ? $k + $BIG : $k;
}

# a key the transaction believes alive (committed and not removed by it, or
# added by it), or undef
sub _target
{
	my ($self, $tx, $t) = @_;
	my @added = keys %{ $tx->{added}{ $t->{name} } };
	if (@added && ($self->chance(0.3) || !@{ $t->{live} }))
	{
		return $added[ $self->rnd(scalar @added) ];
	}
	foreach (1 .. 8)
	{
		last unless @{ $t->{live} };
		my $k = $t->{live}[ $self->rnd(scalar @{ $t->{live} }) ];
		return $k unless $tx->{removed}{ $t->{name} }{$k} || !$self->_is_mine($k);
	}
	return undef;
}

sub _where
{
	my ($t, $k) = @_;
	return "$t->{kcol} = $k";
}

# --- statements -------------------------------------------------------------------

sub _insert
{
	my ($self, $tx, $t) = @_;
	my $k = $self->_fresh($t);
	my @cols = @{ $t->{keycols} };
	my @vals = ($k);
	push @vals, $self->_text(3) if $t->{key} eq 'composite';
	foreach my $c (@{ $t->{cols} })
	{
		next if $self->chance(0.1);    # left to its default, NULL
		push @cols, $c;
		push @vals, $self->_value($t, $c);
	}
	$tx->{added}{ $t->{name} }{$k} = 1;
	return "INSERT INTO $t->{name} (" . join(', ', @cols) . ") VALUES (" . join(', ', @vals) . ");\n";
}

sub _update
{
	my ($self, $tx, $t) = @_;
	my $k = $self->_target($tx, $t) // return $self->_insert($tx, $t);
	my @set;
	foreach my $c (@{ $t->{cols} })
	{
		next unless $self->chance(0.35);
		push @set, $c eq 'q' && $self->chance(0.5)
		  ? "q = coalesce(q, 0) + " . ($self->rnd(21) - 10)
		  : "$c = " . $self->_value($t, $c);
	}
	# at times nothing but a never-TOASTed column: TOASTed ones unchanged
	@set = ("s = " . $self->_value($t, 's')) if !@set && $t->{has}{s};
	@set = ("$t->{cols}[0] = $t->{cols}[0]") unless @set;
	return "UPDATE $t->{name} SET " . join(', ', @set) . " WHERE " . _where($t, $k) . ";\n";
}

# _rewrite_toastable: with REPLICA IDENTITY DEFAULT a key change carries no
# unchanged TOASTed value (PostgreSQL logs neither it nor the old row), so
# it is a dead letter (t/166): such key changes set every column that may
# be TOASTed, as an application of such a table must.
sub _rewrite_toastable
{
	my ($self, $t, $g) = @_;
	return '' if $t->{full};
	return join('', map {
		", $_ = " . (defined $g ? $self->_bulk_value($t, $_, $g) : $self->_value($t, $_))
	} grep { $toastable{$_} } @{ $t->{cols} });
}

sub _key_change
{
	my ($self, $tx, $t) = @_;
	my $k = $self->_target($tx, $t) // return $self->_insert($tx, $t);
	my $name = $t->{name};
	if ($t->{key} eq 'composite' && $self->chance(0.4))
	{
		# only b changes: a stays unique, the model does not change
		return "UPDATE $name SET b = " . $self->_text(3) . $self->_rewrite_toastable($t)
		  . " WHERE " . _where($t, $k) . ";\n";
	}
	my $new = $self->_fresh($t);
	my $also = $t->{has}{s} && $self->chance(0.5) ? ", s = " . $self->_value($t, 's') : '';
	$also .= $self->_rewrite_toastable($t);
	delete $tx->{added}{$name}{$k};
	$tx->{removed}{$name}{$k} = 1;
	$tx->{added}{$name}{$new} = 1;
	return "UPDATE $name SET $t->{kcol} = $new$also WHERE " . _where($t, $k) . ";\n";
}

sub _delete
{
	my ($self, $tx, $t) = @_;
	my $k = $self->_target($tx, $t) // return $self->_insert($tx, $t);
	delete $tx->{added}{ $t->{name} }{$k};
	$tx->{removed}{ $t->{name} }{$k} = 1;
	return "DELETE FROM $t->{name} WHERE " . _where($t, $k) . ";\n";
}

sub _statement
{
	my ($self, $tx) = @_;
	my $t = $self->pick($self->tables);
	my $op = $self->rnd(100);
	return $self->_insert($tx, $t) if $op < 35;
	return $self->_update($tx, $t) if $op < 65;
	return $self->_key_change($tx, $t) if $op < 78;
	return $self->_delete($tx, $t);
}

sub _copy_tx
{
	my ($tx) = @_;
	my %c;
	foreach my $w (qw(added removed))
	{
		foreach my $n (keys %{ $tx->{$w} })
		{
			$c{$w}{$n} = { %{ $tx->{$w}{$n} } };
		}
	}
	return \%c;
}

sub _commit_tx
{
	my ($self, $tx) = @_;
	foreach my $t ($self->tables)
	{
		_remove($t, $_) foreach keys %{ $tx->{removed}{ $t->{name} } // {} };
		_add($t, $_) foreach keys %{ $tx->{added}{ $t->{name} } // {} };
	}
	return;
}

=pod

=over

=item $rw->transaction(large => 0.03)

SQL of one random transaction; C<large> is the chance that it is a large
one instead.

=item $rw->batch_sql($n, pause => 0, large => 0.03)

C<$n> transactions, with C<pg_sleep(pause)> after each when given.

=item $rw->batch_sqls($n, sessions => 2, pause => 0, large => 0.03)

A script per session, of C<$n> transactions each, to run at the same time:
each session changes only rows of its own residue class of the key, so
that they interleave without deadlocks.

=item $rw->initial_rows_sql($n)

One transaction inserting C<$n> rows into each table.

=back

=cut

sub transaction
{
	my ($self, %opts) = @_;
	my $sql = $self->_finish_prepared(0.3);
	return $sql . $self->large_transaction if $self->chance($opts{large} // 0.03);
	return $sql . $self->_prepared_transaction
	  if $self->{two_phase} && $self->chance(0.05);
	return $sql . $self->_many_savepoints if $self->chance(0.01);
	my $tx = { added => {}, removed => {} };
	$sql .= "BEGIN;\n";
	my $sp = 0;
	for (1 .. 1 + $self->rnd(6))
	{
		# held open a moment, while the other session commits and
		# snapshots read their chunks
		$sql .= "SELECT pg_sleep(0.02);\n" if $self->chance(0.05);
		if ($self->chance(0.15))
		{
			# a savepoint with 1..3 statements, rolled back or released
			my $saved = _copy_tx($tx);
			$sql .= "SAVEPOINT s$sp;\n";
			$sql .= $self->_statement($tx) for 1 .. 1 + $self->rnd(3);
			if ($self->chance(0.6))
			{
				$sql .= "ROLLBACK TO SAVEPOINT s$sp;\n";
				$tx = $saved;
			}
			else
			{
				$sql .= "RELEASE SAVEPOINT s$sp;\n";
			}
			$sp++;
			next;
		}
		$sql .= $self->_statement($tx);
	}
	if ($self->chance(1 / 6))
	{
		return $sql . "ROLLBACK;\n";
	}
	$self->_commit_tx($tx);
	return $sql . "COMMIT;\n";
}

# _many_savepoints: a transaction of 70 subtransactions, more than a
# snapshot records (its subxip overflows), some rolled back
sub _many_savepoints
{
	my ($self) = @_;
	my $tx = { added => {}, removed => {} };
	my $sql = "BEGIN;\n";
	foreach my $i (1 .. 70)
	{
		my $saved = _copy_tx($tx);
		$sql .= "SAVEPOINT m$i;\n" . $self->_statement($tx);
		if ($self->chance(0.2))
		{
			$sql .= "ROLLBACK TO SAVEPOINT m$i;\n";
			$tx = $saved;
		}
		else
		{
			$sql .= "RELEASE SAVEPOINT m$i;\n";
		}
	}
	$self->_commit_tx($tx);
	return $sql . "COMMIT;\n";
}

# _prepared_transaction: inserts of fresh rows, prepared (two-phase); a
# later transaction of the same session commits or rolls it back
# (_finish_prepared), so that it stays open across others' commits
sub _prepared_transaction
{
	my ($self) = @_;
	my $tx = { added => {}, removed => {} };
	my $gid = sprintf('rw_%s_%d', $self->{seed}, ++$self->{gids});
	my $sql = "BEGIN;\n";
	$sql .= $self->_insert($tx, $self->pick($self->tables)) for 1 .. 1 + $self->rnd(3);
	push @{ $self->{prepared}[ $self->_lane ] }, [ $gid, $tx ];
	return $sql . "PREPARE TRANSACTION '$gid';\n";
}

# _finish_prepared(p): with chance p each, the session's prepared
# transactions are committed (or, one in four, rolled back)
sub _finish_prepared
{
	my ($self, $p) = @_;
	my $pending = $self->{prepared}[ $self->_lane ] // [];
	my @left;
	my $sql = '';
	foreach my $x (@$pending)
	{
		my ($gid, $tx) = @$x;
		if (!$self->chance($p))
		{
			push @left, $x;
			next;
		}
		if ($self->chance(0.25))
		{
			$sql .= "ROLLBACK PREPARED '$gid';\n";
			next;
		}
		$sql .= "COMMIT PREPARED '$gid';\n";
		$self->_commit_tx($tx);
	}
	$self->{prepared}[ $self->_lane ] = \@left;
	return $sql;
}

sub _bulk_insert_sql
{
	my ($self, $t, $n) = @_;
	my $first = $self->_fresh($t, $n);
	my $g = $t->{key} eq 'bigint' ? "(g - $BIG)" : 'g';
	my @cols = (@{ $t->{keycols} }, @{ $t->{cols} });
	my @vals = ('g');
	push @vals, "'bulk:' || g || ' {\xc3\xbc}%'" if $t->{key} eq 'composite';
	push @vals, map { $self->_bulk_value($t, $_, $g) } @{ $t->{cols} };
	my $step = $self->_lanes;
	my $sql = "INSERT INTO $t->{name} (" . join(', ', @cols) . ") SELECT "
	  . join(', ', @vals) . " FROM generate_series($first, "
	  . ($first + $step * ($n - 1)) . ", $step) g;\n";
	return ($sql, [ map { $first + $step * $_ } 0 .. $n - 1 ]);
}

sub large_transaction
{
	my ($self) = @_;
	my $t = $self->pick($self->tables);
	my $n = int((500 + $self->rnd(1500)) * $self->{scale});
	my $commit = $self->chance(0.8);
	my $kind = @{ $t->{live} } > 200 ? $self->rnd(4) : 0;
	my $k = $t->{kcol};
	my $sql;
	my @add;
	my @rm;
	if ($kind == 1)
	{
		# every row of a residue class updated
		my $m = 1 + $self->rnd(3);
		my $c = $self->pick(@{ $t->{cols} });
		$sql = "UPDATE $t->{name} SET $c = " . $self->_bulk_value($t, $c, $k)
		  . " WHERE $k % $m = " . $self->rnd($m) . $self->_mine($t) . ";\n";
	}
	my @sorted = $kind == 2 ? sort { $a <=> $b } grep { $self->_is_mine($_) } @{ $t->{live} } : ();
	$kind = 0 if $kind == 2 && !@sorted;
	if ($kind == 0)
	{
		my $keys;
		($sql, $keys) = $self->_bulk_insert_sql($t, $n);
		@add = @$keys;
	}
	elsif ($kind == 2)
	{
		# a range of keys moved to fresh ones
		my $from = $self->rnd(scalar @sorted);
		my $to = $from + $n < @sorted ? $from + $n : $#sorted;
		my ($lo, $hi) = @sorted[ $from, $to ];
		my $span = $hi - $lo + 1;
		my $d = $self->_fresh($t, $span) - $lo;
		$sql = "UPDATE $t->{name} SET $k = $k + $d" . $self->_rewrite_toastable($t, $k)
		  . " WHERE $k BETWEEN $lo AND $hi" . $self->_mine($t) . ";\n";
		@rm = @sorted[ $from .. $to ];
		@add = map { $_ + $d } @rm;
	}
	elsif ($kind == 3)
	{
		my $m = 2 + $self->rnd(4);
		my $r = $self->rnd($m);
		$sql = "DELETE FROM $t->{name} WHERE $k % $m = $r" . $self->_mine($t) . ";\n";
		@rm = grep { $_ % $m == $r && $self->_is_mine($_) } @{ $t->{live} };
	}
	if ($commit)
	{
		_remove($t, $_) foreach @rm;
		_add($t, $_) foreach @add;
	}
	return "BEGIN;\n$sql" . ($commit ? "COMMIT;\n" : "ROLLBACK;\n");
}

sub batch_sql
{
	my ($self, $n, %opts) = @_;
	my $sql = '';
	foreach (1 .. $n)
	{
		$sql .= $self->transaction(%opts);
		$sql .= "SELECT pg_sleep($opts{pause});\n" if $opts{pause};
	}
	return $sql . $self->_finish_prepared(1);
}

# batch_sqls($n, sessions => 2, %opts): a script per session, $n
# transactions each, to run concurrently
sub batch_sqls
{
	my ($self, $n, %opts) = @_;
	my $k = $opts{sessions} // 2;
	my @sql = ('') x $k;
	$self->{lanes} = $k;
	foreach (1 .. $n)
	{
		foreach my $lane (0 .. $k - 1)
		{
			$self->{lane} = $lane;
			$sql[$lane] .= $self->transaction(%opts);
			$sql[$lane] .= "SELECT pg_sleep($opts{pause});\n" if $opts{pause};
		}
	}
	foreach my $lane (0 .. $k - 1)
	{
		$self->{lane} = $lane;
		$sql[$lane] .= $self->_finish_prepared(1);
	}
	delete $self->{lanes};
	delete $self->{lane};
	return @sql;
}

sub initial_rows_sql
{
	my ($self, $n) = @_;
	my $sql = "BEGIN;\n";
	foreach my $t ($self->tables)
	{
		my ($s, $keys) = $self->_bulk_insert_sql($t, $n);
		$sql .= $s;
		_add($t, $_) foreach @$keys;
	}
	return $sql . "COMMIT;\n";
}

# --- the oracle ---------------------------------------------------------------------

=pod

=over

=item $rw->expected_counters($node)

A hash reference: counter key => its exact value, from the tables now.

=back

=cut

sub expected_counters
{
	my ($self, $node) = @_;
	my %want;
	foreach my $t ($self->tables)
	{
		my $n = $t->{name};
		my ($count, $sum, $scored) = split /\|/,
		  $node->safe_psql('postgres',
			    "SELECT count(*), "
			  . ($t->{has}{q} ? 'coalesce(sum(q), 0)' : '0') . ', '
			  . ($t->{has}{n} ? 'count(n)' : '0')
			  . " FROM $n");
		$want{ $t->{cnt} } = $count;
		$want{"$n:sum"} = $sum if $t->{sum};
		$want{"SCARD $n:all"} = $count if $t->{set};
		$want{"ZCARD $n:z"} = $scored if $t->{has}{n};
	}
	return \%want;
}

# counter_commands: the Redis commands that set the counters to their
# exact values now
sub counter_commands
{
	my ($self, $node) = @_;
	my $want = $self->expected_counters($node);
	return map { [ 'SET', $_, $want->{$_} ] } grep { !/ / } sort keys %$want;
}

sub _show
{
	my ($v) = @_;
	return 'NULL' unless defined $v;
	$v = substr($v, 0, 120) . '...(' . length($v) . ' bytes)' if length($v) > 120;
	$v =~ s/\n/\\n/g;
	return $v;
}

sub check
{
	my ($self, $node, $redis, $label) = @_;
	local $Test::Builder::Level = $Test::Builder::Level + 1;

	wait_for_redis($node, 120, "$label: Redis caught up");

	# pg2redis_verify(), as JSON: values may hold newlines and separators
	my ($rc, $out, $err) = $node->psql('postgres',
		q{SELECT coalesce(json_agg(json_build_object('relation', relation::text, 'key', key,
		    'problem', problem, 'expected', expected, 'found', found)
		    ORDER BY problem = 'summary', relation::text, key), '[]') FROM pg2redis_verify()},
		timeout => 300);
	my $rows = $rc == 0 ? JSON::PP->new->decode($out) : [];
	is($rc, 0, "$label: pg2redis_verify() runs") or diag($err);
	my @problems = grep { $_->{problem} ne 'summary' } @$rows;
	note("$label: pg2redis_verify(): $_->{relation}: $_->{expected}; $_->{found}")
	  foreach grep { $_->{problem} eq 'summary' } @$rows;
	is(scalar @problems, 0, "$label: pg2redis_verify() finds no problem")
	  or diag(join("\n",
		  (map { "$_->{relation} " . _show($_->{key}) . " $_->{problem}: expected "
			  . _show($_->{expected}) . ", found " . _show($_->{found}) }
			  @problems[ 0 .. ($#problems < 29 ? $#problems : 29) ]),
		  (@problems > 30 ? ('... and ' . (@problems - 30) . ' more') : ())));

	# the counters, exactly
	my $want = $self->expected_counters($node);
	my @names = sort keys %$want;
	my @got = $redis->pipeline(map { / / ? [ split / /, $_ ] : [ 'GET', $_ ] } @names);
	my %got;
	@got{@names} = map { ref $_ ? "error $_->{error}" : $_ // 0 } @got;
	is_deeply(\%got, $want, "$label: counters, set and sorted-set sizes are exact");

	my $dead = $node->safe_psql('postgres',
		q{SELECT count(*) || coalesce(': ' || string_agg(left(error, 200) || ' ' || left(command::text, 200), '; '), '')
		    FROM (SELECT * FROM pg2redis.dead_letters ORDER BY id LIMIT 5) d});
	my $n = $node->safe_psql('postgres', 'SELECT count(*) FROM pg2redis.dead_letters');
	is($n, '0', "$label: no dead letters") or diag($dead);
	return;
}

1;
