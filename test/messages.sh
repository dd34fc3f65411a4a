#!/usr/bin/env bash
# test/messages.sh [ROOT]: fails when an ereport at WARNING or above has no
# errcode (CONTRIBUTING.md, "Errors and messages").  An errcode_for_*() call
# counts.  A level given by an expression (a variable, "in_worker ? WARNING :
# LOG") is checked unless it names only levels below WARNING.  elog(ERROR) is
# for can't-happen internal errors and is not checked; elog(WARNING), which
# cannot carry an errcode, is refused.  Every .c file under ROOT/src (default:
# this tree), at any depth.
# Prints one line per call without one and a summary.
set -euo pipefail
SELF=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")
cd "${1:-$(dirname "$SELF")/..}"
mapfile -t files < <(find src -name '*.c' | sort)
exec perl -x "$SELF" "${files[@]}"
#!perl
# usage: perl -x messages.sh FILES... ; prints ereport(WARNING+) without errcode
use strict; use warnings;
my %low = map { $_ => 1 } qw(DEBUG1 DEBUG2 DEBUG3 DEBUG4 DEBUG5 LOG
  LOG_SERVER_ONLY COMMERROR INFO NOTICE);
my $bad = 0; my $n = 0;

# call_end: the index of the parenthesis that closes the one at $i
sub call_end {
	my ($src, $i) = @_;
	my $depth = 0;
	for (; $i < length $src; $i++) {
		my $c = substr($src, $i, 1);
		if ($c eq "'") { $i++; $i++ if substr($src,$i,1) eq '\\'; $i++; next; }
		if ($c eq '"') { $i++; while (substr($src,$i,1) ne '"') { $i++ if substr($src,$i,1) eq '\\'; $i++; } next; }
		$depth++ if $c eq '(';
		if ($c eq ')') { $depth--; return $i if $depth == 0; }
	}
	return length($src) - 1;
}

for my $f (@ARGV) {
	open(my $fh, '<', $f) or die "$f: $!";
	local $/; my $src = <$fh>; close $fh;
	# comments become blanks (lines kept), skipping string and char literals
	$src =~ s{("(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*')|(/\*.*?\*/)}
			 {defined $1 ? $1 : $2 =~ s/[^\n]/ /gr}gse;
	while ($src =~ /\bereport\s*\(/g) {
		my $start = $-[0];
		my $end = call_end($src, index($src, '(', $start));
		my $call = substr($src, $start, $end - $start + 1);
		pos($src) = $start + 1;
		# the level: the first argument, up to a comma outside parentheses
		my ($args) = $call =~ /^ereport\s*\((.*)\)$/s;
		my ($lvl, $d) = ('', 0);
		for my $c (split //, $args) {
			last if $c eq ',' && $d == 0;
			$d++ if $c eq '('; $d-- if $c eq ')';
			$lvl .= $c;
		}
		my @words = $lvl =~ /([A-Za-z_]\w*)/g;
		next if @words && !grep { !$low{$_} } @words;
		$n++;
		next if $call =~ /\berrcode(?:_for_\w+)?\s*\(/;
		my $line = 1 + (substr($src, 0, $start) =~ tr/\n//);
		$lvl =~ s/\s+/ /g; $lvl =~ s/^ | $//g;
		print "$f:$line: ereport($lvl) without errcode\n"; $bad++;
	}
	# a warning is for the user: elog() cannot give it an errcode
	while ($src =~ /\belog\s*\(\s*WARNING\b/g) {
		my $line = 1 + (substr($src, 0, $-[0]) =~ tr/\n//);
		$n++;
		print "$f:$line: elog(WARNING), which has no errcode (use ereport)\n"; $bad++;
	}
}
print "messages: $n ereport calls at WARNING or above, $bad without errcode\n";
exit($bad ? 1 : 0);
