#!/usr/bin/env bash
# bench/run.sh [--smoke]: pg2redis's benchmark, every figure measured side by
# side in one run on the same throwaway PostgreSQL and Redis (loopback).
#
#   catch-up   1000 x 1000-row INSERT transactions committed while the worker
#              is paused, then the time until Redis holds them all; the same
#              for one 1,000,000-row transaction, and for UPDATEs and DELETEs
#              of all rows (1000 transactions each)
#   ceilings   redis-cli --pipe of the same commands; decoding alone through
#              a test_decoding slot (pg_logical_slot_get_changes)
#   sidecar    a Node.js consumer (pg-logical-replication + ioredis, pinned in
#              bench/sidecar) doing the same mapping, acknowledging after each
#              pipeline
#   latency    single-row UPDATE transactions at 200/s and 2,000/s for 10 s
#              each: COMMIT returned -> value published in Redis, pg2redis and
#              the sidecar in turn
#   memory     the worker's peak RSS during the 1,000,000-row transaction
#   snapshot   pg2redis_snapshot() of a 200,000-row, 6-column table
#   cluster    the 1000 x 1000-row catch-up again, to a 3-primary Redis
#              Cluster (no replicas) started on loopback ports
#
#   mixed      300 x 1000-row inserts, then updates and deletes, of a table
#              of common types (bigint key, numeric(10,2), timestamptz,
#              boolean, text, jsonb, text[]), each beside redis-cli --pipe of
#              the same commands
#   CPU        the worker's CPU time per row for every catch-up (from
#              /proc/<pid>/stat) and its split by stage (decode, map and
#              render, append, I/O, other) from pg2redis.stage_timing
#   overlap    for every catch-up, its wall time per row beside the worker's
#              and Redis's CPU per row (Redis's from /proc/<pid>/stat, also
#              under redis-cli --pipe of the same commands): how busy Redis
#              was, and whether the catch-up is bounded by the slower of the
#              two (wall / max near 1) or by their sum
#
# The mapping (6-column table `bench`): insert/update HSET bench:<id> <row>
# + SADD bench:all <id>; delete DEL + SREM; the same for `mixed`.  --smoke
# runs tiny sizes and only checks that everything runs and Redis matches
# (scripts/test.sh runs it); --cpu runs only the catch-ups (300 x 1000 rows
# of each table) with their ceilings and CPU figures, in about a minute;
# --big runs only the Redis ceiling and the one 1,000,000-row transaction
# (rows/s, x Redis, the worker's CPU per row and peak RSS).
#
# Environment: PG_CONFIG, PG2REDIS_TEST_SKIP_INSTALL=1, PG2REDIS_DEMO_SKIP_BUILD=1
# as for scripts/demo.sh; PG2REDIS_BENCH_SETTINGS="name=value ..." adds
# settings (one word each, e.g. "pg2redis.batch_size=5000") to the bench's
# PostgreSQL, to compare a setting with its default in two runs.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/common.sh
source "$ROOT/scripts/common.sh"

SMOKE=0 CPU_ONLY=0 BIG_ONLY=0
[[ ${1:-} == --smoke ]] && SMOKE=1
[[ ${1:-} == --cpu ]] && CPU_ONLY=1
[[ ${1:-} == --big ]] && BIG_ONLY=1 CPU_ONLY=1
if [[ $SMOKE == 1 ]]; then
	TXNS=20 PER=100 BIG=5000 SNAP=5000 LAT_SECS=1 RATES="100" MTXNS=20
elif [[ $BIG_ONLY == 1 ]]; then
	TXNS=1000 PER=1000 BIG=1000000 MTXNS=300
elif [[ $CPU_ONLY == 1 ]]; then
	TXNS=300 PER=1000 MTXNS=300
else
	TXNS=1000 PER=1000 BIG=1000000 SNAP=200000 LAT_SECS=10 RATES="200 2000" MTXNS=300
fi
MN=$((MTXNS * PER))
N=$((TXNS * PER))
SIDECAR_DIR=$ROOT/bench/sidecar
SIDECAR_PID="" SAMPLER_PID=""

cleanup_bench() {
	# PG2REDIS_BENCH_LOG=FILE keeps the server's log (the worker's stage lines)
	[[ -n ${PG2REDIS_BENCH_LOG:-} && -n ${WORK:-} && -f $WORK/postgres.log ]] &&
		cp "$WORK/postgres.log" "$PG2REDIS_BENCH_LOG"
	[[ -n $SIDECAR_PID ]] && kill "$SIDECAR_PID" 2>/dev/null || true
	[[ -n $SAMPLER_PID ]] && kill "$SAMPLER_PID" 2>/dev/null || true
	stop_all
}
trap cleanup_bench EXIT
trap 'exit 130' INT TERM

cd "$ROOT"
if [[ ${PG2REDIS_TEST_SKIP_INSTALL:-} != 1 ]]; then
	install_packages
	command -v node >/dev/null && command -v npm >/dev/null ||
		as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm
	command -v python3 >/dev/null ||
		as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3
fi
PG_CONFIG=$(find_pg_config)
BIN=$("$PG_CONFIG" --bindir)
if [[ ${PG2REDIS_DEMO_SKIP_BUILD:-} != 1 ]]; then build >/dev/null || die "build failed"; fi
if [[ $CPU_ONLY == 0 && ! -d $SIDECAR_DIR/node_modules ]]; then
	(cd "$SIDECAR_DIR" && npm ci --no-audit --no-fund --loglevel=error >/dev/null) ||
		die "npm ci in bench/sidecar failed"
fi

