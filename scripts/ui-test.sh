#!/usr/bin/env bash
# make ui-test: the status page in a real browser, and the JSON API against its OpenAPI file.
#
# Starts (on loopback) the test stack if it is not running (scripts/stack.sh; stopped again
# at the end only if this script started it), a scratch database, three targets (a Python
# http.server that is up, a closed port that is down, a path that answers 404), a real
# checker and a real sink (debug builds), waits for rows, then:
#   1. scripts/ui_test.py drives headless Chromium (Debian's chromium + chromium-driver,
#      through selenium): the overview and the target pages, their DOM compared with the
#      JSON API and with SQL on the same rows, screenshots in .tmp/ui/, and a page that
#      reloads itself and shows newer numbers;
#   2. schemathesis runs services/sink/openapi.yaml against the running server (any 5xx, a response
#      that does not match the schema, a wrong status fails).
# Installs what is missing: the Debian packages (as root) and a venv in .tmp/ui-venv with
# selenium and schemathesis from the Python package index.
#
# Environment: UI_PORT_BASE (default 18280: targets BASE+1..BASE+3, admin ports BASE+10/11,
# status page BASE+12), UI_KEEP=1 leaves the sink and checker running at the end (prints
# the URL) until Ctrl-C.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO"

PORT_BASE="${UI_PORT_BASE:-18280}"
require_number PORT_BASE
UP_PORT=$((PORT_BASE + 1))
CLOSED_PORT=$((PORT_BASE + 2))
CHECKER_ADMIN="127.0.0.1:$((PORT_BASE + 10))"
SINK_ADMIN="127.0.0.1:$((PORT_BASE + 11))"
STATUS="127.0.0.1:$((PORT_BASE + 12))"
OUT="$REPO/.tmp/ui"
VENV="$REPO/.tmp/ui-venv"
mkdir -p "$OUT"
LOG_T0=$SECONDS

# ------------------------------------------------------------------ tools

if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
    apt_install chromium chromium-driver
fi
if ! "$VENV/bin/python" -c 'import selenium, schemathesis' 2>/dev/null; then
    log "creating the venv .tmp/ui-venv (selenium, schemathesis)"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check 'selenium==4.51.0' 'schemathesis==4.32.5' >"$OUT/pip.log" 2>&1 ||
        { tail_log "$OUT/pip.log"; die "pip install failed"; }
fi

# ------------------------------------------------------------------ cleanup

