#!/usr/bin/env bash
# test/layers.sh [ROOT]: fails when a stage of src/ reaches a stage above it.
#
# src/ has one folder per pipeline stage, in this order (each may use the
# ones before it, never one after it):
#
#   common  redis  rules  mapping  sender  snapshot  decode  api
#
# and src/pg2redis.c (the module's entry) above them all.  Two checks:
#  1. includes: a file of src/S/ (at any depth) or a shared header of stage
#     S includes only include/pg2redis/ headers of stages up to S, and
#     private headers of its own folder.  Each #include, quoted or in angle
#     brackets, is resolved as the compiler does (beside the file, then
#     -I include, then -I .), so "include/pg2redis/x.h" is no way around.
#     A header of include/pg2redis/ belongs to the stage of the source file
#     of the same name (src/*/NAME.c), or says so in a "Stage: S" line;
#  2. symbols (when the objects are built): no object of src/S/ refers to a
#     function or variable defined in a later stage, not even through an
#     extern declaration of its own.  A lower stage that must call up does
#     so through a hooks struct the upper stage fills (SenderHooks,
#     DecodeHooks).
# A .c file below src/S/ is refused: the Makefile would not build it.
# test/checks_selftest.sh plants each kind of violation and checks that
# this script reports it.
# Prints one line per violation and a summary; exits non-zero on any.
set -euo pipefail
SELF=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")
ROOT=${1:-$(dirname "$SELF")/..}
cd "$ROOT"
exec perl -x "$SELF" "$@"
#!perl
use strict;
use warnings;
use Cwd qw(abs_path getcwd);
use File::Basename qw(dirname);
use File::Find;
use File::Spec;

my $root = getcwd();

my @order = qw(common redis rules mapping sender snapshot decode api top);
my %rank;
@rank{@order} = (0 .. $#order);
my $bad = 0;
my ($nfiles, $nincl, $nsyms) = (0, 0, 0);

sub stage_of_file
{
	my ($path) = @_;
	return 'top' if $path =~ m{^src/[^/]+\.[cho]$};
	return $1 if $path =~ m{^src/([^/]+)/};
	return undef;
}

# every file under src/, at any depth (a file of a deeper folder belongs to
# the stage of its first folder)
sub tree_files
{
	my ($re) = @_;
	my @out;
	find({ wanted => sub { push @out, $File::Find::name if /$re/ && -f $_ },
		   no_chdir => 1 }, 'src');
	return sort @out;
}

# resolve: the file an #include names, relative to the root, as the
# compiler finds it (quoted: beside the including file first; then the
# Makefile's -I include and -I .), or undef for a PostgreSQL, system or
# library header.
sub resolve
{
	my ($from, $quoted, $inc) = @_;
	my @dirs = ('include', '.');
	unshift @dirs, dirname($from) if $quoted;
	for my $d (@dirs)
	{
		my $p = "$d/$inc";
		next unless -f $p;
		$p = File::Spec->abs2rel(abs_path($p), $root);
		return $p;
	}
	return undef;
}

# the stage of each shared header
my %hstage;
for my $h (glob('include/pg2redis/*.h'))
{
	(my $name = $h) =~ s{.*/}{};
	(my $base = $name) =~ s/\.h$//;
	my @c = glob("src/*/$base.c");
	open(my $fh, '<', $h) or die "$h: $!";
	my ($declared) = map { /^\s*\*\s*Stage:\s*(\w+)/ ? $1 : () } <$fh>;
	close $fh;
	my $s = $declared // (@c ? stage_of_file($c[0]) : undef);
	if (!defined $s || !exists $rank{$s})
	{
		print "$h: cannot tell its stage (no src/*/$base.c, no \"Stage:\" line)\n";
		$bad++;
		next;
	}
	$hstage{$h} = $s;
}

my @files = tree_files(qr/\.[ch]$/);
for my $f (@files)
{
	my $s = stage_of_file($f);
	if (!exists $rank{$s})
	{
		print "$f: folder \"$s\" is not a stage (test/layers.sh lists them)\n";
		$bad++;
		next;
	}
	if ($f =~ m{^src/[^/]+/[^/]+/.*\.c$})
	{
		print "$f: not built (the Makefile compiles src/*.c and src/*/*.c)\n";
		$bad++;
	}
}
# the shared headers are checked too: one that includes a later stage's
# header hands it to every file that includes it
push @files, sort keys %hstage;
for my $f (@files)
{
	my $s = $f =~ m{^include/} ? $hstage{$f} : stage_of_file($f);
	next unless defined $s && exists $rank{$s};
	$nfiles++;
	open(my $fh, '<', $f) or die "$f: $!";
	my $ln = 0;
	while (my $line = <$fh>)
	{
		$ln++;
		next unless $line =~ /^\s*#\s*include\s*(["<])([^">]+)[">]/;
		my ($quoted, $inc) = ($1 eq '"', $2);
		my $p = resolve($f, $quoted, $inc);
		next unless defined $p;	# a PostgreSQL or library header
		$nincl++;
		if (exists $hstage{$p})
		{
			my $hs = $hstage{$p};
			if ($rank{$hs} > $rank{$s})
			{
				print "$f:$ln: stage $s includes $inc of the later stage $hs\n";
				$bad++;
			}
		}
		elsif ($p =~ m{^src/})
		{
			my $t = stage_of_file($p);
			next if defined $t && $t eq $s && $f =~ m{^src/};	# its own folder's
			print "$f:$ln: includes \"$inc\", a private header of another folder ($p)\n";
			$bad++;
		}
		elsif ($p !~ m{^include/pg2redis/[^/]+\.h$})
		{
			print "$f:$ln: includes \"$inc\" ($p), neither a header of include/pg2redis/ nor of its own folder\n";
			$bad++;
		}
	}
	close $fh;
}

# symbols: who defines what, who uses what
# (an object whose source is gone is a leftover of an earlier layout)
my @objs = grep { -f s/\.o$/.c/r } tree_files(qr/\.o$/);
if (@objs)
{
	my (%def, %uses);
	for my $o (@objs)
	{
		for (`nm -g "$o"`)
		{
			if (/^\s*[0-9a-f]+\s+[A-Z]\s+(\S+)$/) { $def{$1} = $o; }
			elsif (/^\s+U\s+(\S+)$/) { push @{ $uses{$o} }, $1; }
		}
	}
	for my $o (sort keys %uses)
	{
		my $s = stage_of_file($o =~ s/\.o$/.c/r);
		next unless defined $s && exists $rank{$s};
		for my $sym (@{ $uses{$o} })
		{
			next unless exists $def{$sym};
			$nsyms++;
			my $t = stage_of_file($def{$sym} =~ s/\.o$/.c/r);
			next unless defined $t && exists $rank{$t};
			if ($rank{$t} > $rank{$s})
			{
				print "$o: stage $s uses $sym of the later stage $t ($def{$sym})\n";
				$bad++;
			}
		}
	}
}
printf "layers: %d files, %d includes, %d cross-file symbols checked, %d violations\n",
  $nfiles, $nincl, $nsyms, $bad;
exit($bad ? 1 : 0);