make_workdir pg2redis-bench
start_redis
start_pg postgres "max_replication_slots = 10" "max_wal_senders = 10" \
	"shared_buffers = 256MB" "max_wal_size = 4GB" "checkpoint_timeout = 30min" \
	"pg2redis.stage_timing = on" "wal_sender_timeout = 10min" ${PG2REDIS_BENCH_SETTINGS:-}
export PGPORT PGHOST=127.0.0.1 PGUSER=postgres PGDATABASE=postgres REDIS_PORT
sql() { "${AS_PG[@]}" "$BIN/psql" -X -q -At -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PGPORT" -U postgres -d postgres "$@"; }
rcli() { redis-cli -h 127.0.0.1 -p "$REDIS_PORT" "$@"; }
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.6f", b - a }'; }
rate() { awk -v n="$1" -v s="$2" 'BEGIN { printf "%.0f", n / s }'; }
say() { echo "== $(date +%T) $*"; }

# wait_caught_up: pg2redis applied everything committed so far
wait_caught_up() { [[ $(sql -c "SELECT pg2redis_wait('900s')") == t ]] || die "pg2redis did not catch up"; }
set_enabled() {
	sql -c "ALTER SYSTEM SET pg2redis.enabled = $1" -c "SELECT pg_reload_conf()" >/dev/null
	local want=streaming
	[[ $1 == off ]] && want=paused
	for _ in $(seq 300); do [[ $(sql -c "SELECT state FROM pg2redis_status()") == "$want" ]] && return; sleep 0.05; done
	die "the worker did not become $want"
}
# worker_ticks: the worker's CPU time so far (user + system), in clock ticks
worker_ticks() { awk '{print $14 + $15}' "/proc/$WORKER/stat"; }
# redis_ticks: the Redis server's CPU time so far, in clock ticks
redis_ticks() { awk '{print $14 + $15}' "/proc/$REDIS_PID/stat"; }
# per_row TICKS ROWS: microseconds of CPU per row
per_row() { awk -v t="$1" -v u="$TICK_US" -v n="$2" 'BEGIN { printf "%.2f", t * u / n }'; }
TICK_US=$((1000000 / $(getconf CLK_TCK)))
# catch_up [LABEL ROWS]: resume the paused worker, time until Redis has it
# all; with LABEL, keeps the worker's CPU per row and its stage split
# (pg2redis.stage_timing's log line) in $WORK/cpu.LABEL, and with
# PG2REDIS_BENCH_PERF=LABEL:FILE records a profile of the worker (perf
# record -g) into FILE
catch_up() {
	local t0 t1 c0 c1 logged line
	WORKER=$(sql -c "SELECT worker_pid FROM pg2redis_status()")
	logged=$(grep -c 'LOG:  stage times: ' "$WORK/postgres.log" || true)
	c0=$(worker_ticks) r0=$(redis_ticks)
	if [[ -n ${1:-} && ${PG2REDIS_BENCH_PERF:-} == "$1":* ]]; then
		perf record -q -F 2000 -g -p "$WORKER" -o "${PG2REDIS_BENCH_PERF#*:}" >/dev/null 2>&1 &
		PERF_PID=$!
		sleep 0.5
	fi
	t0=$(now); set_enabled on; wait_caught_up; t1=$(now)
	c1=$(worker_ticks) r1=$(redis_ticks)
	if [[ -n ${PERF_PID:-} ]]; then
		kill -INT "$PERF_PID"; wait "$PERF_PID" || true; PERF_PID=""
	fi
	if [[ -n ${1:-} ]]; then
		line=""
		for _ in $(seq 100); do
			line=$(grep 'LOG:  stage times: ' "$WORK/postgres.log" | tail -n +"$((logged + 1))" | tail -1 || true)
			[[ -n $line ]] && break
			sleep 0.05
		done
		echo "$(per_row "$((c1 - c0))" "$2") ${line#*CPU per change: }" >"$WORK/cpu.$1"
		echo "$(per_row "$((r1 - r0))" "$2") $(awk -v a="$t0" -v b="$t1" -v n="$2" 'BEGIN { printf "%.2f", (b - a) * 1e6 / n }')" >"$WORK/redis.$1"
	fi
	secs "$t0" "$t1"
}
# run_sidecar EXPECT: stream the sidecar slot until EXPECT changes; seconds
run_sidecar() {
	local t0 t1 out
	t0=$(now)
	out=$(SLOT=sidecar PUBLICATION=bench_pub EXPECT=$1 node "$SIDECAR_DIR/sidecar.js") || die "sidecar failed: $out"
	t1=$(now)
	grep -q '^done' <<<"$out" || die "sidecar did not finish: $out"
	secs "$t0" "$t1"
}
check_count() {
	local got
	got=$(rcli scard bench:all)
	[[ $got == "$1" ]] || die "$2: Redis has $got members in bench:all, PostgreSQL $1"
}
check_rows() {
	local bad
	bad=$(sql -c "SELECT count(*) FROM (SELECT id FROM bench ORDER BY random() LIMIT 200) s
		WHERE pg2redis_redis('HGET', 'bench:' || id, 'a') <> to_jsonb('a' || id)")
	[[ $bad == 0 ]] || die "$1: $bad sampled rows differ in Redis"
}

say "setting up: table bench (6 columns), rules, publication, slots"
sql <<'SQL'
CREATE EXTENSION pg2redis;
CREATE TABLE bench (id int PRIMARY KEY, a text, b int, c text, d bigint, e text);
SELECT pg2redis_add_rule('bench', op, ARRAY['HSET', 'bench:{id}', '{pairs:*}']) FROM unnest(ARRAY['insert', 'update']) op;
SELECT pg2redis_add_rule('bench', op, 'SADD bench:all {id}') FROM unnest(ARRAY['insert', 'update']) op;
SELECT pg2redis_add_rule('bench', 'delete', 'DEL bench:{id}');
SELECT pg2redis_add_rule('bench', 'delete', 'SREM bench:all {id}');
CREATE TABLE mixed (id bigint PRIMARY KEY, price numeric(10,2), at timestamptz,
    flag boolean, name text, doc jsonb, tags text[]);
SELECT pg2redis_add_rule('mixed', op, ARRAY['HSET', 'mixed:{id}', '{pairs:*}']) FROM unnest(ARRAY['insert', 'update']) op;
SELECT pg2redis_add_rule('mixed', op, 'SADD mixed:all {id}') FROM unnest(ARRAY['insert', 'update']) op;
SELECT pg2redis_add_rule('mixed', 'delete', 'DEL mixed:{id}');
SELECT pg2redis_add_rule('mixed', 'delete', 'SREM mixed:all {id}');
CREATE PROCEDURE fill_mixed(txns int, per int) LANGUAGE plpgsql AS $$
BEGIN
    FOR t IN 0 .. txns - 1 LOOP
        INSERT INTO mixed SELECT g, (g % 100000) / 100.0,
            timestamptz '2026-01-01 00:00:00+00' + g * interval '1 second',
            g % 2 = 0, 'name ' || g, jsonb_build_object('n', g, 'tag', 't' || (g % 10)),
            ARRAY['red', 'g' || (g % 7)]
          FROM generate_series(t * per + 1, (t + 1) * per) g;
        COMMIT;
    END LOOP;
END $$;
CREATE PROCEDURE touch_mixed(txns int, per int, how text) LANGUAGE plpgsql AS $$
BEGIN
    FOR t IN 0 .. txns - 1 LOOP
        IF how = 'update' THEN
            UPDATE mixed SET price = price + 1 WHERE id BETWEEN t * per + 1 AND (t + 1) * per;
        ELSE
            DELETE FROM mixed WHERE id BETWEEN t * per + 1 AND (t + 1) * per;
        END IF;
        COMMIT;
    END LOOP;
END $$;
CREATE TABLE lat (id int PRIMARY KEY, v bigint);
INSERT INTO lat VALUES (1, 0);
SELECT pg2redis_add_rule('lat', 'update', 'PUBLISH lat {v}');
CREATE PUBLICATION bench_pub FOR TABLE bench, lat;
CREATE PROCEDURE fill(txns int, per int, base int) LANGUAGE plpgsql AS $$
BEGIN
    FOR t IN 0 .. txns - 1 LOOP
        INSERT INTO bench SELECT g, 'a' || g, g, 'c' || g, g * 2, 'e'
          FROM generate_series(base + t * per + 1, base + (t + 1) * per) g;
        COMMIT;
    END LOOP;
END $$;
CREATE PROCEDURE touch(txns int, per int, how text) LANGUAGE plpgsql AS $$
BEGIN
    FOR t IN 0 .. txns - 1 LOOP
        IF how = 'update' THEN
            UPDATE bench SET b = b + 1 WHERE id BETWEEN t * per + 1 AND (t + 1) * per;
        ELSE
            DELETE FROM bench WHERE id BETWEEN t * per + 1 AND (t + 1) * per;
        END IF;
        COMMIT;
    END LOOP;
END $$;
SQL
for _ in $(seq 300); do [[ $(sql -c "SELECT state FROM pg2redis_status()") == streaming ]] && break; sleep 0.05; done
WORKER=$(sql -c "SELECT worker_pid FROM pg2redis_status()")

# --- ceilings: Redis alone ---------------------------------------------------
say "Redis alone: redis-cli --pipe of $N rows (HSET of 6 fields + SADD, again over them, DEL + SREM)"
python3 - "$N" "$WORK/pipe.del" >"$WORK/pipe.resp" <<'PY'
import sys
out = sys.stdout.buffer
dl = open(sys.argv[2], "wb")
def cmd(*args, out=out):
    parts = [b"*%d\r\n" % len(args)]
    for a in args:
        a = a.encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(a), a))
    out.write(b"".join(parts))