PIDS=()
STACK_STARTED=0
DB_NAME="ui_$$"
ADMIN_URL=""
cleanup() {
    local rc=$?
    trap '' PIPE
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
        stop_process "${PIDS[i]%%:*}" "${PIDS[i]#*:}" 20
    done
    if [[ -n "$ADMIN_URL" ]]; then
        psql "$ADMIN_URL" -X -q -c "DROP DATABASE IF EXISTS $DB_NAME WITH (FORCE)" >/dev/null 2>&1 || true
    fi
    ((STACK_STARTED == 0)) || scripts/stack.sh down || true
    ((rc == 0)) || log "FAILED (logs in .tmp/ui/)"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ------------------------------------------------------------------ stack, build

eval "$(scripts/stack.sh env)"
pg_port="${TEST_DATABASE_URL##*:}"
pg_port="${pg_port%%/*}"
if port_open "$pg_port" && port_open "${TEST_KAFKA_BOOTSTRAP_SERVERS##*:}"; then
    # This checkout's stack, or another checkout's on the same ports (a worktree).
    log "using the PostgreSQL and broker that answer on ports $pg_port and ${TEST_KAFKA_BOOTSTRAP_SERVERS##*:}"
else
    scripts/stack.sh install
    STACK_STARTED=1
    scripts/stack.sh up
fi
ADMIN_URL="$TEST_DATABASE_URL"
psql "$ADMIN_URL" -X -q -v ON_ERROR_STOP=1 -c "CREATE DATABASE $DB_NAME" >/dev/null
DB_URL="${TEST_DATABASE_URL%/*}/$DB_NAME"
TOPIC="ui-results-$$"
TARGETS_TOPIC="ui-targets-$$"

for port in "$UP_PORT" "$CLOSED_PORT" "${CHECKER_ADMIN##*:}" "${SINK_ADMIN##*:}" "${STATUS##*:}"; do
    ! port_open "$port" || die "port 127.0.0.1:$port is taken; set UI_PORT_BASE"
done

log "building checker and sink (cargo build -p checker -p sink; log: .tmp/ui/build.log)"
cargo build -p checker -p sink >"$OUT/build.log" 2>&1 || { tail_log "$OUT/build.log"; die "build failed"; }
BIN="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/debug"

# ------------------------------------------------------------------ targets, services

mkdir -p "$OUT/www"
echo "healthy" >"$OUT/www/index.html"
python3 -m http.server "$UP_PORT" --bind 127.0.0.1 --directory "$OUT/www" >"$OUT/targets.log" 2>&1 &
PIDS+=("targets:$!")

# Names with a space, a slash, Unicode and HTML's characters: they travel percent-encoded.
TARGETS_JSON=$(
    cat <<EOF
[
  {"name": "web edge/α β", "url": "http://127.0.0.1:$UP_PORT/", "regex": "healthy", "interval": "2s", "timeout": "1s"},
  {"name": "closed <port> & co", "url": "http://127.0.0.1:$CLOSED_PORT/", "interval": "2s", "timeout": "1s"},
  {"name": "missing-page", "url": "http://127.0.0.1:$UP_PORT/nothing-here", "interval": "2s", "timeout": "1s"}
]
EOF
)

http_ok() { curl -fsS -o /dev/null --max-time 2 "$1" 2>/dev/null; }

start_sink() {
    DATABASE_URL="$DB_URL" ADMIN_ADDR="$SINK_ADMIN" STATUS_ADDR="$STATUS" INSTANCE_ID=ui-sink \
        KAFKA_BOOTSTRAP_SERVERS="$TEST_KAFKA_BOOTSTRAP_SERVERS" KAFKA_TOPIC="$TOPIC" \
        KAFKA_TARGETS_TOPIC="$TARGETS_TOPIC" KAFKA_GROUP_ID="ui-$$" ROLLUP_INTERVAL=1s \
        BATCH_LINGER=50ms LOG_FORMAT=json RUST_LOG=info \
        "$BIN/sink" >>"$OUT/sink.log" 2>&1 </dev/null &
    PIDS+=("sink:$!")
}

start_checker() {
    TARGETS="$TARGETS_JSON" ADMIN_ADDR="$CHECKER_ADMIN" INSTANCE_ID=ui-checker \
        KAFKA_BOOTSTRAP_SERVERS="$TEST_KAFKA_BOOTSTRAP_SERVERS" KAFKA_TOPIC="$TOPIC" \
        LOG_FORMAT=json RUST_LOG=info \
        "$BIN/checker" >>"$OUT/checker.log" 2>&1 </dev/null &
    CHECKER_PID=$!
    PIDS+=("checker:$CHECKER_PID")
}

start_sink
poll 60 1 http_ok "http://$SINK_ADMIN/healthz" || { tail_log "$OUT/sink.log"; die "the sink did not start"; }
start_checker
poll 60 1 http_ok "http://$CHECKER_ADMIN/healthz" || { tail_log "$OUT/checker.log"; die "the checker did not start"; }
log "status page: http://$STATUS/ (database $DB_NAME)"

# ------------------------------------------------------------------ checks

export STATUS_URL="http://$STATUS" DB_URL OUT
"$VENV/bin/python" scripts/ui_test.py --checker-pid "$CHECKER_PID" --wait-rows 8 || { tail_log "$OUT/sink.log" 15; die "the browser test failed"; }

log "schemathesis against services/sink/openapi.yaml"
# From .tmp/ui: schemathesis keeps its state in ./.schemathesis.
(cd "$OUT" && "$VENV/bin/schemathesis" run "$REPO/services/sink/openapi.yaml" --url "http://$STATUS" \
    --checks all --max-examples 40 --workers 1 --no-color) \
    >"$OUT/schemathesis.log" 2>&1 || { tail -n 60 "$OUT/schemathesis.log" >&2; die "schemathesis found problems (.tmp/ui/schemathesis.log)"; }
tail -n 8 "$OUT/schemathesis.log" >&2

if [[ -n "${UI_KEEP:-}" ]]; then
    log "UI_KEEP: the status page stays at http://$STATUS/ until Ctrl-C"
    wait
fi
log "ui-test passed; screenshots in .tmp/ui/"
