#!/usr/bin/env bash
# test/symbols.sh LIBRARY POSTGRES: fails when a symbol that LIBRARY imports
# from one of its own shared libraries (hiredis, jansson, OpenSSL, libc...)
# is also exported by the POSTGRES executable.
#
# The dynamic linker looks a symbol up in the executable first, and an
# unversioned definition there satisfies a versioned reference: such a call
# from pg2redis.so lands in the server's function of the same name instead of
# the library's.  jansson's json_object() against PostgreSQL's SQL function
# json_object() crashed every backend that converted a Redis error reply;
# this check keeps the whole class out.  It also checks the libraries'
# own imports that go through their PLT (an internal call bound the same
# way): a library's import that the server exports is reported too.
#
# Prints one line per clash and "symbols: N imports checked, M clashes";
# exits non-zero on a clash.
set -euo pipefail

lib=${1:?usage: test/symbols.sh LIBRARY POSTGRES}
postgres=${2:?usage: test/symbols.sh LIBRARY POSTGRES}
tmp=$(mktemp -d /tmp/pg2redis-symbols.XXXXXX)
trap 'rm -rf "$tmp"' EXIT

# exported (defined, dynamic) symbol names of a binary, without versions
exports() { nm -D --defined-only "$1" | awk '{print $NF}' | sed 's/@.*//' | sort -u; }
# imported (undefined, dynamic) symbol names of a binary, without versions
imports() { nm -D --undefined-only "$1" | awk '{print $NF}' | sed 's/@.*//' | sort -u; }

# the server's own exports: a versioned one (stdin@GLIBC_2.2.5) is a copy
# relocation of a library's object, the same object, not a second definition
nm -D --defined-only "$postgres" | awk '$NF !~ /@/ {print $NF}' | sort -u >"$tmp/server"
# the shared libraries LIBRARY loads (not the dynamic loader, not vDSO)
mapfile -t deps < <(ldd "$lib" | awk '$3 ~ /^\// {print $3}' | grep -v '/ld-linux')

clashes=0 checked=0
for d in "${deps[@]}"; do exports "$d"; done | sort -u >"$tmp/deps"
# 1. pg2redis.so's imports that one of its libraries provides: each must not
#    also be a server export (else the server's wins).
imports "$lib" >"$tmp/imports"
comm -12 "$tmp/imports" "$tmp/deps" >"$tmp/from_deps"
checked=$(wc -l <"$tmp/from_deps")
while read -r s; do
	echo "clash: $(basename "$lib") imports $s from its libraries, but the server exports $s too"
	clashes=$((clashes + 1))
done < <(comm -12 "$tmp/from_deps" "$tmp/server")
# 2. each library's imports of its own or its siblings' symbols, through
#    the PLT, bound the same way.
for d in "${deps[@]}"; do
	imports "$d" | comm -12 - "$tmp/deps" >"$tmp/dep_imports"
	checked=$((checked + $(wc -l <"$tmp/dep_imports")))
	while read -r s; do
		echo "clash: $(basename "$d") imports $s, which the server exports too"
		clashes=$((clashes + 1))
	done < <(comm -12 "$tmp/dep_imports" "$tmp/server")
done
echo "symbols: $checked imports checked, $clashes clashes"
[[ $clashes -eq 0 ]]
