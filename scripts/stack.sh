#!/usr/bin/env bash
# Throwaway test stack on loopback: a PostgreSQL cluster and a tansu broker
# (Kafka protocol, in-memory storage). Used by `make test`, `make demo` and CI.
#
# Usage: scripts/stack.sh install|install-broker|broker-id|up|down|status|env
#
#   install  install PostgreSQL, promtool (Debian packages) and tansu 0.6.0
#            (built from its crates' sources with scripts/tansu/<crate>/*.patch),
#            each only when missing
#   install-broker  only the broker (used by scripts/base-images.sh)
#   broker-id       print the broker build's identity: version + patches hash
#   up       start both services (no-op for a service already running) and
#            wait until they accept connections
#   down     stop both services and delete their data
#   status   print what runs; exit 0 only when both services run
#   env      print `export TEST_DATABASE_URL=... TEST_KAFKA_BOOTSTRAP_SERVERS=...`
#            lines, for `eval "$(scripts/stack.sh env)"`
#
# Environment:
#   PG_PORT             PostgreSQL port on 127.0.0.1 (default 54329)
#   BROKER_PORT         broker port on 127.0.0.1 (default 19092)
#   STACK_WAIT          seconds to wait for a service to accept connections (default 60)
#   TANSU_INSTALL_WAIT  seconds to wait for a tansu build that another process
#                       is already running (default 3600)
#   TANSU_BUILD_DIR     where tansu is built (default
#                       ~/.cache/healthcheck-pipeline/tansu-0.6.0; kept for rebuilds)
#   TANSU_BIN           where tansu is installed and run from (default
#                       ~/.cargo/bin/tansu; the patches' hash goes beside it, in
#                       $TANSU_BIN.patches). The sink's tests read it too.
#   PG_BIN              directory holding initdb/pg_ctl (default: newest
#                       /usr/lib/postgresql/*/bin)
#   STACK_BROKER        tansu (default) or none: PostgreSQL alone, for `make demo`
#                       on its mock broker (install, up and status leave tansu out)
#   TANSU_OPT_LEVEL     rustc opt-level tansu is built with (default 0: 3 min 15 s of
#                       compiling on a fresh 2-core machine, against 10.7 min at 3, tansu's
#                       own release profile, and ~10 at 1; the whole test suite passes on
#                       it in the same time, its tests wait on timeouts, not on the broker's
#                       CPU). Recorded in $TANSU_BIN.opt-level (no file: 3).
#   TANSU_MIN_OPT_LEVEL an installed tansu built with a lower opt-level is rebuilt
#                       (default 0: any; `make bench` asks for 3, as the broker's CPU
#                       and serving rate are part of its figures)
#
# Each (PG_PORT, BROKER_PORT) pair has its own data, so the demo stack (other
# ports) runs beside the test stack. PostgreSQL lives in .tmp/pg/<port>/ and the
# broker's pid file and log in .tmp/broker/<port>/.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PG_PORT="${PG_PORT:-54329}"
BROKER_PORT="${BROKER_PORT:-19092}"
STACK_BROKER="${STACK_BROKER:-tansu}"
TANSU_OPT_LEVEL="${TANSU_OPT_LEVEL:-0}"
TANSU_MIN_OPT_LEVEL="${TANSU_MIN_OPT_LEVEL:-0}"
STACK_WAIT="${STACK_WAIT:-60}"
TANSU_INSTALL_WAIT="${TANSU_INSTALL_WAIT:-3600}"
TANSU_VERSION=0.6.0
CARGO_BIN="${CARGO_HOME:-$HOME/.cargo}/bin"
TANSU_BUILD_DIR="${TANSU_BUILD_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/healthcheck-pipeline/tansu-$TANSU_VERSION}"
TANSU_BIN="${TANSU_BIN:-$CARGO_BIN/tansu}"
HOST=127.0.0.1
DB_USER=healthcheck
DB_PASSWORD=healthcheck
DB_NAME=healthcheck
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"

