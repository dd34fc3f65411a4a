#!/usr/bin/env bash
# test/checks_selftest.sh: the static checks catch what they promise.  In a
# scratch copy of src/ and include/, plants one violation at a time and
# fails unless test/layers.sh or test/messages.sh reports it (and passes on
# the unchanged copy): upward includes in their quoted, angle-bracket and
# -I. forms, from a shared header and from a deeper folder, another
# folder's private header, an upward symbol through an extern declaration
# of its own; an ereport without errcode at a level given by an expression
# or a variable, with errmsg_internal, after a string holding "/*" or a
# '"' character, and an elog(WARNING).
# Prints a "not ok" line per case missed (with VERBOSE=1 an "ok" line per
# case passed too) and "checks: N cases, M missed".
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SCRATCH=$(mktemp -d /tmp/pg2redis-checks.XXXXXX)
trap 'rm -rf "$SCRATCH"' EXIT
n=0 missed=0

# fresh: a clean copy of the sources (no objects) in $SCRATCH/tree
fresh() {
	rm -rf "$SCRATCH/tree"
	mkdir -p "$SCRATCH/tree"
	(cd "$ROOT" && find src include -name '*.[ch]' -print0 | tar --null -T - -cf -) | tar -C "$SCRATCH/tree" -xf -
}

# expect NAME CHECK PATTERN: CHECK (layers or messages) must fail on the
# scratch tree and print a line matching PATTERN.
expect() {
	local name=$1 check=$2 pat=$3 out rc=0
	out=$(bash "$ROOT/test/$check.sh" "$SCRATCH/tree" 2>&1) || rc=$?
	n=$((n + 1))
	if [[ $rc -ne 0 ]] && grep -qE -- "$pat" <<<"$out"; then
		[[ -z ${VERBOSE:-} ]] || echo "ok $n - $check: $name"
	else
		echo "not ok $n - $check: $name"; echo "$out" | tail -n 5 | sed 's/^/#   /'
		missed=$((missed + 1))
	fi
}

# clean: both checks pass on the unchanged copy.
fresh
for check in layers messages; do
	n=$((n + 1))
	if bash "$ROOT/test/$check.sh" "$SCRATCH/tree" >/dev/null 2>&1; then
		[[ -z ${VERBOSE:-} ]] || echo "ok $n - $check: the tree as it is"
	else
		echo "not ok $n - $check: the tree as it is"; missed=$((missed + 1))
	fi
done

T=$SCRATCH/tree
# plant FILE LINE: appends LINE to FILE of the scratch tree.
plant() { printf '%s\n' "$2" >>"$T/$1"; }

fresh; plant src/mapping/render.c '#include "pg2redis/sender.h"'
expect 'quoted upward include' layers 'render.c:.*later stage sender'
fresh; plant src/mapping/render.c '#include <pg2redis/sender.h>'
expect 'angle-bracket upward include' layers 'render.c:.*later stage sender'
fresh; plant src/rules/template.c '#include "include/pg2redis/ondemand.h"'
expect 'upward include through -I.' layers 'template.c:.*later stage snapshot'
fresh; plant include/pg2redis/mapping.h '#include "pg2redis/snapshot.h"'
expect 'a shared header includes a later stage' layers 'mapping.h:.*later stage snapshot'
fresh; mkdir -p "$T/src/common/sub"; plant src/common/sub/x.h '#include "pg2redis/sender.h"'
expect 'upward include from a deeper folder' layers 'sub/x.h:.*later stage sender'
fresh; plant src/snapshot/cmdbuf.c '#include "../sender/sender_int.h"'
expect "another folder's private header" layers 'cmdbuf.c:.*private header'
fresh
printf 'int fake_sender_fn(void);\nint fake_sender_fn(void) { return 1; }\n' >"$T/src/sender/zz_fake.c"
printf 'extern int fake_sender_fn(void);\nint zz_use(void);\nint zz_use(void) { return fake_sender_fn(); }\n' >"$T/src/common/zz_use.c"
cc -c -o "$T/src/sender/zz_fake.o" "$T/src/sender/zz_fake.c"
cc -c -o "$T/src/common/zz_use.o" "$T/src/common/zz_use.c"
expect 'upward symbol through an extern declaration' layers 'zz_use.o: stage common uses fake_sender_fn'

fresh; plant src/common/error.c 'static void zz(bool c) { ereport(c ? WARNING : LOG, (errmsg("x"))); }'
expect 'level by an expression' messages 'error.c:.*without errcode'
fresh; plant src/common/error.c 'static void zz(int lvl) { ereport(lvl, (errmsg("x"))); }'
expect 'level by a variable' messages 'error.c:.*without errcode'
fresh; plant src/common/error.c 'static void zz(void) { ereport(WARNING,
		(errmsg_internal("x"))); }'
expect 'errmsg_internal over two lines' messages 'error.c:.*without errcode'
fresh; plant src/common/error.c 'static const char *zz_url = "unix://***";
static void zz(void) { ereport(WARNING, (errmsg("x"))); }
/* a comment */'
expect 'after a string holding a comment opener' messages 'error.c:.*without errcode'
fresh; plant src/common/error.c "static void zz(char c) { if (c == '\"') ereport(ERROR, (errmsg(\"x\"))); }"
expect 'after a quote character' messages 'error.c:.*without errcode'
fresh; plant src/common/error.c 'static void zz(void) { elog(WARNING, "x"); }'
expect 'elog(WARNING)' messages 'error.c:.*elog\(WARNING\)'

echo "checks: $n cases, $missed missed"
[[ $missed -eq 0 ]]
