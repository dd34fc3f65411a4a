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
# shellcheck source=scripts/common.sh
source "$ROOT/scripts/common.sh"

trap stop_all EXIT
trap 'exit 130' INT TERM

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

make_workdir pg2redis-demo
cp -r "$ROOT/example/shop" "$WORK/shop" && chmod -R a+rX "$WORK/shop"

echo "== $(date +%T) starting Redis and PostgreSQL on loopback"
start_redis
start_pg shop
echo "   Redis 127.0.0.1:$REDIS_PORT, PostgreSQL 127.0.0.1:$PGPORT, under $WORK"
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