BROKER_DIR="$REPO/.tmp/broker/$BROKER_PORT"
BROKER_PID_FILE="$BROKER_DIR/tansu.pid"
BROKER_LOG="$BROKER_DIR/tansu.log"

require_number PG_PORT BROKER_PORT STACK_WAIT TANSU_INSTALL_WAIT
case "$STACK_BROKER" in
    tansu | none) ;;
    *) die "STACK_BROKER must be tansu or none, got '$STACK_BROKER'" 2 ;;
esac
for var in TANSU_OPT_LEVEL TANSU_MIN_OPT_LEVEL; do
    case "${!var}" in
        0 | 1 | 2 | 3) ;;
        *) die "$var must be 0, 1, 2 or 3, got '${!var}'" 2 ;;
    esac
done
if ((TANSU_OPT_LEVEL < TANSU_MIN_OPT_LEVEL)); then
    TANSU_OPT_LEVEL=$TANSU_MIN_OPT_LEVEL
fi

# Runs a command as the `postgres` OS user when we are root (initdb and the
# server refuse to run as root), as ourselves otherwise.
as_pg() {
    if is_root; then
        (cd / && runuser -u postgres -- "$@")
    else
        "$@"
    fi
}

# ---------------------------------------------------------------- PostgreSQL

pg_bin() {
    if [ -n "${PG_BIN:-}" ]; then
        printf '%s\n' "$PG_BIN"
        return
    fi
    local dir
    dir="$(find /usr/lib/postgresql -mindepth 2 -maxdepth 2 -name bin -type d 2>/dev/null | sort -V | tail -n 1)"
    if [ -n "$dir" ] && [ -x "$dir/initdb" ]; then
        printf '%s\n' "$dir"
    elif command -v initdb >/dev/null 2>&1; then
        dirname "$(readlink -f "$(command -v initdb)")"
    fi
}

require_pg_bin() {
    PGBIN="$(pg_bin)"
    if [ -z "$PGBIN" ] || [ ! -x "$PGBIN/initdb" ]; then
        die "PostgreSQL server binaries not found (run: scripts/stack.sh install)"
    fi
}

# Where this port's cluster lives. Normally $REPO/.tmp/pg/<port>; when the
# postgres user cannot reach the work tree (say a clone under a mode-700 home),
# a directory under /tmp named after the work tree instead. The choice is
# deterministic so that `down` finds what `up` made.
pg_base() {
    local preferred="$REPO/.tmp/pg"
    if is_root; then
        mkdir -p "$preferred"
        chmod a+x "$REPO/.tmp" "$preferred"
        if ! (cd / && runuser -u postgres -- test -x "$preferred") 2>/dev/null; then
            local key
            key="$(printf '%s' "$REPO" | cksum | cut -d' ' -f1)"
            preferred="/tmp/healthcheck-stack-$key/pg"
            mkdir -p "$preferred"
            chmod 755 "$(dirname "$preferred")" "$preferred"
        fi
    else
        mkdir -p "$preferred"
    fi
    printf '%s/%s\n' "$preferred" "$PG_PORT"
}

