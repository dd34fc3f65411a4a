#!/usr/bin/env bash
# scripts/test.sh: the one test command of pg2redis.
#
# Installs the Debian/Ubuntu packages that are missing, builds and installs the
# extension, then runs `make installcheck` twice: once for pg_regress (sql/ +
# expected/, on a temporary instance) and once for the TAP tests (t/*.pl), so
# that a regress failure does not hide the TAP results.  PostgreSQL refuses to
# run as root, so as root the tests run as the postgres user in a temporary
# copy of the tree.  The last line printed is "N passed, M failed" (pg_regress
# tests, TAP test files, the shop demo and the benchmark's smoke run); the
# exit status is 0 only if all passed.
#
# Environment:
#   COPT                          extra compiler flags, read by PGXS (CI: -Werror)
#   PG_CONFIG                     pg_config to build against (default: detected)
#   PG2REDIS_TEST_SKIP_INSTALL=1  skip the package step
#   PG2REDIS_TESTS="a t/010_x.pl" run only these pg_regress suites (by name)
#                                 and TAP files; no demo, no benchmark;
#                                 pg_regress' results/ are kept in the tree
#   PG2REDIS_TEST_JOBS=N          TAP files run N at a time (default 2: they
#                                 mostly wait, on servers they start on free
#                                 ports of their own)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORK=""                 # temporary directory: logs, and as root the tree copy
PASSED=0 FAILED=0
# shellcheck source=scripts/common.sh
source "$ROOT/scripts/common.sh"

# run_check LOG [VAR=value...] runs `make installcheck` in $TESTDIR as the
# test user, output shown and kept in LOG; returns make's status.
run_check() {
	local log=$1; shift
	(cd "$TESTDIR" && "${AS_TESTER[@]}" make installcheck PG_CONFIG="$PG_CONFIG" "$@") 2>&1 | tee "$log"
}

# show_logs FILE... prints the tail of each FILE that exists.
show_logs() {
	local f
	for f in "$@"; do
		if [[ -f $f ]]; then echo "==== tail of ${f#"$TESTDIR"/}"; tail -n 60 "$f"; fi
	done
}

# tally P F RC adds one run's counts; a failed run counts at least one failure.
tally() {
	local f=$2
	if [[ $3 -ne 0 && $f -eq 0 ]]; then f=1; fi
	PASSED=$((PASSED + $1)) FAILED=$((FAILED + f))
}

# count_regress LOG RC reads pg_regress' closing line ("All N tests passed."
# or "M of N tests failed."); with none, pg_regress ran no test: all failed.
count_regress() {
	local line k n
	line=$(grep -Eo '(All [0-9]+ tests passed|[0-9]+ of [0-9]+ tests (passed|failed))' "$1" | tail -n 1 || true)
	case $line in
	All*)     read -r _ n _ <<<"$line"; tally "$n" 0 "$2" ;;
	*passed)  read -r k _ n _ <<<"$line"; tally "$k" $((n - k)) "$2" ;;
	*failed)  read -r k _ n _ <<<"$line"; tally $((n - k)) "$k" "$2" ;;
	*)        tally 0 "$N_SQL" "$2" ;;
	esac
}