for g in range(1, int(sys.argv[1]) + 1):
    s = str(g)
    cmd("HSET", "bench:" + s, "id", s, "a", "a" + s, "b", s, "c", "c" + s, "d", str(2 * g), "e", "e")
    cmd("SADD", "bench:all", s)
    cmd("DEL", "bench:" + s, out=dl)
    cmd("SREM", "bench:all", s, out=dl)
PY
rcli flushall >/dev/null
# pipe_secs FILE [LABEL ROWS]: seconds redis-cli --pipe takes to send FILE;
# with LABEL, Redis's CPU per row goes to $WORK/pipe_cpu.LABEL
pipe_secs() {
	local t0 t1 r0 r1
	r0=$(redis_ticks); t0=$(now); rcli --pipe <"$1" >/dev/null; t1=$(now); r1=$(redis_ticks)
	[[ -n ${2:-} ]] && per_row "$((r1 - r0))" "$3" >"$WORK/pipe_cpu.$2"
	secs "$t0" "$t1"
}
# tx_wrap FILE PER: FILE.tx, FILE's commands in MULTI/EXEC blocks of PER
# rows (2 commands a row), each with a fence SET, as pg2redis sends them
tx_wrap() {
	python3 - "$1" "$(($2 * 2))" <<'PY'
import sys
src, per = sys.argv[1], int(sys.argv[2])
data = open(src, "rb").read()
out = open(src + ".tx", "wb")
multi, exec_ = b"*1\r\n$5\r\nMULTI\r\n", b"*1\r\n$4\r\nEXEC\r\n"
pos, n, block = 0, 0, 0
parts = [multi]
while pos < len(data):
    end = data.index(b"\r\n", pos)
    argc = int(data[pos + 1:end])
    p = end + 2
    for _ in range(argc):
        e = data.index(b"\r\n", p)
        p = e + 2 + int(data[p + 1:e]) + 2
    parts.append(data[pos:p])
    pos, n = p, n + 1
    if n % per == 0 or pos == len(data):
        block += 1
        fence = b"0/%X" % block
        parts.append(b"*3\r\n$3\r\nSET\r\n$14\r\nbench:fence:tx\r\n$%d\r\n%s\r\n" % (len(fence), fence))
        parts.append(exec_)
        out.write(b"".join(parts))
        parts = [multi]
PY
}
REDIS_S=$(pipe_secs "$WORK/pipe.resp" ins "$N")
REDIS_UPD_S=$(pipe_secs "$WORK/pipe.resp" upd "$N")
check_count "$N" "redis-cli --pipe"
REDIS_DEL_S=$(pipe_secs "$WORK/pipe.del" del "$N")
rcli flushall >/dev/null
if [[ $BIG_ONLY == 0 ]]; then
	# the same in MULTI/EXEC blocks: what atomicity costs Redis itself
	tx_wrap "$WORK/pipe.resp" "$PER"; tx_wrap "$WORK/pipe.del" "$PER"
	TX_S=$(pipe_secs "$WORK/pipe.resp.tx" txins "$N")
	TX_UPD_S=$(pipe_secs "$WORK/pipe.resp.tx" txupd "$N")
	check_count "$N" "redis-cli --pipe in MULTI/EXEC blocks"
	TX_DEL_S=$(pipe_secs "$WORK/pipe.del.tx" txdel "$N")
	rcli flushall >/dev/null