pg_set_paths() {
    PG_BASE="$(pg_base)"
    PG_DATA="$PG_BASE/data"
    PG_SOCK="$PG_BASE/run"
    PG_LOG="$PG_BASE/postgres.log"
    # A Unix socket path must fit in 107 bytes.
    if [ $((${#PG_SOCK} + 20)) -gt 100 ]; then
        PG_SOCK="/tmp/healthcheck-pg-sock-$(printf '%s' "$PG_BASE" | cksum | cut -d' ' -f1)"
    fi
}

pg_running() {
    [ -f "$PG_DATA/PG_VERSION" ] && as_pg "$PGBIN/pg_ctl" -D "$PG_DATA" status >/dev/null 2>&1
}

pg_psql() {
    PGPASSWORD="$DB_PASSWORD" "$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 \
        -h "$HOST" -p "$PG_PORT" -U "$DB_USER" "$@"
}

pg_init() {
    log "initialising PostgreSQL cluster in $PG_DATA"
    rm -rf "$PG_DATA"
    mkdir -p "$PG_BASE" "$PG_SOCK"
    if is_root; then
        chown postgres: "$PG_BASE" "$PG_SOCK"
    fi
    local pwfile="$PG_BASE/pwfile"
    printf '%s\n' "$DB_PASSWORD" >"$pwfile"
    if is_root; then
        chown postgres: "$pwfile"
    fi
    chmod 600 "$pwfile"
    # `healthcheck` is the bootstrap superuser; local (socket) connections are
    # trusted, TCP ones need the password.
    if ! as_pg "$PGBIN/initdb" -D "$PG_DATA" -U "$DB_USER" --pwfile="$pwfile" \
        --auth-local=trust --auth-host=scram-sha-256 -E UTF8 --no-locale \
        >"$PG_BASE/initdb.log" 2>&1; then
        rm -f "$pwfile"
        tail_log "$PG_BASE/initdb.log"
        die "initdb failed"
    fi
    rm -f "$pwfile"
    cat >>"$PG_DATA/postgresql.conf" <<EOF

# Throwaway test cluster (scripts/stack.sh).
listen_addresses = '$HOST'
port = $PG_PORT
unix_socket_directories = '$PG_SOCK'
max_connections = 200
EOF
}

pg_up() {
    require_pg_bin
    pg_set_paths
    if pg_running; then
        log "PostgreSQL already running on $HOST:$PG_PORT"
    else
        if port_open "$PG_PORT" "$HOST"; then
            die "port $PG_PORT is taken by another process; pick another with PG_PORT=..."
        fi
        if [ ! -f "$PG_DATA/PG_VERSION" ]; then
            pg_init
        fi
        mkdir -p "$PG_SOCK"
        if is_root; then
            chown postgres: "$PG_SOCK"
        fi
        log "starting PostgreSQL on $HOST:$PG_PORT"
        # 9>&-: the server must not inherit (and so hold) the stack lock.
        if ! as_pg "$PGBIN/pg_ctl" -D "$PG_DATA" -l "$PG_LOG" -w -t "$STACK_WAIT" start >/dev/null 9>&-; then
            tail_log "$PG_LOG"
            die "PostgreSQL did not start within ${STACK_WAIT}s"
        fi
    fi

    if ! poll "$STACK_WAIT" 1 "$PGBIN/pg_isready" -q -h "$HOST" -p "$PG_PORT"; then
        tail_log "$PG_LOG"
        die "PostgreSQL on $HOST:$PG_PORT not ready after ${STACK_WAIT}s"
    fi

    if [ "$(pg_psql -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = '$DB_NAME'")" != 1 ]; then
        log "creating database $DB_NAME"
        pg_psql -d postgres -c "CREATE DATABASE $DB_NAME OWNER $DB_USER"
    fi
    pg_psql -d "$DB_NAME" -tAc 'SELECT 1' >/dev/null ||
        die "cannot connect to database $DB_NAME on $HOST:$PG_PORT"
}

pg_down() {
    local pgbin
    pgbin="$(pg_bin)"
    PGBIN="$pgbin"
    pg_set_paths
    if [ -n "$PGBIN" ] && [ -f "$PG_DATA/PG_VERSION" ]; then
        if pg_running; then
            log "stopping PostgreSQL on $HOST:$PG_PORT"
            as_pg "$PGBIN/pg_ctl" -D "$PG_DATA" -m fast -w -t 30 stop >/dev/null ||
                log "pg_ctl stop failed"
        fi
    fi
    # A server whose pg_ctl stop failed still holds its pid file.
    if [ -f "$PG_DATA/postmaster.pid" ]; then
        local pid
        pid="$(head -n 1 "$PG_DATA/postmaster.pid")"
        if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
            log "killing PostgreSQL postmaster $pid"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    rm -rf "$PG_BASE"
    case "$PG_SOCK" in
        /tmp/healthcheck-pg-sock-*) rm -rf "$PG_SOCK" ;;
    esac
    rmdir "$(dirname "$PG_BASE")" 2>/dev/null || true
    case "$PG_BASE" in
        /tmp/healthcheck-stack-*) rmdir "$(dirname "$(dirname "$PG_BASE")")" 2>/dev/null || true ;;
    esac
}

pg_status() {
    PGBIN="$(pg_bin)"
    pg_set_paths
    if [ -n "$PGBIN" ] && pg_running; then
        echo "postgres: running on $HOST:$PG_PORT (pid $(head -n 1 "$PG_DATA/postmaster.pid"), data $PG_DATA, log $PG_LOG)"
    else
        echo "postgres: stopped (port $PG_PORT)"
        return 1
    fi
}

# -------------------------------------------------------------------- broker

# sha256 of the crate archives: tansu and every crate that scripts/tansu/ patches
# (the same sums as in tansu 0.6.0's Cargo.lock).
tansu_crate_sha256() {
    case "$1" in
        tansu) echo 4fdd85473ec265140488cf8d55e82b844f5c051c8916fabdd4a71156ac053f6d ;;
        tansu-broker) echo 93c1e91b40c2a706dfdbe9a795c08c70918c874ad23f6e0e87564cc0a180e720 ;;
        tansu-storage) echo 720d2ed8e6010c70f7f06e5af5a7274ebbf6e42fdcd9e46de542b10dc4d2f35d ;;
        *) return 1 ;;
    esac
}

