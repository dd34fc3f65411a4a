#!/usr/bin/env bash
# test/exports.sh LIBRARY: fails when LIBRARY exports a symbol the server
# does not look up.  Allowed: Pg_magic_func, _PG_init,
# _PG_output_plugin_init, the worker's entry pg2redis_worker_main, and
# each SQL-callable function pg2redis_X together with its pg_finfo_pg2redis_X
# record (a pg2redis_X without one is an internal function that leaked).
# exports.map sets the list; this check keeps it honest.
#
# Prints one line per unexpected symbol and "exports: N symbols, M unexpected".
set -euo pipefail

lib=${1:?usage: test/exports.sh LIBRARY}
mapfile -t syms < <(nm -D --defined-only "$lib" | awk '{print $NF}' | sed 's/@.*//' | sort -u)
declare -A have
for s in "${syms[@]}"; do have[$s]=1; done

bad=0
for s in "${syms[@]}"; do
	case "$s" in
	Pg_magic_func | _PG_init | _PG_output_plugin_init | pg2redis_worker_main) ;;
	pg_finfo_pg2redis_*) [[ -n ${have[${s#pg_finfo_}]:-} ]] || {
		echo "unexpected: $s has no function"
		bad=$((bad + 1))
	} ;;
	pg2redis_*) [[ -n ${have[pg_finfo_$s]:-} ]] || {
		echo "unexpected: $s is exported but is not SQL-callable (no pg_finfo_$s)"
		bad=$((bad + 1))
	} ;;
	*)
		echo "unexpected: $s"
		bad=$((bad + 1))
		;;
	esac
done
echo "exports: ${#syms[@]} symbols, $bad unexpected"
[[ $bad -eq 0 ]]
