# scripts/common.sh: what scripts/test.sh and scripts/demo.sh share —
# installing the Debian/Ubuntu packages that are missing, finding
# pg_config, building and installing pg2redis, and the unprivileged user
# PostgreSQL runs as when we are root.  Sourced, not run; expects $ROOT.

PACKAGES=(libhiredis-dev libjansson-dev libssl-dev openssl redis-server libipc-run-perl pkg-config make gcc)

die() { echo "$(basename "$0"): $*" >&2; exit 1; }

# as_root runs its arguments with root rights: directly, via sudo, or dies.
as_root() {
	if [[ $EUID -eq 0 ]]; then "$@"
	elif command -v sudo >/dev/null; then sudo "$@"
	else die "'$*' needs root: run this script as root or install sudo"; fi
}

# cleanup removes the temporary directory; it stops nothing, as nothing here
# outlives its make run (pg_regress and the TAP tests stop their own servers).
cleanup() { if [[ -n $WORK ]]; then rm -rf "$WORK"; fi; }
trap cleanup EXIT

installed() { dpkg-query -W -f='${db:Status-Abbrev}' "$1" 2>/dev/null | grep -q '^ii'; }

# Where Debian's PostgreSQL packages put things; the package-step test
# (test/packages.sh) points these at a fake tree.
PG_LIBROOT=${PG2REDIS_PG_LIBROOT:-/usr/lib/postgresql}
PG_INCROOT=${PG2REDIS_PG_INCROOT:-/usr/include/postgresql}