# The crates that scripts/tansu/ patches: one folder per crate, holding its
# patches (applied in name order, with -p1 inside the crate's sources).
tansu_patched_crates() {
    local dir
    for dir in "$REPO"/scripts/tansu/*/; do
        compgen -G "$dir*.patch" >/dev/null && basename "$dir"
    done
}

# The patches applied to tansu's sources (scripts/tansu/<crate>/*.patch, each
# with its crate's name), as one hash: an installed tansu built with other
# patches (or none) is rebuilt.
tansu_patches_id() {
    (
        cd "$REPO/scripts/tansu"
        LC_ALL=C
        for patch in */*.patch; do
            printf '%s\n' "$patch"
            cat "$patch"
        done
    ) | sha256sum | cut -c1-16
}

# The opt-level the installed tansu was built with: 3 for a build from before it
# was recorded (tansu's own release profile was the only one).
tansu_opt_level() {
    local level
    level="$(cat "$TANSU_BIN.opt-level" 2>/dev/null || true)"
    case "$level" in
        0 | 1 | 2 | 3) echo "$level" ;;
        *) echo 3 ;;
    esac
}

tansu_ok() {
    local bin="$TANSU_BIN"
    [ -x "$bin" ] &&
        "$bin" --version 2>/dev/null | grep -qw -- "$TANSU_VERSION" &&
        [ "$(cat "$bin.patches" 2>/dev/null)" = "$(tansu_patches_id)" ] &&
        (($(tansu_opt_level) >= TANSU_MIN_OPT_LEVEL))
}

# Prints the pid of our running broker, or fails.
broker_pid() {
    local pid
    [ -f "$BROKER_PID_FILE" ] || return 1
    pid="$(cat "$BROKER_PID_FILE")"
    if [ -z "$pid" ] || ! kill -0 "$pid" 2>/dev/null; then
        return 1
    fi
    # Guard against a recycled pid.
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q tansu || return 1
    printf '%s\n' "$pid"
}

