# scripts/common.sh: what scripts/test.sh and scripts/demo.sh share —
# installing the Debian/Ubuntu packages that are missing, finding
# pg_config, building and installing pg2redis, and the unprivileged user
# PostgreSQL runs as when we are root.  Sourced, not run; expects $ROOT.

PACKAGES=(libhiredis-dev libjansson-dev redis-server libipc-run-perl pkg-config make gcc)

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

# have_pg is true when some PostgreSQL major has both its server and its
# server-dev files (pg_config under /usr/lib/postgresql/N/bin comes from -dev).
have_pg() {
	local d
	for d in /usr/lib/postgresql/*/bin; do [[ -x $d/postgres && -x $d/pg_config ]] && return 0; done
	return 1
}

# install_packages installs what is missing, and calls apt-get only then.
install_packages() {
	local missing=() p
	for p in "${PACKAGES[@]}"; do installed "$p" || missing+=("$p"); done
	if [[ ${#missing[@]} -eq 0 ]] && have_pg; then echo "== packages: all present"; return; fi
	command -v apt-get >/dev/null || die "packages are missing and there is no apt-get"
	as_root apt-get update -qq
	if ! have_pg; then
		if apt-cache show postgresql-15 >/dev/null 2>&1; then
			missing+=(postgresql-15 postgresql-server-dev-15)
		else            # e.g. Ubuntu: the distribution's own major
			missing+=(postgresql postgresql-server-dev-all)
		fi
	fi
	echo "== installing: ${missing[*]}"
	as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
		-o Dpkg::Use-Pty=0 --no-install-recommends "${missing[@]}"
}

# find_pg_config prints the pg_config to use: $PG_CONFIG, else PostgreSQL 15's,
# else the newest installed major's, else the one on PATH.
find_pg_config() {
	local c
	if [[ -n ${PG_CONFIG:-} ]]; then command -v "$PG_CONFIG" || die "PG_CONFIG=$PG_CONFIG not found"; return; fi
	for c in /usr/lib/postgresql/15/bin/pg_config \
		"$(printf '%s\n' /usr/lib/postgresql/*/bin/pg_config | sort -V | tail -n 1)" pg_config; do
		if [[ -n $c ]] && command -v "$c"; then return; fi
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
