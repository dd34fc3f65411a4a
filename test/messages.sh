#!/usr/bin/env bash
# test/messages.sh: fails when an ereport at WARNING or above has no errcode
# (CONTRIBUTING.md, "Errors and messages").  An errcode_for_*() call counts;
# elog() is for can't-happen internal errors and is not checked.
# Prints one line per call without one and a summary.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
exec perl -x "$(pwd)/test/messages.sh" src/*.c src/*/*.c
#!perl
# usage: msgcheck.pl FILES... ; prints ereport(WARNING+) without errcode
use strict; use warnings;
my $bad = 0; my $n = 0;
for my $f (@ARGV) {
	open(my $fh, '<', $f) or die "$f: $!";
	local $/; my $src = <$fh>; close $fh;
	while ($src =~ /\bereport\s*\(\s*(WARNING|ERROR|FATAL|PANIC|elevel|level)\b/g) {
		my $start = $-[0]; my $lvl = $1;
		my $depth = 0; my $i = index($src, '(', $start); my $end = $i;
		for (; $i < length $src; $i++) {
			my $c = substr($src, $i, 1);
			if ($c eq '"') { $i++; while (substr($src,$i,1) ne '"') { $i++ if substr($src,$i,1) eq '\\'; $i++; } next; }
			$depth++ if $c eq '(';
			if ($c eq ')') { $depth--; if ($depth == 0) { $end = $i; last; } }
		}
		my $call = substr($src, $start, $end - $start + 1);
		$n++;
		next if $call =~ /\berrcode(?:_for_\w+)?\s*\(/;
		my $line = 1 + (substr($src, 0, $start) =~ tr/\n//);
		print "$f:$line: ereport($lvl) without errcode\n"; $bad++;
	}
}
print "messages: $n ereport calls at WARNING or above, $bad without errcode\n";
exit($bad ? 1 : 0);