# count_tap LOG RC reads prove's "Files=N" and sets TAP_BAD to the files its
# "Test Summary Report" gives as failed; with no "Files=", all files failed.
count_tap() {
	local n
	n=$(sed -nE 's/^Files=([0-9]+),.*/\1/p' "$1" | tail -n 1)
	TAP_BAD=$(awk '/^Test Summary Report/ { r = 1 }
		r && /^t\/.*\.pl / { f = $1; if ($0 ~ /Wstat: [1-9]|Failed: [1-9]/) print f }
		r && /Parse errors/ { print f }' "$1" | sort -u)
	if [[ -z $n ]]; then n=$N_TAP TAP_BAD=$(cd "$ROOT" && echo t/*.pl); fi
	tally $((n - $(wc -w <<<"$TAP_BAD"))) "$(wc -w <<<"$TAP_BAD")" "$2"
}

cd "$ROOT"
N_SQL=$(find sql -maxdepth 1 -name '*.sql' 2>/dev/null | wc -l)
N_TAP=$(find t -maxdepth 1 -name '*.pl' 2>/dev/null | wc -l)
SEL_SQL=() SEL_TAP=()
SLOW_TAP="t/156_load_redis_stalled.pl t/186_load_rewrite_counter.pl t/060_snapshot.pl
	t/134_poison.pl t/149_load_poison_row.pl t/165_random_paths.pl t/110_cluster.pl
	t/160_worker_memory.pl t/040_big_txn.pl t/170_soak.pl t/148_url_fuzz.pl"
for t in ${PG2REDIS_TESTS:-}; do
	case $t in
	t/*.pl) [[ -f $t ]] || die "no TAP file $t"; SEL_TAP+=("$t") ;;
	*) [[ -f sql/$t.sql ]] || die "no pg_regress suite sql/$t.sql"; SEL_SQL+=("$t") ;;
	esac
done
if [[ -n ${PG2REDIS_TESTS:-} ]]; then N_SQL=${#SEL_SQL[@]} N_TAP=${#SEL_TAP[@]}; fi
# The package step's decisions, against fake package tools (no install).
echo "== the package step (test/packages.sh)"
if bash "$ROOT/test/packages.sh" >"/tmp/pg2redis-packages.$$.log" 2>&1; then
	echo "ok - package step"; tally 1 0 0
else
	echo "not ok - package step"; cat "/tmp/pg2redis-packages.$$.log"; tally 0 1 1
fi
rm -f "/tmp/pg2redis-packages.$$.log"
if [[ ${PG2REDIS_TEST_SKIP_INSTALL:-} != 1 ]]; then install_packages; fi
PG_CONFIG=$(find_pg_config)
echo "== building with $PG_CONFIG ($("$PG_CONFIG" --version))"
if ! build; then echo "== build failed"; echo "$PASSED passed, $((FAILED + N_SQL + N_TAP)) failed"; exit 1; fi

# The tree is formatted by .clang-format (a lint: only where clang-format is).
if command -v clang-format >/dev/null; then
	echo "== formatting (test/format.sh)"
	if bash "$ROOT/test/format.sh"; then
		echo "ok - format"; tally 1 0 0
	else
		echo "not ok - format"; tally 0 1 1
	fi
fi

# lint NAME SCRIPT ARGS... runs one of the tree's static checks as a test.
lint() {
	local name=$1; shift
	echo "== $name ($(basename "$1"))"
	if bash "$@"; then
		echo "ok - $name"; tally 1 0 0
	else
		echo "not ok - $name"; tally 0 1 1
	fi
}

# No symbol the library takes from hiredis, jansson or OpenSSL may also be
# one the server exports (the server's would win at run time).
lint symbols "$ROOT/test/symbols.sh" "$ROOT/pg2redis.so" "$("$PG_CONFIG" --bindir)/postgres"
# The library exports only what the server looks up (exports.map).
lint exports "$ROOT/test/exports.sh" "$ROOT/pg2redis.so"
# No stage of src/ reaches a later one (includes and symbols).
lint layers "$ROOT/test/layers.sh" "$ROOT"
# Every ereport at WARNING or above carries an errcode.
lint messages "$ROOT/test/messages.sh"
# The two checks above catch each kind of violation they promise to.
lint checks "$ROOT/test/checks_selftest.sh"

WORK=$(mktemp -d /tmp/pg2redis-test.XXXXXX)
if [[ $EUID -eq 0 ]]; then
	# PostgreSQL will not run as root: test a copy owned by an ordinary user.
	TESTER=$(unprivileged_user)
	TESTDIR=$WORK/tree; mkdir "$TESTDIR"; chmod 711 "$WORK"
	tar -C "$ROOT" --exclude=./.git --exclude=./tmp_check --exclude=./results --exclude=./log \
		--exclude='*.o' --exclude='*.so' --exclude='*.bc' --exclude=node_modules \
		--exclude=./regression.diffs --exclude=./regression.out -cf - . | tar -C "$TESTDIR" -xf -
	chown -R "$TESTER": "$TESTDIR"
	AS_TESTER=(runuser -u "$TESTER" --)
else
	TESTDIR=$ROOT AS_TESTER=()
fi

# pg_regress and TAP run separately, so that a regress failure neither stops
# the TAP tests nor has its logs wiped by them (prove empties tmp_check/).
rc_regress=0 rc_tap=0
if [[ $N_SQL -gt 0 ]]; then
	run_check "$WORK/regress.log" TAP_TESTS= ${SEL_SQL:+"REGRESS=${SEL_SQL[*]}"} || rc_regress=$?
	if [[ $rc_regress -ne 0 ]]; then
		if [[ -f $TESTDIR/regression.diffs ]]; then
			echo "==== regression.diffs"; head -n 400 "$TESTDIR/regression.diffs"
		fi
		show_logs "$TESTDIR"/log/*
	fi
	count_regress "$WORK/regress.log" "$rc_regress"
fi
if [[ $N_TAP -gt 0 ]]; then
	# the longest files first, so that the last ones to finish are short
	if [[ ${#SEL_TAP[@]} -eq 0 ]]; then
		for t in $SLOW_TAP t/*.pl; do
			[[ -f $t && " ${SEL_TAP[*]} " != *" $t "* ]] && SEL_TAP+=("$t")
		done
	fi
	run_check "$WORK/tap.log" REGRESS= PROVE_FLAGS="--timer -j${PG2REDIS_TEST_JOBS:-2}" \
		"PROVE_TESTS=${SEL_TAP[*]}" || rc_tap=$?
	count_tap "$WORK/tap.log" "$rc_tap"
	for t in $TAP_BAD; do show_logs "$TESTDIR"/tmp_check/log/*"$(basename "$t" .pl)"*; done
	if [[ $rc_tap -ne 0 && -z $TAP_BAD ]]; then show_logs "$TESTDIR"/tmp_check/log/*; fi
fi

if [[ -n ${PG2REDIS_TESTS:-} ]]; then
	# a developer's subset: keep pg_regress' output (results/, regression.diffs)
	if [[ $TESTDIR != "$ROOT" && -d $TESTDIR/results ]]; then
		rm -rf "$ROOT/results"; cp -r "$TESTDIR/results" "$ROOT/results"
		cp "$TESTDIR/regression.diffs" "$ROOT/" 2>/dev/null || true
	fi
	echo "$PASSED passed, $FAILED failed"
	[[ $FAILED -eq 0 && $rc_regress -eq 0 && $rc_tap -eq 0 ]]; exit
fi

# The README's first command, the shop demo, must keep working: run it and
# check it shows what the article shows.
echo "== the shop demo (scripts/demo.sh)"
if PG2REDIS_TEST_SKIP_INSTALL=1 PG2REDIS_DEMO_SKIP_BUILD=1 PG_CONFIG="$PG_CONFIG" \
	bash "$ROOT/scripts/demo.sh" >"$WORK/demo.log" 2>&1 &&
	grep -A14 'HGETALL product:1' "$WORK/demo.log" | grep -qx 35 &&
	grep -A8 'ZRANGE products:stock' "$WORK/demo.log" | tr '\n' ' ' | grep -q '1 35 ' &&
	grep -A2 'SMEMBERS customer:1:orders' "$WORK/demo.log" | grep -qx 1 &&
	grep -q '"status":"paid"' "$WORK/demo.log"; then
	echo "ok - demo"; tally 1 0 0
else
	echo "not ok - demo"; tail -n 60 "$WORK/demo.log"; tally 0 1 1
fi

# The benchmark in smoke mode: tiny sizes, checks it runs and Redis matches.
echo "== the benchmark, smoke sizes (bench/run.sh --smoke)"
if PG2REDIS_DEMO_SKIP_BUILD=1 PG_CONFIG="$PG_CONFIG" \
	bash "$ROOT/bench/run.sh" --smoke >"$WORK/bench.log" 2>&1 &&
	grep -q '^bench smoke: everything ran and Redis matched PostgreSQL' "$WORK/bench.log"; then
	echo "ok - bench smoke"; sed -n '/^| measurement/,/^$/p' "$WORK/bench.log"; tally 1 0 0
else
	echo "not ok - bench smoke"; tail -n 60 "$WORK/bench.log"; tally 0 1 1
fi

echo "$PASSED passed, $FAILED failed"
[[ $FAILED -eq 0 && $rc_regress -eq 0 && $rc_tap -eq 0 ]]