broker_up() {
    tansu_ok || die "tansu $TANSU_VERSION with this repository's patches not found at $TANSU_BIN (run: scripts/stack.sh install)"
    local pid
    if pid="$(broker_pid)"; then
        log "broker already running on $HOST:$BROKER_PORT (pid $pid)"
    else
        if port_open "$BROKER_PORT" "$HOST"; then
            die "port $BROKER_PORT is taken by another process; pick another with BROKER_PORT=..."
        fi
        mkdir -p "$BROKER_DIR"
        log "starting tansu broker on $HOST:$BROKER_PORT (in-memory storage)"
        # setsid: its own session, so a Ctrl-C meant for `make test` leaves it
        # to the trap that calls `down`. 9>&-: it must not hold the stack lock.
        RUST_LOG="${TANSU_RUST_LOG:-warn}" setsid "$TANSU_BIN" broker \
            --listener-url "tcp://$HOST:$BROKER_PORT" \
            --advertised-listener-url "tcp://$HOST:$BROKER_PORT" \
            --storage-engine memory://tansu/ \
            >"$BROKER_LOG" 2>&1 </dev/null 9>&- &
        pid=$!
        printf '%s\n' "$pid" >"$BROKER_PID_FILE"
    fi

    local rc=0
    poll --while-alive "$pid" "$STACK_WAIT" 1 port_open "$BROKER_PORT" "$HOST" || rc=$?
    if ((rc != 0)); then
        tail_log "$BROKER_LOG"
        ((rc == 2)) || die "broker on $HOST:$BROKER_PORT not accepting connections after ${STACK_WAIT}s"
        rm -f "$BROKER_PID_FILE"
        die "broker exited before accepting connections"
    fi
    # The port may answer for another process that won a race for it.
    if ! kill -0 "$pid" 2>/dev/null; then
        tail_log "$BROKER_LOG"
        rm -f "$BROKER_PID_FILE"
        die "broker exited; port $BROKER_PORT is held by another process"
    fi
}

broker_down() {
    local pid
    if pid="$(broker_pid)"; then
        stop_process "broker on $HOST:$BROKER_PORT" "$pid" 10
    fi
    rm -rf "$BROKER_DIR"
    rmdir "$(dirname "$BROKER_DIR")" 2>/dev/null || true
}

broker_status() {
    local pid
    if pid="$(broker_pid)"; then
        echo "broker:   running on $HOST:$BROKER_PORT (pid $pid, log $BROKER_LOG)"
    else
        echo "broker:   stopped (port $BROKER_PORT)"
        return 1
    fi
}

# ------------------------------------------------------------------- install