fi

# big_catch_up: the catch-up of the one big transaction (P2R_BIG_S), with
# the worker's peak RSS sampled every 50 ms into $WORK/rss.max
big_catch_up() {
	echo 0 >"$WORK/rss.max"
	( m=0; while kill -0 "$WORKER" 2>/dev/null; do
		r=$(awk '/VmRSS/ {print $2}' "/proc/$WORKER/status" 2>/dev/null || echo 0)
		if [[ ${r:-0} -gt $m ]]; then m=$r; echo "$m" >"$WORK/rss.max"; fi
		sleep 0.05
	done ) &
	SAMPLER_PID=$!
	P2R_BIG_S=$(catch_up big "$BIG")
	kill "$SAMPLER_PID" 2>/dev/null || true; SAMPLER_PID=""
}
if [[ $BIG_ONLY == 1 ]]; then
	say "one $BIG-row transaction while pg2redis is paused"
	set_enabled off
	sql -c "CALL fill(1, $BIG, 0)"
	big_catch_up
	check_count "$BIG" "pg2redis, one big transaction"; check_rows "pg2redis, one big transaction"
	RC=$(awk -v n="$N" -v s="$REDIS_S" 'BEGIN { printf "%.0f", n / s }')
	PBR=$(awk -v n="$BIG" -v s="$P2R_BIG_S" 'BEGIN { printf "%.0f", n / s }')
	echo
	echo "Redis alone, redis-cli --pipe (HSET+SADD), rows/s: $RC"
	echo "pg2redis catch-up, 1 x $BIG inserts, rows/s: $PBR ($(awk -v a="$PBR" -v b="$RC" 'BEGIN { printf "%.2f", a / b }') x Redis)"
	echo "worker peak RSS, MiB: $(($(cat "$WORK/rss.max") / 1024))"
	echo "worker CPU per row (us) and stage split: $(cat "$WORK/cpu.big")"
	echo "Redis CPU per row (us), under redis-cli --pipe: $(cat "$WORK/pipe_cpu.ins"), in the catch-up: $(cut -d' ' -f1 "$WORK/redis.big"); wall per row (us): $(cut -d' ' -f2 "$WORK/redis.big")"
	exit 0
fi

# --- catch-up: 1000 x 1000-row transactions --------------------------------
say "committing $TXNS x $PER-row transactions while pg2redis is paused"
sql -c "SELECT 'slot' FROM pg_create_logical_replication_slot('sidecar', 'pgoutput')" \
	-c "SELECT 'slot' FROM pg_create_logical_replication_slot('td', 'test_decoding')" >/dev/null
set_enabled off
sql -c "CALL fill($TXNS, $PER, 0)"
rcli flushall >/dev/null
say "pg2redis catch-up"
P2R_S=$(catch_up ins "$N")
check_count "$N" "pg2redis catch-up"; check_rows "pg2redis catch-up"
if [[ $CPU_ONLY == 0 ]]; then
say "decoding alone (test_decoding)"
t0=$(now)
DEC_CHANGES=$(sql -c "SELECT count(*) FROM pg_logical_slot_get_changes('td', NULL, NULL) WHERE data LIKE 'table%'")
t1=$(now); DEC_S=$(secs "$t0" "$t1")
rcli flushall >/dev/null
say "sidecar catch-up"
SC_S=$(run_sidecar "$N")
check_count "$N" "sidecar catch-up"

