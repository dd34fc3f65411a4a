#!/usr/bin/env bash
# test/format.sh: fails when a C file of the tree is not formatted by the
# project's .clang-format (run `clang-format -i src/*.c src/*/*.[ch] include/pg2redis/*.h`
# to fix).  Prints the files that differ and "format: N files checked".
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
files=(src/*.c src/*/*.[ch] include/pg2redis/*.h)
bad=0
for f in "${files[@]}"; do
	if ! clang-format --dry-run -Werror "$f" >/dev/null 2>&1; then
		echo "not formatted: $f"
		bad=$((bad + 1))
	fi
done
echo "format: ${#files[@]} files checked, $bad not formatted"
[[ $bad -eq 0 ]]
