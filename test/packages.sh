#!/usr/bin/env bash
# test/packages.sh: checks the decisions of the package step of
# scripts/common.sh (install_packages, find_pg_config) without touching the
# machine: dpkg-query, apt-get and apt-cache are fakes on PATH that log their
# calls, and the PostgreSQL trees are fake directories.  Each case prints
# "ok - …" or "not ok - …"; the last line is "N passed, M failed" and the
# exit status is 0 only when all passed.  Run by scripts/test.sh.
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
T=$(mktemp -d /tmp/pg2redis-packages.XXXXXX)
trap 'rm -rf "$T"' EXIT
PASS=0 FAIL=0

# fakes: dpkg-query answers "ii" for packages listed in $T/installed;
# apt-get and apt-cache log their arguments to $T/apt.log; apt-cache show
# succeeds for packages listed in $T/registry.
mkdir -p "$T/bin"
cat >"$T/bin/dpkg-query" <<'EOF'
#!/bin/bash
grep -qx "${@: -1}" "$FAKE/installed" && printf 'ii ' && exit 0
exit 1
EOF
cat >"$T/bin/apt-get" <<'EOF'
#!/bin/bash
# "installs" the PostgreSQL packages named: a server, or server headers
echo "apt-get $*" >>"$FAKE/apt.log"
for p; do
	case $p in
	postgresql-server-dev-all) mkdir -p "$FAKE/inc/14/server"; touch "$FAKE/inc/14/server/postgres.h" ;;
	postgresql-server-dev-*) mkdir -p "$FAKE/inc/${p##*-}/server"; touch "$FAKE/inc/${p##*-}/server/postgres.h" ;;
	postgresql) (cd "$FAKE" && server 14) ;;
	postgresql-[0-9]*) (cd "$FAKE" && server "${p##*-}") ;;
	esac
done
EOF
cat >"$T/bin/apt-cache" <<'EOF'
#!/bin/bash
echo "apt-cache $*" >>"$FAKE/apt.log"
[[ $1 == show ]] && grep -qx "$2" "$FAKE/registry"
EOF
chmod +x "$T/bin/"*

# scenario NAME SETUP EXPECTED_INSTALL EXPECTED_PG_CONFIG runs the package
# step in a fresh fake machine made by the shell code SETUP and compares
# the packages installed (sorted, "" for no apt-get install) and the
# pg_config chosen (relative to the fake library root).
scenario() {
	local name=$1 setup=$2 want_install=$3 want_config=$4 got_install got_config
	export FAKE=$T/$name
	mkdir -p "$FAKE/lib" "$FAKE/inc"
	: >"$FAKE/installed"; : >"$FAKE/apt.log"
	printf '%s\n' postgresql-15 postgresql-server-dev-15 >"$FAKE/registry"
	(cd "$FAKE" && eval "$setup")
	got_config=$(
		env -u PG_CONFIG PATH=$T/bin:$PATH PG2REDIS_PG_LIBROOT=$FAKE/lib PG2REDIS_PG_INCROOT=$FAKE/inc \
			bash -c 'ROOT=$1; source "$ROOT/scripts/common.sh"; install_packages >/dev/null
				find_pg_config 2>/dev/null' _ "$ROOT")
	got_config=${got_config#"$FAKE/lib/"}
	got_install=$(sed -n 's/^apt-get .*--no-install-recommends //p' "$FAKE/apt.log" | tr ' ' '\n' |
		grep -E '^postgresql' | sort | tr '\n' ' ' | sed 's/ $//')
	if [[ $got_install == "$want_install" && $got_config == "$want_config" ]]; then
		echo "ok - $name"; PASS=$((PASS + 1))
	else
		echo "not ok - $name: installed '$got_install' (want '$want_install'), pg_config '$got_config' (want '$want_config')"
		FAIL=$((FAIL + 1))
	fi
}

# server N: postgresql-N (bin/postgres) and its client (bin/pg_config)
server() { mkdir -p "lib/$1/bin"; printf '#!/bin/sh\necho "PostgreSQL %s.2"\n' "$1" >"lib/$1/bin/pg_config"
	cp "lib/$1/bin/pg_config" "lib/$1/bin/postgres"; chmod +x "lib/$1/bin/"*; }
client() { mkdir -p "lib/$1/bin"; printf '#!/bin/sh\necho "PostgreSQL %s.2"\n' "$1" >"lib/$1/bin/pg_config"; chmod +x "lib/$1/bin/pg_config"; }
headers() { mkdir -p "inc/$1/server"; touch "inc/$1/server/postgres.h"; }
export -f server
all_other() { printf '%s\n' libhiredis-dev libjansson-dev libssl-dev openssl redis-server \
	libipc-run-perl pkg-config make gcc >>installed; }

scenario fresh-machine 'all_other' 'postgresql-15 postgresql-server-dev-15' '15/bin/pg_config'
scenario server-and-client-without-headers 'all_other; server 15' \
	'postgresql-15 postgresql-server-dev-15' '15/bin/pg_config'
scenario client-only 'all_other; client 15' 'postgresql-15 postgresql-server-dev-15' '15/bin/pg_config'
scenario everything-present 'all_other; server 15; headers 15' '' '15/bin/pg_config'
scenario headers-without-server 'all_other; client 15; headers 15' \
	'postgresql-15 postgresql-server-dev-15' '15/bin/pg_config'
scenario only-16-without-headers 'all_other; server 16' \
	'postgresql-16 postgresql-server-dev-16' '16/bin/pg_config'
scenario 9-and-16-picks-16 'all_other; server 9; server 16; headers 16' '' '16/bin/pg_config'
scenario 15-preferred-over-17 'all_other; server 15; headers 15; server 17; headers 17' '' '15/bin/pg_config'
scenario ubuntu-no-15 'all_other; : >registry' 'postgresql postgresql-server-dev-all' '14/bin/pg_config'
scenario redis-missing-only 'printf "%s\n" libhiredis-dev >>installed; server 15; headers 15' '' '15/bin/pg_config'

echo "$PASS passed, $FAIL failed"
[[ $FAIL -eq 0 ]]
