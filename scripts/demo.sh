#!/usr/bin/env bash
# scripts/demo.sh: pg2redis at work on the shop demo of the article.
#
# Installs what is missing, builds and installs pg2redis, then starts a
# throwaway PostgreSQL and Redis on free loopback ports under a temporary
# directory, loads example/shop (schema, seed data, the article's mapping
# through pg2redis_import), snapshots it into Redis, runs the article's
# scenario, and prints what Redis then holds.  It stops what it started,
# by pid, and removes the directory, also on failure or Ctrl-C.  Runs as
# root (PostgreSQL then runs as the postgres user) or as a user with sudo.
#
# Environment: PG_CONFIG, PG2REDIS_TEST_SKIP_INSTALL=1 as for scripts/test.sh;
# PG2REDIS_DEMO_SKIP_BUILD=1 uses the pg2redis already installed.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORK=""
PG_STARTED="" REDIS_PID=""
# shellcheck source=scripts/common.sh
source "$ROOT/scripts/common.sh"

# stop_all stops the servers this script started and removes WORK.
stop_all() {
	if [[ -n $PG_STARTED ]]; then
		"${AS_PG[@]}" "$BIN/pg_ctl" -D "$WORK/pgdata" -m fast -w stop >/dev/null 2>&1 || true
	fi
	if [[ -n $REDIS_PID ]] && kill -0 "$REDIS_PID" 2>/dev/null; then
		kill "$REDIS_PID" 2>/dev/null || true
		for _ in $(seq 50); do kill -0 "$REDIS_PID" 2>/dev/null || break; sleep 0.1; done
		kill -9 "$REDIS_PID" 2>/dev/null || true
	fi
	if [[ -n $WORK ]]; then rm -rf "$WORK"; fi
}
trap stop_all EXIT
trap 'exit 130' INT TERM

# free_port prints a loopback TCP port nobody listens on.
free_port() {
	local p
	for _ in $(seq 200); do
		p=$((20000 + RANDOM % 30000))
		if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then echo "$p"; return; fi
	done
	die "no free port found"
}

psql_shop() { "${AS_PG[@]}" "$BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$WORK" -p "$PGPORT" -d shop "$@"; }
rcli() { redis-cli -h 127.0.0.1 -p "$REDIS_PORT" "$@"; }

cd "$ROOT"
if [[ ${PG2REDIS_TEST_SKIP_INSTALL:-} != 1 ]]; then install_packages; fi
PG_CONFIG=$(find_pg_config)
BIN=$("$PG_CONFIG" --bindir)
if [[ ${PG2REDIS_DEMO_SKIP_BUILD:-} != 1 ]]; then
	echo "== $(date +%T) building and installing pg2redis"
	build >/dev/null || die "build failed"
fi

WORK=$(mktemp -d /tmp/pg2redis-demo.XXXXXX)
if [[ $EUID -eq 0 ]]; then
	PGUSER_OS=$(unprivileged_user)
	chown "$PGUSER_OS" "$WORK"
	AS_PG=(runuser -u "$PGUSER_OS" --)
else
	AS_PG=()
fi
cp -r "$ROOT/example/shop" "$WORK/shop" && chmod -R a+rX "$WORK/shop"
PGPORT=$(free_port) REDIS_PORT=$(free_port)
[[ $PGPORT != "$REDIS_PORT" ]] || REDIS_PORT=$(free_port)

echo "== $(date +%T) starting Redis on 127.0.0.1:$REDIS_PORT"
redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save '' --appendonly no \
	--dir "$WORK" --logfile "$WORK/redis.log" --daemonize no &
REDIS_PID=$!
for _ in $(seq 100); do rcli ping >/dev/null 2>&1 && break; sleep 0.1; done
rcli ping >/dev/null || die "Redis did not start (see $WORK/redis.log)"

echo "== $(date +%T) starting PostgreSQL on 127.0.0.1:$PGPORT"
"${AS_PG[@]}" "$BIN/initdb" -D "$WORK/pgdata" -A trust -U postgres >/dev/null
cat >>"$WORK/pgdata/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $PGPORT
unix_socket_directories = '$WORK'
shared_preload_libraries = 'pg2redis'
wal_level = logical
pg2redis.database = 'shop'
pg2redis.redis_url = 'redis://127.0.0.1:$REDIS_PORT/0'
CONF
"${AS_PG[@]}" "$BIN/pg_ctl" -D "$WORK/pgdata" -l "$WORK/postgres.log" -w start >/dev/null
PG_STARTED=1
"${AS_PG[@]}" "$BIN/createdb" -h "$WORK" -p "$PGPORT" -U postgres shop
# the worker started before database shop existed: restart so it finds it now
"${AS_PG[@]}" "$BIN/pg_ctl" -D "$WORK/pgdata" -l "$WORK/postgres.log" -m fast -w restart >/dev/null
export PGUSER=postgres

echo "== $(date +%T) loading the shop: schema, seed data, the article's mapping"
psql_shop -f "$WORK/shop/schema.sql" -f "$WORK/shop/seed.sql"
psql_shop -c "CREATE EXTENSION pg2redis"
psql_shop -At -c "SET client_min_messages = warning; SELECT pg2redis_import(pg_read_file('$WORK/shop/config.json')::jsonb) || ' rules imported'"

echo "== $(date +%T) waiting for the pg2redis worker"
for _ in $(seq 150); do
	[[ $(psql_shop -At -c "SELECT state FROM pg2redis_status()") == streaming ]] && break
	sleep 0.1
done
psql_shop -At -c "SELECT 'worker ' || worker_pid || ': ' || state FROM pg2redis_status()"

echo "== $(date +%T) snapshotting the existing rows into Redis"
REQ=$(psql_shop -At -c "SELECT pg2redis_snapshot()")
for _ in $(seq 600); do
	STATE=$(psql_shop -At -c "SELECT state FROM pg2redis_snapshots WHERE id = $REQ")
	[[ $STATE == done || $STATE == failed ]] && break
	sleep 0.1
done
psql_shop -At -c "SELECT 'snapshot request ' || id || ': ' || state || ', ' || rows || ' rows' || coalesce(', ' || error, '') FROM pg2redis_snapshots WHERE id = $REQ"
[[ $STATE == done ]] || die "the snapshot did not finish"

echo "== $(date +%T) running the article's scenario (watching channel order_updates)"
redis-cli -h 127.0.0.1 -p "$REDIS_PORT" subscribe order_updates >"$WORK/messages.txt" 2>/dev/null &
SUB_PID=$!
sleep 0.3
psql_shop -f "$WORK/shop/scenario.sql"
[[ $(psql_shop -At -c "SELECT pg2redis_wait('30s')") == t ]] || die "Redis did not catch up (see pg2redis_status())"
sleep 0.2
kill "$SUB_PID" 2>/dev/null || true
wait "$SUB_PID" 2>/dev/null || true

show() { echo; echo "redis> $*"; rcli "$@"; }
echo; echo "== what Redis holds now"
show HGETALL product:1
show ZRANGE products:stock 0 -1 WITHSCORES
show SMEMBERS products:active
show HGETALL order:1
show SMEMBERS orders:all
show SMEMBERS customer:1:orders
show HGETALL order:1:items
show XRANGE order_events - +
echo; echo "messages on channel order_updates:"
grep -F '{' "$WORK/messages.txt" || echo "(none)"
echo; echo "== pg2redis_status()"
psql_shop -x -c "SELECT state, redis_connected, transactions, changes, commands, dead_letters, lag_bytes FROM pg2redis_status()"
echo "== $(date +%T) demo done; stopping PostgreSQL and Redis"
