#!/usr/bin/env bash
# test/layers.sh [ROOT]: fails when a stage of src/ reaches a stage above it.
#
# src/ has one folder per pipeline stage, in this order (each may use the
# ones before it, never one after it):
#
#   common  redis  rules  mapping  sender  snapshot  decode  api
#
# and src/pg2redis.c (the module's entry) above them all.  Two checks:
#  1. includes: a file in src/S/ includes only include/pg2redis/ headers of
#     stages up to S, and private headers ("x.h") of its own folder.  A
#     header of include/pg2redis/ belongs to the stage of the source file of
#     the same name (src/*/NAME.c), or says so in a "Stage: S" line;
#  2. symbols (when the objects are built): no object of src/S/ refers to a
#     function or variable defined in a later stage, not even through an
#     extern declaration of its own.  A lower stage that must call up does
#     so through a hooks struct the upper stage fills (SenderHooks,
#     DecodeHooks).
# Prints one line per violation and a summary; exits non-zero on any.
set -euo pipefail
SELF=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")
ROOT=${1:-$(dirname "$SELF")/..}
cd "$ROOT"
exec perl -x "$SELF" "$@"
#!perl
use strict;
use warnings;

my @order = qw(common redis rules mapping sender snapshot decode api top);
my %rank;
@rank{@order} = (0 .. $#order);
my $bad = 0;
my ($nfiles, $nincl, $nsyms) = (0, 0, 0);

sub stage_of_file
{
	my ($path) = @_;
	return 'top' if $path =~ m{^src/[^/]+\.[ch]$};
	return $1 if $path =~ m{^src/([^/]+)/};
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
	$hstage{$name} = $s;
}

my @files = (glob('src/*.[ch]'), glob('src/*/*.[ch]'));
for my $f (@files)
{
	my $s = stage_of_file($f);
	if (!exists $rank{$s})
	{
		print "$f: folder \"$s\" is not a stage (test/layers.sh lists them)\n";
		$bad++;
		next;
	}
	$nfiles++;
	open(my $fh, '<', $f) or die "$f: $!";
	my $ln = 0;
	while (my $line = <$fh>)
	{
		$ln++;
		next unless $line =~ /^\s*#\s*include\s+"([^"]+)"/;
		my $inc = $1;
		$nincl++;
		if ($inc =~ m{^pg2redis/(.+)$})
		{
			my $hs = $hstage{$1};
			next unless defined $hs;
			if ($rank{$hs} > $rank{$s})
			{
				print "$f:$ln: stage $s includes $inc of the later stage $hs\n";
				$bad++;
			}
		}
		elsif ($inc !~ m{/} && (-e "src/$s/$inc" || $s eq 'top' && -e "src/$inc"))
		{
			next;				# a private header of its own folder
		}
		elsif (grep { -e $_ } glob("src/*/$inc"), glob("src/*/*/$inc"))
		{
			print "$f:$ln: includes \"$inc\", a private header of another folder\n";
			$bad++;
		}
		# else a PostgreSQL or library header
	}
	close $fh;
}

# symbols: who defines what, who uses what
my @objs = (glob('src/*.o'), glob('src/*/*.o'));
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