# --- one transaction of BIG rows ---------------------------------------------
say "one $BIG-row transaction while pg2redis is paused"
set_enabled off
sql -c "CALL fill(1, $BIG, $N)"
# into an empty Redis, as its ceiling (the sidecar's rows are not needed)
rcli flushall >/dev/null
big_catch_up
RSS_KB=$(cat "$WORK/rss.max")
check_count "$BIG" "pg2redis, one big transaction"
t0=$(now)
sql -c "SELECT count(*) FROM pg_logical_slot_get_changes('td', NULL, NULL)" >/dev/null
t1=$(now); DEC_BIG_S=$(secs "$t0" "$t1")
say "sidecar, one big transaction"
SC_BIG_S=$(run_sidecar "$BIG")
# updates and deletes meet Redis as their ceilings did: the $N rows alone
say "Redis back to the $N rows (DELETE of the big transaction's, pg2redis_snapshot)"
sql -c "DELETE FROM bench WHERE id > $N"
wait_caught_up
rcli flushall >/dev/null
REQ=$(sql -c "SELECT pg2redis_snapshot('bench')")
for _ in $(seq 1200); do
	[[ $(sql -c "SELECT state FROM pg2redis_snapshots WHERE id = $REQ") =~ done|failed ]] && break
	sleep 0.05
done
check_count "$N" "pg2redis_snapshot() of bench"
fi

# --- updates and deletes (pg2redis) -------------------------------------------
say "UPDATE of $N rows in $TXNS transactions while paused"
set_enabled off
sql -c "CALL touch($TXNS, $PER, 'update')"
P2R_UPD_S=$(catch_up upd "$N")
[[ $(rcli hget bench:1 b) == 2 ]] || die "update did not reach Redis"
say "DELETE of $N rows in $TXNS transactions while paused"
set_enabled off
sql -c "CALL touch($TXNS, $PER, 'delete')"
P2R_DEL_S=$(catch_up del "$N")
check_count 0 "pg2redis deletes"
sql -c "SELECT pg_drop_replication_slot('td')" -c "SELECT pg_drop_replication_slot('sidecar')" >/dev/null

# --- the mixed-type table -------------------------------------------------------
say "mixed table: redis-cli --pipe of $MN rows (HSET of 7 fields + SADD, again over them, DEL + SREM)"
python3 - "$MN" "$WORK/mixed" <<'PY'
import sys, datetime
n, base = int(sys.argv[1]), sys.argv[2]
def cmd(out, *args):
    parts = [b"*%d\r\n" % len(args)]
    for a in args:
        a = a.encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(a), a))
    out.write(b"".join(parts))
