# shellcheck shell=bash
# Shell helpers shared by the scripts in scripts/ (sourced, never run):
#
#   source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
#
# Sets REPO (the repository's root) and LOG_NAME (the sourcing script's name
# without .sh, for log; a script may set it after sourcing). Defines only functions and those two
# variables: sourcing it starts nothing, changes no directory and sets no shell
# option, so every script keeps its own `set -euo pipefail` and traps.
#
# Must never name a package registry's or a Debian archive's host: a mirror is
# read from this machine's apt configuration (debian_mirror), crates come from
# whatever cargo is configured with.

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LOG_NAME="$(basename "${BASH_SOURCE[1]:-$0}" .sh)"

# ------------------------------------------------------------------- output

# log MESSAGE...: `[name HH:MM:SS] message` on stderr; with LOG_T0 set (a
# $SECONDS value) also the seconds since then: `[name HH:MM:SS +  12s]`.
# `|| true`: a closed stderr (say `make test | tee` after Ctrl-C) must not
# abort a clean-up half-way.
log() {
    local since=""
    [[ -n "${LOG_T0:-}" ]] && printf -v since ' +%4ds' "$((SECONDS - LOG_T0))"
    printf '[%s %(%H:%M:%S)T%s] %s\n' "$LOG_NAME" -1 "$since" "$*" >&2 || true
}

# die MESSAGE [STATUS]: logs `error: MESSAGE` and exits with STATUS (default 1).
die() {
    log "error: $1"
    exit "${2:-1}"
}

# tail_log FILE [LINES]: the last LINES (default 30) lines of FILE, indented, on stderr.
tail_log() {
    if [[ -f "$1" ]]; then
        log "last lines of ${1#"$REPO"/}:"
        tail -n "${2:-30}" "$1" | sed 's/^/    /' >&2 || true
    else
        log "(no log at ${1#"$REPO"/})"
    fi
}

# ------------------------------------------------------------- environment

# require_number VAR...: exits 2 naming the first VAR whose value is set but
# not a non-negative integer (an empty value passes: "unset").
require_number() {
    local var
    for var in "$@"; do
        case "${!var:-}" in
        *[!0-9]*) die "$var must be a number, got '${!var}'" 2 ;;
        esac
    done
}

# env_value VAR [DEFAULT]: VAR from the environment, else its last assignment in
# $REPO/.env (one pair of single or double quotes stripped), else DEFAULT.
env_value() {
    local var=$1 value="${!1:-}"
    if [[ -z "$value" && -f "$REPO/.env" ]]; then
        value=$(sed -n "s/^${var}=//p" "$REPO/.env" | tail -n1)
        value="${value#\'}"; value="${value%\'}"; value="${value#\"}"; value="${value%\"}"
    fi
    printf '%s\n' "${value:-${2:-}}"
}

is_root() { [[ "$(id -u)" -eq 0 ]]; }

# -------------------------------------------------------------- processes

# port_open PORT [HOST]: true when something accepts TCP connections on
# HOST:PORT (default 127.0.0.1), within 2 s.
port_open() {
    # shellcheck disable=SC2016 # $0/$1 expand in the inner shell
    timeout 2 bash -c 'exec 3<>"/dev/tcp/$0/$1"' "${2:-127.0.0.1}" "$1" 2>/dev/null
}

# poll [--while-alive PID] TIMEOUT INTERVAL COMMAND...: runs COMMAND every
# INTERVAL seconds until it succeeds. Returns 0 when it did, 1 when TIMEOUT
# seconds passed first, 2 when process PID exited first. Sets POLL_WAITED to
# the seconds it waited.
poll() {
    local pid=""
    if [[ "$1" == --while-alive ]]; then
        pid=$2
        shift 2
    fi
    local limit=$1 interval=$2 start=$SECONDS
    shift 2
    POLL_WAITED=0
    until "$@"; do
        POLL_WAITED=$((SECONDS - start))
        if [[ -n "$pid" ]] && ! kill -0 "$pid" 2>/dev/null; then return 2; fi
        ((POLL_WAITED < limit)) || return 1
        sleep "$interval"
    done
    POLL_WAITED=$((SECONDS - start))
}

# hold_lock FD FILE SECONDS WHAT: takes an exclusive flock on FILE through file
# descriptor FD of the calling shell (held until it exits or closes FD; give
# long-lived children FD>&- so that they do not inherit it). When another
# process holds it, logs "waiting for WHAT" and waits up to SECONDS (0: not at
# all); returns 1 when the lock is still held after that.
hold_lock() {
    local fd=$1 file=$2 wait=$3 what=$4
    mkdir -p "$(dirname "$file")"
    eval "exec $fd>\"\$file\""
    flock -n "$fd" && return 0
    ((wait > 0)) || return 1
    log "waiting for $what (up to ${wait}s)"
    flock -w "$wait" "$fd"
}

# stop_process NAME PID GRACE: SIGTERM, up to GRACE seconds to exit, then SIGKILL.
# Nothing when PID is empty or not running.
stop_process() {
    local name=$1 pid=$2 grace=$3 i
    [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null || return 0
    log "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < grace * 5; i++)); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.2
    done
    log "$name still running after ${grace}s; killing it"
    kill -KILL "$pid" 2>/dev/null || true
}

# --------------------------------------------------------- Debian packages

# apt_install PACKAGE...: installs Debian packages (no recommends) as root;
# exits naming them when not root. Waits up to 5 min for another apt's lock.
apt_install() {
    is_root || die "missing Debian packages: $* (install them as root)"
    log "installing Debian packages: $*"
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -q \
        --no-install-recommends "$@" >/dev/null
}

# debian_mirror [ARCHIVE]: the URI of ARCHIVE (default debian; e.g.
# debian-security) that this machine's apt uses, from /etc/apt/sources.list and
# /etc/apt/sources.list.d/*.{list,sources} (one-line and deb822 formats), without
# a trailing slash. Fails when apt is configured with no such archive.
debian_mirror() {
    local archive=${1:-debian} uri
    uri=$(grep -hE '^[[:space:]]*(URIs:|deb )' /etc/apt/sources.list \
        /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list 2>/dev/null |
        grep -oE 'https?://[^ ]+' | sed 's:/*$::' | grep -E "/${archive}\$" | head -n1) || true
    [[ -n "$uri" ]] || return 1
    printf '%s\n' "$uri"
}

# --------------------------------------------------------------- images

# image_info IMAGE: sets IMAGE_BYTES, IMAGE_USER and IMAGE_ROW (`IMAGE  SIZE MB
# USER`, USER "root" when the image sets none: the columns of the size tables
# that scripts/images.sh and scripts/e2e.sh print). Fails when IMAGE is missing.
image_info() {
    IMAGE_BYTES=$(docker image inspect -f '{{.Size}}' "$1") || return 1
    IMAGE_USER=$(docker image inspect -f '{{.Config.User}}' "$1")
    # shellcheck disable=SC2034 # read by the caller
    printf -v IMAGE_ROW '%-44s %7.1f MB %12s' "$1" "$(awk "BEGIN{print $IMAGE_BYTES/1e6}")" "${IMAGE_USER:-root}"
}