# Puts $1-$TANSU_VERSION.crate, checked against its pinned sha256, into
# $TANSU_BUILD_DIR, taken from cargo's package cache (any registry's folder in
# it), which cargo fills from the registry it is configured with: no host name
# here. A crate already there with the right sum is kept.
tansu_crate() {
    local name=$1 sum want cached file
    want="$(tansu_crate_sha256 "$name")" || die "no pinned sha256 for crate $name (scripts/tansu/$name/ patches an unknown crate)"
    file="$TANSU_BUILD_DIR/$name-$TANSU_VERSION.crate"
    if [ -f "$file" ] && [ "$(sha256sum "$file" | cut -d' ' -f1)" = "$want" ]; then
        return
    fi
    for cached in "${CARGO_HOME:-$HOME/.cargo}"/registry/cache/*/"$name-$TANSU_VERSION.crate"; do
        [ -f "$cached" ] || continue
        sum="$(sha256sum "$cached" | cut -d' ' -f1)"
        if [ "$sum" = "$want" ]; then
            cp "$cached" "$file.part"
            mv "$file.part" "$file"
            return
        fi
        log "$cached: sha256 $sum, expected $want; not used"
    done
    return 1
}

# tansu 0.6.0 from its crates' sources with our patches applied (see
# scripts/tansu/README.md), built in $TANSU_BUILD_DIR (kept, so a rebuild after a
# new patch is incremental) and installed as $TANSU_BIN, with the patches' hash
# in $TANSU_BIN.patches.
#
# cargo downloads every archive: `cargo info` the tansu crate (it fetches the
# archive to read its manifest; a throwaway manifest depending on it and `cargo
# fetch` when that left nothing in the cache), then `cargo fetch --locked` in
# tansu's sources everything its Cargo.lock pins, the crates we patch included.
# Each archive we extract is checked against its pinned sha256.
install_tansu() {
    if tansu_ok; then
        log "tansu $TANSU_VERSION (patched, opt-level $(tansu_opt_level)) already installed ($TANSU_BIN)"
        return
    fi
    command -v cargo >/dev/null 2>&1 || die "cargo not found; install the Rust toolchain first"
    mkdir -p "$TANSU_BUILD_DIR"
    # Another process may be building it right now: wait for it (the lock) rather
    # than compiling the same crates twice on a 2-core machine.
    hold_lock 8 "$TANSU_BUILD_DIR/.lock" "$TANSU_INSTALL_WAIT" "another tansu build in $TANSU_BUILD_DIR" ||
        die "another tansu build held $TANSU_BUILD_DIR/.lock for ${TANSU_INSTALL_WAIT}s"
    if tansu_ok; then
        log "tansu $TANSU_VERSION (patched) installed by the other process"
        exec 8>&-
        return
    fi
    log "building tansu $TANSU_VERSION with scripts/tansu/<crate>/*.patch, opt-level $TANSU_OPT_LEVEL (about 3 minutes on 2 cores at opt-level 0, 11 at 3)"
    local crate patch id crates src="$TANSU_BUILD_DIR/tansu-$TANSU_VERSION"
    id="$(tansu_patches_id)"
    mapfile -t crates < <(tansu_patched_crates)
    # The sources are extracted and patched again only when the patches changed
    # (a re-extraction would make cargo rebuild the tansu crates).
    if [ "$(cat "$TANSU_BUILD_DIR/sources.patches" 2>/dev/null)" != "$id" ]; then
        if ! tansu_crate tansu; then
            (cd "$TANSU_BUILD_DIR" && cargo info --quiet "tansu@$TANSU_VERSION" >/dev/null) ||
                die "cargo could not fetch tansu $TANSU_VERSION"
        fi
        if ! tansu_crate tansu; then
            local fetch="$TANSU_BUILD_DIR/fetch-tansu"
            mkdir -p "$fetch/src"
            : >"$fetch/src/lib.rs"
            printf '[package]\nname = "fetch-tansu"\nversion = "0.0.0"\nedition = "2021"\npublish = false\n\n[workspace]\n\n[dependencies]\ntansu = { version = "=%s", default-features = false }\n' \
                "$TANSU_VERSION" >"$fetch/Cargo.toml"
            (cd "$fetch" && cargo fetch --quiet) || die "cargo could not fetch tansu $TANSU_VERSION"
            tansu_crate tansu || die "tansu-$TANSU_VERSION.crate with the pinned sha256 not in cargo's package cache after cargo fetch"
        fi
        rm -rf "$src"
        tar -xzf "$TANSU_BUILD_DIR/tansu-$TANSU_VERSION.crate" -C "$TANSU_BUILD_DIR"
        # Everything tansu's own Cargo.lock pins, checked against its sums.
        (cd "$src" && cargo fetch --locked --quiet) || die "cargo fetch --locked failed for tansu $TANSU_VERSION"
        printf '\n[patch.crates-io]\n' >>"$src/Cargo.toml"
        for crate in "${crates[@]}"; do
            tansu_crate "$crate" ||
                die "$crate-$TANSU_VERSION.crate with the pinned sha256 not in cargo's package cache (is $crate $TANSU_VERSION in tansu's Cargo.lock?)"
            rm -rf "${TANSU_BUILD_DIR:?}/$crate-$TANSU_VERSION"
            tar -xzf "$TANSU_BUILD_DIR/$crate-$TANSU_VERSION.crate" -C "$TANSU_BUILD_DIR"
            for patch in "$REPO/scripts/tansu/$crate"/*.patch; do
                patch -s -p1 -d "$TANSU_BUILD_DIR/$crate-$TANSU_VERSION" <"$patch" || die "$patch does not apply"
            done
            printf '%s = { path = "../%s-%s" }\n' "$crate" "$crate" "$TANSU_VERSION" >>"$src/Cargo.toml"
        done
        printf '%s\n' "$id" >"$TANSU_BUILD_DIR/sources.patches"
    fi
    # The crate's own Cargo.lock pins every other dependency (as `cargo install
    # --locked` would); cargo only swaps in the patched crates. tansu's release
    # profile is cargo's default (opt-level 3, 16 codegen units, no LTO, no debug
    # info): only the opt-level is left to lower.
    (cd "$src" &&
        CARGO_TARGET_DIR="$TANSU_BUILD_DIR/target" CARGO_PROFILE_RELEASE_OPT_LEVEL="$TANSU_OPT_LEVEL" \
            cargo build --release --features dynostore --bin tansu) ||
        die "tansu build failed"
    mkdir -p "$(dirname "$TANSU_BIN")"
    command install -m 0755 "$TANSU_BUILD_DIR/target/release/tansu" "$TANSU_BIN.new"
    mv -f "$TANSU_BIN.new" "$TANSU_BIN"
    printf '%s\n' "$id" >"$TANSU_BIN.patches"
    printf '%s\n' "$TANSU_OPT_LEVEL" >"$TANSU_BIN.opt-level"
    exec 8>&-
    tansu_ok || die "tansu $TANSU_VERSION still not usable after the build"
}

install() {
    local missing=()
    if [ -z "$(pg_bin)" ]; then
        missing+=(postgresql)
    fi
    if ! command -v promtool >/dev/null 2>&1 && ! dpkg -s prometheus >/dev/null 2>&1; then
        missing+=(prometheus)
    fi
    if [ "${#missing[@]}" -gt 0 ]; then
        apt_install "${missing[@]}"
    else
        log "postgresql and prometheus (promtool) already installed"
    fi
    [ -n "$(pg_bin)" ] || die "PostgreSQL server binaries still not found after install"
    command -v promtool >/dev/null 2>&1 || die "promtool still not found after install"
    if [ "$STACK_BROKER" = tansu ]; then
        install_tansu
    fi
}

# ---------------------------------------------------------------------- main

# Serialises up/down, so that two concurrent `up`s (say `make test` in two
# terminals) do not both start a server on the same port.
lock() {
    hold_lock 9 "$REPO/.tmp/stack.lock" 300 "another scripts/stack.sh up/down" ||
        die "another scripts/stack.sh up/down held .tmp/stack.lock for 300s"
}

usage() {
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
}

case "${1:-}" in
    install) install ;;
    install-broker) install_tansu ;;
    broker-id) echo "tansu-$TANSU_VERSION+$(tansu_patches_id)" ;;
    up)
        lock
        pg_up
        if [ "$STACK_BROKER" = tansu ]; then
            broker_up
            log "up: postgres $HOST:$PG_PORT, broker $HOST:$BROKER_PORT"
        else
            log "up: postgres $HOST:$PG_PORT (no broker: STACK_BROKER=none)"
        fi
        ;;
    down)
        lock
        broker_down
        pg_down
        ;;
    status)
        rc=0
        pg_status || rc=1
        if [ "$STACK_BROKER" = tansu ]; then
            broker_status || rc=1
        fi
        exit "$rc"
        ;;
    env)
        echo "export TEST_DATABASE_URL=postgres://$DB_USER:$DB_PASSWORD@$HOST:$PG_PORT/$DB_NAME"
        echo "export TEST_KAFKA_BOOTSTRAP_SERVERS=$HOST:$BROKER_PORT"
        ;;
    -h | --help | help) usage ;;
    *)
        usage >&2
        exit 2
        ;;
esac