t0 = datetime.datetime(2026, 1, 1)
with open(base + ".ins", "wb") as ins, open(base + ".del", "wb") as dl:
    for g in range(1, n + 1):
        s = str(g)
        at = (t0 + datetime.timedelta(seconds=g)).strftime("%Y-%m-%d %H:%M:%S") + "+00"
        cmd(ins, "HSET", "mixed:" + s, "id", s, "price", "%d.%02d" % (g % 100000 // 100, g % 100),
            "at", at, "flag", "true" if g % 2 == 0 else "false", "name", "name " + s,
            "doc", '{"n": %d, "tag": "t%d"}' % (g, g % 10), "tags", "{red,g%d}" % (g % 7))
        cmd(ins, "SADD", "mixed:all", s)
        cmd(dl, "DEL", "mixed:" + s)
        cmd(dl, "SREM", "mixed:all", s)
PY
rcli flushall >/dev/null
M_REDIS_S=$(pipe_secs "$WORK/mixed.ins" mins "$MN")
M_REDIS_UPD_S=$(pipe_secs "$WORK/mixed.ins" mupd "$MN")
[[ $(rcli scard mixed:all) == "$MN" ]] || die "mixed: redis-cli --pipe did not write every row"
M_REDIS_DEL_S=$(pipe_secs "$WORK/mixed.del" mdel "$MN")
rcli flushall >/dev/null
tx_wrap "$WORK/mixed.ins" "$PER"; tx_wrap "$WORK/mixed.del" "$PER"
M_TX_S=$(pipe_secs "$WORK/mixed.ins.tx" txmins "$MN")
M_TX_UPD_S=$(pipe_secs "$WORK/mixed.ins.tx" txmupd "$MN")
[[ $(rcli scard mixed:all) == "$MN" ]] || die "mixed: redis-cli --pipe in MULTI/EXEC blocks did not write every row"
M_TX_DEL_S=$(pipe_secs "$WORK/mixed.del.tx" txmdel "$MN")
rcli flushall >/dev/null
say "mixed table: pg2redis catch-up of $MTXNS x $PER inserts, updates, deletes"
set_enabled off
sql -c "CALL fill_mixed($MTXNS, $PER)"
M_S=$(catch_up mins "$MN")
[[ $(rcli scard mixed:all) == "$MN" ]] || die "mixed: Redis does not have every row"
bad=$(sql -c "SELECT count(*) FROM (SELECT * FROM mixed ORDER BY random() LIMIT 200) m
	WHERE pg2redis_redis('HGET', 'mixed:' || id, 'price') <> to_jsonb(price::text)
	   OR pg2redis_redis('HGET', 'mixed:' || id, 'at') <> to_jsonb(to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') || '+00')
	   OR pg2redis_redis('HGET', 'mixed:' || id, 'flag') <> to_jsonb(flag::text)
	   OR pg2redis_redis('HGET', 'mixed:' || id, 'doc') <> to_jsonb(doc::text)
	   OR pg2redis_redis('HGET', 'mixed:' || id, 'tags') <> to_jsonb(tags::text)")
[[ $bad == 0 ]] || die "mixed: $bad sampled rows differ in Redis"
set_enabled off
sql -c "CALL touch_mixed($MTXNS, $PER, 'update')"
M_UPD_S=$(catch_up mupd "$MN")
[[ $(rcli hget mixed:1 price) == 1.01 ]] || die "mixed: the update did not reach Redis"
set_enabled off
sql -c "CALL touch_mixed($MTXNS, $PER, 'delete')"
M_DEL_S=$(catch_up mdel "$MN")
[[ $(rcli scard mixed:all) == 0 ]] || die "mixed: the deletes did not reach Redis"

if [[ $CPU_ONLY == 0 ]]; then

# --- latency -----------------------------------------------------------------
declare -A LAT
for r in $RATES; do
	say "latency at $r tx/s for $LAT_SECS s: pg2redis"
	LAT[p2r_$r]=$(RATE=$r DURATION=$LAT_SECS node "$SIDECAR_DIR/latency.js")
	say "latency at $r tx/s for $LAT_SECS s: sidecar"
	set_enabled off
	sql -c "SELECT 'slot' FROM pg_create_logical_replication_slot('sidecar', 'pgoutput')" >/dev/null
	SLOT=sidecar PUBLICATION=bench_pub EXPECT=0 node "$SIDECAR_DIR/sidecar.js" >"$WORK/sidecar.log" 2>&1 &
	SIDECAR_PID=$!
	for _ in $(seq 100); do
		[[ $(sql -c "SELECT active FROM pg_replication_slots WHERE slot_name = 'sidecar'") == t ]] && break
		sleep 0.1
	done
	LAT[sc_$r]=$(RATE=$r DURATION=$LAT_SECS node "$SIDECAR_DIR/latency.js")
	kill "$SIDECAR_PID"; wait "$SIDECAR_PID" 2>/dev/null || true; SIDECAR_PID=""
	for k in "p2r_$r" "sc_$r"; do
		[[ ${LAT[$k]} == *"lost 0" && ${LAT[$k]} != *"n 0 "* ]] || die "latency run $k lost changes: ${LAT[$k]}"
	done
	sql -c "SELECT pg_drop_replication_slot('sidecar')" >/dev/null
	set_enabled on
done

# --- snapshot ------------------------------------------------------------------
say "pg2redis_snapshot() of a $SNAP-row, 6-column table"
sql >/dev/null <<SQL
CREATE TABLE snap (id int PRIMARY KEY, a text, b int, c text, d bigint, e text);
INSERT INTO snap SELECT g, 'a' || g, g, 'c' || g, g * 2, 'e' FROM generate_series(1, $SNAP) g;
SELECT pg2redis_add_rule('snap', 'insert', ARRAY['HSET', 'snap:{id}', '{pairs:*}']);
SQL

wait_caught_up
REQ=$(sql -c "SELECT pg2redis_snapshot('snap')")
for _ in $(seq 3000); do
	[[ $(sql -c "SELECT state FROM pg2redis_snapshots WHERE id = $REQ") =~ done|failed ]] && break
	sleep 0.1
done
SNAP_S=$(sql -c "SELECT extract(epoch FROM finished_at - started_at) FROM pg2redis_snapshots WHERE id = $REQ AND state = 'done'")
[[ -n $SNAP_S ]] || die "the snapshot failed"
wait_caught_up
[[ $(rcli eval "return #redis.call('KEYS', 'snap:*')" 0) == "$SNAP" ]] || die "snapshot: Redis does not have every row"

# --- catch-up against a 3-primary Redis Cluster ------------------------------
# start_redis_cluster N: N cluster-enabled servers on free loopback ports
# (CLUSTER_PORTS, their pids in EXTRA_PIDS), joined by redis-cli.
start_redis_cluster() {
	CLUSTER_PORTS=()
	for i in $(seq "$1"); do
		local p dir=$WORK/cluster$i
		p=$(free_port)
		mkdir -p "$dir"
		redis-server --bind 127.0.0.1 --port "$p" --save '' --appendonly no \
			--cluster-enabled yes --cluster-config-file "$dir/nodes.conf" \
			--dir "$dir" --logfile "$dir/redis.log" --daemonize no &
		EXTRA_PIDS+=("$!")
		CLUSTER_PORTS+=("$p")
		for _ in $(seq 100); do redis-cli -p "$p" ping >/dev/null 2>&1 && break; sleep 0.1; done
	done
	redis-cli --cluster create $(printf '127.0.0.1:%s ' "${CLUSTER_PORTS[@]}") \
		--cluster-replicas 0 --cluster-yes >"$WORK/cluster-create.log" 2>&1 ||
		die "redis-cli --cluster create failed (see $WORK/cluster-create.log)"
	for p in "${CLUSTER_PORTS[@]}"; do
		for _ in $(seq 300); do
			redis-cli -p "$p" cluster info | grep -q 'cluster_state:ok' && break
			sleep 0.1
		done
	done
}
say "Redis Cluster: 3 primaries; pg2redis switched to it"
start_redis_cluster 3
ccli() { redis-cli -c -h 127.0.0.1 -p "${CLUSTER_PORTS[0]}" "$@"; }
sql -c "ALTER SYSTEM SET pg2redis.redis_url = 'redis-cluster://127.0.0.1:${CLUSTER_PORTS[0]},127.0.0.1:${CLUSTER_PORTS[1]}'" \
	-c "SELECT pg_reload_conf()" >/dev/null
for _ in $(seq 300); do
	[[ $(sql -c "SELECT state = 'streaming' AND redis_url LIKE 'redis-cluster:%' FROM pg2redis_status()") == t ]] && break
	sleep 0.1
done
set_enabled off
sql -c "TRUNCATE bench" -c "CALL fill($TXNS, $PER, 0)"
say "pg2redis catch-up to the cluster"
P2R_CL_S=$(catch_up)
[[ $(ccli scard bench:all) == "$N" ]] || die "cluster catch-up: bench:all does not have $N members"
check_rows "cluster catch-up"

fi

# --- report ------------------------------------------------------------------
field() { sed -E "s/.*$1 ([0-9.a-zA-Z]+).*/\1/" <<<"$2"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
RC=$(rate "$N" "$REDIS_S") PR=$(rate "$N" "$P2R_S")
PUR=$(rate "$N" "$P2R_UPD_S") PDR=$(rate "$N" "$P2R_DEL_S")
RUC=$(rate "$N" "$REDIS_UPD_S") RDC=$(rate "$N" "$REDIS_DEL_S")
MRC=$(rate "$MN" "$M_REDIS_S") MRUC=$(rate "$MN" "$M_REDIS_UPD_S") MRDC=$(rate "$MN" "$M_REDIS_DEL_S")
MPR=$(rate "$MN" "$M_S") MPUR=$(rate "$MN" "$M_UPD_S") MPDR=$(rate "$MN" "$M_DEL_S")
echo
echo "pg2redis benchmark ($(nproc) cores, PostgreSQL $("$PG_CONFIG" --version | awk '{print $2}'), Redis $(redis-server --version | sed -E 's/.*v=([0-9.]+).*/\1/'), loopback$([[ $SMOKE == 1 ]] && echo ', SMOKE sizes')$([[ $CPU_ONLY == 1 ]] && echo ', catch-ups only (--cpu)')$([[ -n ${PG2REDIS_BENCH_SETTINGS:-} ]] && echo ", with $PG2REDIS_BENCH_SETTINGS"))"
echo
printf '| %-58s | %12s | %-26s |\n' "measurement" "figure" "ratio"
printf '|%s|%s|%s|\n' "$(printf -- '-%.0s' {1..60})" "$(printf -- '-%.0s' {1..14})" "$(printf -- '-%.0s' {1..28})"
row() { printf '| %-58s | %12s | %-26s |\n' "$1" "$2" "$3"; }
row "Redis alone, redis-cli --pipe (HSET+SADD), rows/s" "$RC" "ceiling"
[[ $BIG_ONLY == 0 ]] && row "the same in MULTI/EXEC blocks of $PER rows, rows/s" "$(rate "$N" "$TX_S")" "ceiling with atomicity"
if [[ $CPU_ONLY == 0 ]]; then
	SR=$(rate "$N" "$SC_S") DR=$(rate "$DEC_CHANGES" "$DEC_S")
	PBR=$(rate "$BIG" "$P2R_BIG_S") SBR=$(rate "$BIG" "$SC_BIG_S") DBR=$(rate "$BIG" "$DEC_BIG_S")
	SNR=$(rate "$SNAP" "$SNAP_S") PCR=$(rate "$N" "$P2R_CL_S")
	row "decoding alone, test_decoding, $TXNS x $PER, changes/s" "$DR" ""
	row "pg2redis catch-up, $TXNS x $PER inserts, rows/s" "$PR" "$(ratio "$PR" "$RC") x Redis ($(ratio "$PR" "$(rate "$N" "$TX_S")") x MULTI), $(ratio "$PR" "$SR") x sidecar"
	row "sidecar catch-up, $TXNS x $PER inserts, rows/s" "$SR" "$(ratio "$SR" "$RC") x Redis"
	row "pg2redis catch-up, 1 x $BIG inserts, rows/s" "$PBR" "$(ratio "$PBR" "$RC") x Redis, $(ratio "$PBR" "$SBR") x sidecar"
	row "sidecar catch-up, 1 x $BIG inserts, rows/s" "$SBR" ""
	row "decoding alone, 1 x $BIG, changes/s" "$DBR" ""
else
	row "pg2redis catch-up, $TXNS x $PER inserts, rows/s" "$PR" "$(ratio "$PR" "$RC") x Redis ($(ratio "$PR" "$(rate "$N" "$TX_S")") x MULTI)"
fi
# vs RATE CEILING_RATE TX_SECS ROWS: "x Redis (x MULTI)"
vs() { echo "$(ratio "$1" "$2") x Redis ($(ratio "$1" "$(rate "$4" "$3")") x MULTI)"; }
row "Redis alone, the same HSET+SADD again (updates), rows/s" "$RUC" "ceiling"
row "pg2redis catch-up, $TXNS x $PER updates, rows/s" "$PUR" "$(vs "$PUR" "$RUC" "$TX_UPD_S" "$N")"
row "Redis alone, DEL+SREM, rows/s" "$RDC" "ceiling"
row "pg2redis catch-up, $TXNS x $PER deletes, rows/s" "$PDR" "$(vs "$PDR" "$RDC" "$TX_DEL_S" "$N")"
row "mixed: Redis alone, HSET (7 fields)+SADD, rows/s" "$MRC" "ceiling"
row "mixed: pg2redis catch-up, $MTXNS x $PER inserts, rows/s" "$MPR" "$(vs "$MPR" "$MRC" "$M_TX_S" "$MN")"
row "mixed: Redis alone, the same HSET+SADD again, rows/s" "$MRUC" "ceiling"
row "mixed: pg2redis catch-up, $MTXNS x $PER updates, rows/s" "$MPUR" "$(vs "$MPUR" "$MRUC" "$M_TX_UPD_S" "$MN")"
row "mixed: Redis alone, DEL+SREM, rows/s" "$MRDC" "ceiling"
row "mixed: pg2redis catch-up, $MTXNS x $PER deletes, rows/s" "$MPDR" "$(vs "$MPDR" "$MRDC" "$M_TX_DEL_S" "$MN")"
if [[ $CPU_ONLY == 0 ]]; then
	row "pg2redis catch-up, 3-primary Cluster, $TXNS x $PER inserts, rows/s" "$PCR" "$(ratio "$PCR" "$PR") x to one Redis"
	for r in $RATES; do
		p=${LAT[p2r_$r]} s=${LAT[sc_$r]}
		row "latency at $r tx/s, pg2redis p50 / p99 / max, ms" "$(field p50 "$p") / $(field p99 "$p") / $(field max "$p")" "n $(field n "$p"), lost $(field lost "$p")"
		row "latency at $r tx/s, sidecar p50 / p99 / max, ms" "$(field p50 "$s") / $(field p99 "$s") / $(field max "$s")" "n $(field n "$s"), lost $(field lost "$s")"
	done
	row "worker peak RSS during the 1 x $BIG transaction, MiB" "$((RSS_KB / 1024))" ""
	row "pg2redis_snapshot() of $SNAP rows, rows/s" "$SNR" ""
fi
echo
echo "Worker CPU per row change (us): total from /proc/<pid>/stat; its split by stage from"
echo "pg2redis.stage_timing (time in each stage scaled to the thread's CPU time; wait: seconds"
echo "blocked on Redis or the latch)"
echo
printf '| %-26s | %6s | %6s | %6s | %6s | %6s | %6s | %7s |\n' "catch-up" "CPU" "decode" "map" "append" "io" "other" "wait s"
printf '|%s|%s|%s|%s|%s|%s|%s|%s|\n' "$(printf -- '-%.0s' {1..28})" "--------" "--------" "--------" "--------" "--------" "--------" "---------"
cpu_line() {
	local f="$WORK/cpu.$2"
	[[ -f $f ]] || return 0
	awk -v label="$1" '{
		n = split($0, w, /[ ,;]+/); v["CPU"] = w[1]
		for (i = 2; i < n; i++) if (w[i] ~ /^(decode|map|append|io|other|wait)$/) v[w[i]] = w[i + 1]
		printf "| %-26s | %6s | %6s | %6s | %6s | %6s | %6s | %7s |\n", label, v["CPU"], v["decode"], v["map"], v["append"], v["io"], v["other"], v["wait"]
	}' "$f"
}
cpu_line "bench, $TXNS x $PER inserts" ins
[[ $CPU_ONLY == 0 ]] && cpu_line "bench, 1 x $BIG inserts" big
cpu_line "bench, $TXNS x $PER updates" upd
cpu_line "bench, $TXNS x $PER deletes" del
cpu_line "mixed, $MTXNS x $PER inserts" mins
cpu_line "mixed, $MTXNS x $PER updates" mupd
cpu_line "mixed, $MTXNS x $PER deletes" mdel
echo
echo "Overlap (us per row): wall time of the catch-up, the worker's CPU, Redis's CPU in the"
echo "catch-up, under redis-cli --pipe of the same commands, and of them in MULTI/EXEC blocks;"
echo "Redis busy = its CPU / wall;"
echo "wall / max = wall over the larger of worker and Redis CPU (1.00: bounded by the slower"
echo "of the two; their sum would be (worker + Redis) / max)"
echo
printf '| %-26s | %6s | %6s | %6s | %6s | %6s | %6s | %6s |\n' "catch-up" "wall" "worker" "Redis" "--pipe" "MULTI" "busy" "w/max"
printf '|%s|%s|%s|%s|%s|%s|%s|%s|\n' "$(printf -- '-%.0s' {1..28})" "--------" "--------" "--------" "--------" "--------" "--------" "--------"
overlap_line() {
	local c="$WORK/cpu.$2" r="$WORK/redis.$2" p="$WORK/pipe_cpu.${3:-$2}" x="$WORK/pipe_cpu.tx${3:-$2}"
	[[ -f $c && -f $r ]] || return 0
	awk -v label="$1" -v w="$(cut -d' ' -f1 "$c")" -v rc="$(cut -d' ' -f1 "$r")" \
		-v wall="$(cut -d' ' -f2 "$r")" -v pc="$(cat "$p" 2>/dev/null || echo -)" \
		-v xc="$(cat "$x" 2>/dev/null || echo -)" 'BEGIN {
		m = (w > rc) ? w : rc
		printf "| %-26s | %6.2f | %6.2f | %6.2f | %6s | %6s | %5.0f%% | %6s |\n", label, wall, w, rc, pc, xc, 100 * rc / wall, (m > 0 ? sprintf("%.2f", wall / m) : "-")
	}'
}
overlap_line "bench, $TXNS x $PER inserts" ins
[[ $CPU_ONLY == 0 ]] && overlap_line "bench, 1 x $BIG inserts" big ins
overlap_line "bench, $TXNS x $PER updates" upd
overlap_line "bench, $TXNS x $PER deletes" del
overlap_line "mixed, $MTXNS x $PER inserts" mins
overlap_line "mixed, $MTXNS x $PER updates" mupd
overlap_line "mixed, $MTXNS x $PER deletes" mdel
echo
if [[ $SMOKE == 1 ]]; then echo "bench smoke: everything ran and Redis matched PostgreSQL"; fi
