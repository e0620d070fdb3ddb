# shellcheck shell=bash
# Shared provisioning for scripts/dev, scripts/test and scripts/bench:
# find or install the PostgreSQL server binaries, and run a private cluster
# (loopback only, its own port, owned by an unprivileged user) under .data/.

CONVEYOR_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
export CONVEYOR_ROOT

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# Prints the directory holding initdb/pg_ctl: CONVEYOR_PG_BINDIR when set
# (a PostgreSQL carried to a machine without a package registry, as
# scripts/device/run does), else the newest Debian build, installing the
# PostgreSQL server packages when none is present.
pg_bindir() {
  local dir
  if [[ -n "${CONVEYOR_PG_BINDIR:-}" ]]; then
    [[ -x "$CONVEYOR_PG_BINDIR/initdb" && -x "$CONVEYOR_PG_BINDIR/postgres" ]] \
      || die "CONVEYOR_PG_BINDIR=$CONVEYOR_PG_BINDIR holds no initdb and postgres"
    printf '%s\n' "$CONVEYOR_PG_BINDIR"
    return 0
  fi
  for dir in /usr/lib/postgresql/*/bin; do
    if [[ -x "$dir/initdb" && -x "$dir/pg_ctl" && -x "$dir/postgres" ]]; then
      LAST_PG_BINDIR="$dir"
    fi
  done
  if [[ -z "${LAST_PG_BINDIR:-}" ]]; then
    command -v apt-get >/dev/null || die "PostgreSQL server binaries are missing and apt-get is not available; install PostgreSQL 13+ server"
    log "installing the PostgreSQL server (apt-get install postgresql)"
    local sudo=""
    [[ $(id -u) -eq 0 ]] || sudo="sudo"
    $sudo apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq postgresql >&2
    for dir in /usr/lib/postgresql/*/bin; do
      [[ -x "$dir/initdb" ]] && LAST_PG_BINDIR="$dir"
    done
    [[ -n "${LAST_PG_BINDIR:-}" ]] || die "PostgreSQL installation did not provide initdb"
  fi
  printf '%s\n' "$LAST_PG_BINDIR"
}

# Runs a command as the unprivileged owner of the cluster: initdb refuses to
# run as root, so root delegates to the `postgres` system user.
as_pg_user() {
  if [[ $(id -u) -eq 0 ]]; then
    id postgres >/dev/null 2>&1 || useradd --system --home-dir /var/lib/postgresql --shell /bin/bash postgres
    # From /, so the tools never try to return to a folder they cannot see.
    (cd / && runuser -u postgres -- "$@")
  else
    "$@"
  fi
}

# Prints a TCP port on the loopback interface that nothing listens on.
free_port() {
  local port _
  for _ in $(seq 1 100); do
    port=$(( 20000 + RANDOM % 40000 ))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      printf '%s\n' "$port"
      return 0
    fi
  done
  die "no free loopback port found"
}

# Prints PREFERRED when the cluster's owner can reach it, else a fresh
# folder under /tmp: as root, a checkout under a private home (/root/...)
# is out of the `postgres` user's reach, and initdb would fail.
pg_datadir() {
  local preferred="$1" parent
  parent="$(dirname "$preferred")"
  mkdir -p "$parent"
  if [[ $(id -u) -eq 0 ]] && ! id postgres >/dev/null 2>&1; then
    useradd --system --home-dir /var/lib/postgresql --shell /bin/bash postgres
  fi
  if [[ $(id -u) -ne 0 ]] || runuser -u postgres -- test -x "$parent" 2>/dev/null; then
    printf '%s\n' "$preferred"
  else
    log "the postgres user cannot reach $parent; using a folder under /tmp"
    mktemp -d /tmp/conveyor-pg.XXXXXX
  fi
}

# pg_up DATADIR PORT [extra postgres -c settings...]
# Initialises DATADIR if needed (superuser `conveyor`, trust auth on
# loopback only) and starts the server. Prints nothing; the URL is
# postgres://conveyor@127.0.0.1:PORT/conveyor.
pg_up() {
  local datadir="$1" port="$2"; shift 2
  local bindir; bindir="$(pg_bindir)"
  mkdir -p "$datadir"
  if [[ $(id -u) -eq 0 ]]; then chown postgres: "$datadir"; fi
  chmod 700 "$datadir"
  if [[ ! -f "$datadir/PG_VERSION" ]]; then
    log "initialising a private PostgreSQL cluster in $datadir"
    as_pg_user "$bindir/initdb" -D "$datadir" -U conveyor -A trust -E UTF8 --locale=C.UTF-8 >/dev/null \
      || as_pg_user "$bindir/initdb" -D "$datadir" -U conveyor -A trust -E UTF8 --no-locale >/dev/null
  fi
  if as_pg_user "$bindir/pg_ctl" -D "$datadir" status >/dev/null 2>&1; then
    return 0
  fi
  local opts="-c listen_addresses=127.0.0.1 -c port=$port -c unix_socket_directories=$datadir -c max_connections=300"
  local extra
  for extra in "$@"; do opts+=" -c $extra"; done
  as_pg_user "$bindir/pg_ctl" -D "$datadir" -l "$datadir/server.log" -o "$opts" -w -t 60 start >/dev/null \
    || { cat "$datadir/server.log" >&2; die "PostgreSQL failed to start"; }
  local i
  for i in $(seq 1 50); do
    if as_pg_user "$bindir/psql" -h 127.0.0.1 -p "$port" -U conveyor -d postgres -Atqc 'select 1' >/dev/null 2>&1; then
      break
    fi
    sleep 0.1
  done
  as_pg_user "$bindir/psql" -h 127.0.0.1 -p "$port" -U conveyor -d postgres -Atqc \
    "select 1 from pg_database where datname = 'conveyor'" | grep -q 1 \
    || as_pg_user "$bindir/createdb" -h 127.0.0.1 -p "$port" -U conveyor conveyor
}

# bench_pg_up DATADIR: the cluster scripts/bench measures against, with
# default durability (synchronous_commit and fsync on) and
# pg_stat_statements loaded when the server ships it. Prints its URL.
bench_pg_up() {
  local datadir="$1" preload=() port
  if [[ -f "$(dirname "$(pg_bindir)")/lib/pg_stat_statements.so" ]]; then
    preload=(shared_preload_libraries=pg_stat_statements)
  fi
  pg_up "$datadir" "$(free_port)" shared_buffers=256MB "${preload[@]}"
  port="$(pg_port_of "$datadir")"
  printf 'postgres://conveyor@127.0.0.1:%s/conveyor\n' "$port"
}

# pg_down DATADIR: stops the cluster if it runs.
pg_down() {
  local datadir="$1" bindir; bindir="$(pg_bindir)"
  if [[ -f "$datadir/postmaster.pid" ]]; then
    as_pg_user "$bindir/pg_ctl" -D "$datadir" -m fast -w stop >/dev/null 2>&1 || true
  fi
}

# Port a running cluster listens on (from its postmaster.pid).
pg_port_of() {
  sed -n '4p' "$1/postmaster.pid" 2>/dev/null
}

# Fails with a clear message when the Rust toolchain is missing.
need_cargo() {
  command -v cargo >/dev/null || die "cargo is missing: install Rust (https://rustup.rs) and re-run"
}