# pg_major prints the PostgreSQL major to build for: that of $PG_CONFIG when
# set, else 15 when its server is installed, else the newest installed
# server's; nothing when no server is installed.  Only the server package
# (postgresql-N) ships bin/postgres; pg_config may come from the client.
pg_major() {
	local d m=""
	if [[ -n ${PG_CONFIG:-} ]]; then
		"$PG_CONFIG" --version | sed -E 's/^PostgreSQL ([0-9]+).*/\1/'; return
	fi
	[[ -x $PG_LIBROOT/15/bin/postgres ]] && { echo 15; return; }
	# the glob sorts 10 before 9: pick the highest numerically
	for d in "$PG_LIBROOT"/*/bin/postgres; do
		[[ -x $d ]] || continue
		d=$(basename "$(dirname "$(dirname "$d")")")
		if [[ -z $m || $d -gt $m ]]; then m=$d; fi
	done 2>/dev/null
	echo "$m"
}

# have_headers N is true when the server headers of major N are installed
# (postgresql-server-dev-N ships server/postgres.h); pg_config alone is no
# proof: postgresql-client-N ships it too.
have_headers() { [[ -f $PG_INCROOT/$1/server/postgres.h ]]; }

# pg_packages prints the PostgreSQL packages to install: none when the major
# in use has its server and its headers, else that major's server and
# server-dev packages together (so a server older than the registry's minor
# is upgraded with the headers, and both match), else, with no server at
# all, PostgreSQL 15 or (e.g. Ubuntu) the distribution's own major.
pg_packages() {
	local m
	m=$(pg_major)
	if [[ -n $m ]]; then
		if [[ -x $PG_LIBROOT/$m/bin/postgres ]] && have_headers "$m"; then return; fi
		echo "postgresql-$m postgresql-server-dev-$m"
	elif apt-cache show postgresql-15 >/dev/null 2>&1; then
		echo "postgresql-15 postgresql-server-dev-15"
	else
		echo "postgresql postgresql-server-dev-all"
	fi
}

# install_packages installs what is missing, and calls apt-get only then.
install_packages() {
	local missing=() p pg
	for p in "${PACKAGES[@]}"; do installed "$p" || missing+=("$p"); done
	pg=$(pg_packages)
	if [[ ${#missing[@]} -eq 0 && -z $pg ]]; then echo "== packages: all present"; return; fi
	command -v apt-get >/dev/null || die "packages are missing and there is no apt-get"
	as_root apt-get update -qq
	# the registry is known only now: without a server, choose again
	if [[ -z $(pg_major) ]]; then pg=$(pg_packages); fi
	# shellcheck disable=SC2206  # two package names, split on purpose
	missing+=($pg)
	echo "== installing: ${missing[*]}"
	as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
		-o Dpkg::Use-Pty=0 --no-install-recommends "${missing[@]}"
}

# find_pg_config prints the pg_config to use: $PG_CONFIG, else that of the
# major pg_major chose, else the one on PATH.
find_pg_config() {
	local c m
	if [[ -n ${PG_CONFIG:-} ]]; then command -v "$PG_CONFIG" || die "PG_CONFIG=$PG_CONFIG not found"; return; fi
	m=$(pg_major)
	for c in ${m:+"$PG_LIBROOT/$m/bin/pg_config"} pg_config; do
		if command -v "$c"; then return; fi
	done
	die "no pg_config found: install postgresql-server-dev-15"
}

# build cleans, compiles (COPT passes through the environment) and installs;
# `make install` goes through as_root unless the target directories are ours.
build() {
	local sudo=as_root
	if [[ -w $("$PG_CONFIG" --pkglibdir) && -w $("$PG_CONFIG" --sharedir)/extension ]]; then sudo=; fi
	cd "$ROOT" && make -s clean PG_CONFIG="$PG_CONFIG" && make PG_CONFIG="$PG_CONFIG" &&
		$sudo make install PG_CONFIG="$PG_CONFIG"
}

# unprivileged_user prints a user PostgreSQL may run as (postgres, else a
# system user it creates); for when this script runs as root.
unprivileged_user() {
	local u=postgres
	if ! id -u "$u" >/dev/null 2>&1; then
		u=pg2redis-test
		id -u "$u" >/dev/null 2>&1 || useradd --system --no-create-home \
			--home-dir /nonexistent --shell /usr/sbin/nologin "$u"
	fi
	echo "$u"
}

# --- throwaway servers (scripts/demo.sh, bench/run.sh) -----------------------

WORK="" PG_STARTED="" REDIS_PID=""
EXTRA_PIDS=()

# make_workdir NAME makes $WORK, a temporary directory PostgreSQL may use,
# and sets AS_PG to run commands as the user PostgreSQL runs as.
make_workdir() {
	WORK=$(mktemp -d "/tmp/$1.XXXXXX")
	if [[ $EUID -eq 0 ]]; then
		local u
		u=$(unprivileged_user)
		chown "$u" "$WORK"
		AS_PG=(runuser -u "$u" --)
	else
		AS_PG=()
	fi
}

# free_port prints a loopback TCP port nobody listens on, in 10200-20199: below
# the kernel's ephemeral range (32768 and up: a port some outgoing connection
# holds cannot be listened on) even for a Redis Cluster bus (the port +
# 10000), and never another server's bus port.
free_port() {
	local p
	for _ in $(seq 200); do
		p=$((10200 + RANDOM % 10000))
		if [[ $p != "${PGPORT:-}" && $p != "${REDIS_PORT:-}" ]] &&
			! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
			echo "$p"; return
		fi
	done
	die "no free port found"
}

# start_redis starts redis-server on a free loopback port (REDIS_PORT,
# REDIS_PID), without persistence, and waits until it answers.
start_redis() {
	for _ in 1 2 3; do # another port if this one was taken meanwhile
		REDIS_PORT=$(free_port)
		redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save '' --appendonly no \
			--dir "$WORK" --logfile "$WORK/redis.log" --daemonize no "$@" &
		REDIS_PID=$!
		for _ in $(seq 100); do
			redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && return
			kill -0 "$REDIS_PID" 2>/dev/null || break
			sleep 0.1
		done
		kill "$REDIS_PID" 2>/dev/null; wait "$REDIS_PID" 2>/dev/null
		echo "== Redis did not start on port $REDIS_PORT: $(tail -1 "$WORK/redis.log" 2>/dev/null)" >&2
	done
	die "Redis did not start (see $WORK/redis.log)"
}

# start_pg DATABASE [CONF_LINE...] creates and starts a PostgreSQL cluster on
# a free loopback port (PGPORT) with pg2redis streaming DATABASE to Redis.
start_pg() {
	local db=$1; shift
	PGPORT=$(free_port)
	"${AS_PG[@]}" "$BIN/initdb" -D "$WORK/pgdata" -A trust -U postgres >/dev/null
	{
		echo "listen_addresses = '127.0.0.1'"
		echo "port = $PGPORT"
		echo "unix_socket_directories = '$WORK'"
		echo "shared_preload_libraries = 'pg2redis'"
		echo "wal_level = logical"
		echo "pg2redis.database = '$db'"
		echo "pg2redis.redis_url = 'redis://127.0.0.1:$REDIS_PORT/0'"
		printf '%s\n' "$@"
	} >>"$WORK/pgdata/postgresql.conf"
	"${AS_PG[@]}" "$BIN/pg_ctl" -D "$WORK/pgdata" -l "$WORK/postgres.log" -w start >/dev/null
	PG_STARTED=1
}

# stop_all stops the servers started here, by pid (PostgreSQL, REDIS_PID and
# EXTRA_PIDS), and removes $WORK.
stop_all() {
	if [[ -n $PG_STARTED ]]; then
		"${AS_PG[@]}" "$BIN/pg_ctl" -D "$WORK/pgdata" -m fast -w stop >/dev/null 2>&1 || true
	fi
	if [[ -n $REDIS_PID ]] && kill -0 "$REDIS_PID" 2>/dev/null; then
		kill "$REDIS_PID" 2>/dev/null || true
		for _ in $(seq 50); do kill -0 "$REDIS_PID" 2>/dev/null || break; sleep 0.1; done
		kill -9 "$REDIS_PID" 2>/dev/null || true
	fi
		for pid in "${EXTRA_PIDS[@]}"; do
		kill "$pid" 2>/dev/null || true
		for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
		kill -9 "$pid" 2>/dev/null || true
	done
	if [[ -n $WORK ]]; then rm -rf "$WORK"; fi
}
