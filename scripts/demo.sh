#!/usr/bin/env bash
# `make demo`: the whole pipeline on this machine, without Docker.
#
# Starts a throwaway PostgreSQL (scripts/stack.sh, on the demo ports), builds
# the release binaries, starts a Kafka-protocol broker (DEMO_BROKER), four demo
# targets on loopback
#   healthy        a page that says "healthy"; the regex matches
#   wrong-content  a page that says "maintenance"; the regex does not match
#   refused        a port where nothing listens
#   hangs          a server that answers only long after the 2 s timeout
# then the sink and the checker, and every 2 s shows what reached PostgreSQL,
# until Ctrl-C. Everything it started is stopped on the way out.
#
# Environment:
#   DEMO_BROKER        mock (default): librdkafka's mock cluster in a process of our
#                      own (target/release/mock-broker, services/testkit), built with
#                      the services, nothing else to install; tansu: the test broker
#                      (scripts/stack.sh install builds it the first time, minutes)
#   DEMO_SECONDS       run this many seconds, print the final summary and exit:
#                      0 when every demo target has at least one row, 1 otherwise
#   DEMO_PG_PORT       PostgreSQL port (default 54330)
#   DEMO_BROKER_PORT   tansu's port (default 19093; the mock broker takes a free one)
#   DEMO_PORT_BASE     demo targets use BASE+1..BASE+4, the checker's admin
#                      server BASE+10 and the sink's BASE+11 (default 18180)
#   DEMO_STATUS_PORT   the status page, http://localhost:PORT/ (default 8080)
#   DEMO_BUILD=0       skip `cargo build --release` (use the binaries in target/release,
#                      or $CARGO_TARGET_DIR/release)
# Logs: .tmp/demo/{targets,sink,checker,build,mock-broker}.log
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO"

DEMO_SECONDS="${DEMO_SECONDS:-}"
DEMO_BROKER="${DEMO_BROKER:-mock}"
case "$DEMO_BROKER" in
    mock) export STACK_BROKER=none ;;
    tansu) export STACK_BROKER=tansu ;;
    *) die "DEMO_BROKER must be mock or tansu, got '$DEMO_BROKER'" 2 ;;
esac
export PG_PORT="${DEMO_PG_PORT:-54330}"
export BROKER_PORT="${DEMO_BROKER_PORT:-19093}"
PORT_BASE="${DEMO_PORT_BASE:-18180}"
require_number DEMO_SECONDS PG_PORT BROKER_PORT PORT_BASE

HEALTHY_PORT=$((PORT_BASE + 1))
MISMATCH_PORT=$((PORT_BASE + 2))
REFUSED_PORT=$((PORT_BASE + 3))
HANG_PORT=$((PORT_BASE + 4))
CHECKER_ADMIN="127.0.0.1:$((PORT_BASE + 10))"
SINK_ADMIN="127.0.0.1:$((PORT_BASE + 11))"
STATUS_PORT="${DEMO_STATUS_PORT:-8080}"
require_number STATUS_PORT
STATUS_ADDR="127.0.0.1:$STATUS_PORT"
DB_URL="postgres://healthcheck:healthcheck@127.0.0.1:$PG_PORT/healthcheck"
BROKER="127.0.0.1:$BROKER_PORT"
DEMO_DIR="$REPO/.tmp/demo"
MOCK_BOOTSTRAP_FILE="$DEMO_DIR/mock-broker.bootstrap"
TARGET_NAMES=(healthy wrong-content refused hangs)

TARGETS_JSON="$(
    cat <<EOF
[
  {"name": "healthy", "url": "http://127.0.0.1:$HEALTHY_PORT/", "regex": "healthy", "interval": "5s", "timeout": "2s"},
  {"name": "wrong-content", "url": "http://127.0.0.1:$MISMATCH_PORT/", "regex": "healthy", "interval": "5s", "timeout": "2s"},
  {"name": "refused", "url": "http://127.0.0.1:$REFUSED_PORT/", "interval": "5s", "timeout": "2s"},
  {"name": "hangs", "url": "http://127.0.0.1:$HANG_PORT/", "interval": "5s", "timeout": "2s"}
]
EOF
)"

# ------------------------------------------------------------------ cleanup

TARGETS_PID=""
MOCK_PID=""
SINK_PID=""
CHECKER_PID=""
STACK_STARTED=0
CLEANED=0

cleanup() {
    [ "$CLEANED" -eq 0 ] || return 0
    CLEANED=1
    # After Ctrl-C on `make demo | tee ...` the reader of our output is gone:
    # ignore SIGPIPE (also in the children below) so that writing a progress
    # line does not kill us before everything is stopped.
    trap '' PIPE
    # The checker first, so that the sink can drain what it already sent.
    stop_process checker "$CHECKER_PID" 30
    stop_process sink "$SINK_PID" 30
    stop_process "mock broker" "$MOCK_PID" 10
    stop_process "demo targets" "$TARGETS_PID" 5
    if [ "$STACK_STARTED" -eq 1 ]; then
        scripts/stack.sh down || true
        log "logs are in ${DEMO_DIR#"$REPO"/}/"
    fi
    return 0
}

on_signal() {
    echo 2>/dev/null || true
    cleanup
    exit 130
}
trap cleanup EXIT
trap on_signal INT TERM

# ------------------------------------------------------------------ helpers

psql_demo() {
    psql "$DB_URL" -X -q -v ON_ERROR_STOP=1 -P pager=off "$@"
}

http_ok() { curl -fsS -o /dev/null --max-time 2 "$1" 2>/dev/null; }

# Waits until $url answers 200, while process $pid lives, for at most $3 s.
wait_http() {
    local name=$1 url=$2 limit=$3 pid=$4 logfile=$5 rc=0
    poll --while-alive "$pid" "$limit" 1 http_ok "$url" || rc=$?
    ((rc == 0)) && return
    tail_log "$logfile" 25
    ((rc == 2)) && die "$name exited during start-up"
    die "$name did not answer $url within ${limit}s"
}

# Exits when the sink or the checker died.
check_alive() {
    local name pid
    for name in sink checker; do
        if [ "$name" = sink ]; then pid=$SINK_PID; else pid=$CHECKER_PID; fi
        if ! kill -0 "$pid" 2>/dev/null; then
            local rc=0
            wait "$pid" 2>/dev/null || rc=$?
            tail_log "$DEMO_DIR/$name.log" 25
            die "$name exited unexpectedly (exit code $rc)"
        fi
    done
}

table_exists() {
    [ "$(psql_demo -tAc "SELECT to_regclass('public.probe_results') IS NOT NULL" 2>/dev/null)" = t ]
}

SUMMARY_SQL="
WITH latest AS (
    SELECT DISTINCT ON (target_name)
           target_name, status_code, success, error_kind, duration_seconds, regex_matched, started_at
      FROM probe_results
     ORDER BY target_name, started_at DESC
), counts AS (
    SELECT target_name, count(*) AS probes FROM probe_results GROUP BY target_name
)
SELECT l.target_name                          AS target,
       c.probes,
       l.status_code                          AS last_status,
       l.success                              AS last_success,
       coalesce(l.error_kind, '-')            AS last_error_kind,
       round(l.duration_seconds::numeric, 3)  AS last_duration_s,
       l.regex_matched,
       to_char(l.started_at, 'HH24:MI:SS')    AS last_probe_at
  FROM latest l JOIN counts c USING (target_name)
 ORDER BY l.target_name;"

summary() {
    if ! table_exists; then
        echo "(no table probe_results yet: waiting for the sink's migrations)"
        return 0
    fi
    psql_demo -c "$SUMMARY_SQL" || echo "(summary query failed)"
}

# Number of demo targets that have at least one row.
targets_with_rows() {
    local names
    names="$(printf "'%s'," "${TARGET_NAMES[@]}")"
    names="${names%,}"
    if table_exists; then
        psql_demo -tAc "SELECT count(DISTINCT target_name) FROM probe_results WHERE target_name IN ($names)"
    else
        echo 0
    fi
}

# What each demo target is expected to look like; informational.
expectations() {
    table_exists || return 0
    psql_demo -tA -F ' ' -c "
WITH latest AS (
    SELECT DISTINCT ON (target_name) target_name, success, regex_matched, error_kind
      FROM probe_results ORDER BY target_name, started_at DESC)
SELECT target_name,
       CASE target_name
           WHEN 'healthy'       THEN success AND coalesce(regex_matched, false)
           WHEN 'wrong-content' THEN NOT success AND regex_matched IS FALSE
           WHEN 'refused'       THEN NOT success AND error_kind IS NOT NULL
           WHEN 'hangs'         THEN NOT success AND error_kind IS NOT NULL
       END,
       CASE target_name
           WHEN 'healthy'       THEN 'success, regex matched'
           WHEN 'wrong-content' THEN 'failure, regex not matched'
           WHEN 'refused'       THEN 'failure with an error kind'
           WHEN 'hangs'         THEN 'failure with an error kind (timeout)'
       END
  FROM latest ORDER BY target_name" 2>/dev/null |
        while read -r name ok expected; do
            case "$name" in
                healthy | wrong-content | refused | hangs) ;;
                *) continue ;;
            esac
            if [ "$ok" = t ]; then
                echo "  ok          $name: $expected"
            else
                echo "  unexpected  $name: expected $expected"
            fi
        done
}

# -------------------------------------------------------------------- start

mkdir -p "$DEMO_DIR"

# One demo per set of ports: a second one would share, and on its way out
# tear down, the first one's stack. The services get `8>&-` so that the lock
# lives exactly as long as this script.
hold_lock 8 "$DEMO_DIR/demo-$PG_PORT.lock" 0 "" ||
    die "another demo is running on these ports (PostgreSQL $PG_PORT); stop it first, or set DEMO_PG_PORT, DEMO_BROKER_PORT and DEMO_PORT_BASE"

if [ "$DEMO_BROKER" = tansu ]; then
    log "starting PostgreSQL on 127.0.0.1:$PG_PORT and the tansu broker on $BROKER"
else
    log "starting PostgreSQL on 127.0.0.1:$PG_PORT (the broker: librdkafka's mock cluster, after the build)"
fi
scripts/stack.sh install
STACK_STARTED=1
scripts/stack.sh up 8>&-

# Only what the demo runs: the two services (and the mock broker, a small binary
# of the test helpers' crate that shares all their dependencies).
BINS=(checker sink)
BUILD=(cargo build --release -p checker -p sink)
if [ "$DEMO_BROKER" = mock ]; then
    BINS+=(mock-broker)
    BUILD+=(-p testkit --bin checker --bin sink --bin mock-broker)
fi
if [ "${DEMO_BUILD:-1}" != 0 ]; then
    log "building release binaries (${BUILD[*]}; log: .tmp/demo/build.log)"
    build_t0=$SECONDS
    if ! "${BUILD[@]}" >"$DEMO_DIR/build.log" 2>&1; then
        tail_log "$DEMO_DIR/build.log" 25
        die "build failed"
    fi
    log "built in $((SECONDS - build_t0))s"
fi
# Where cargo put them: CARGO_TARGET_DIR when set (relative to the repository, as cargo
# reads it), else target/.
RELEASE_DIR="${CARGO_TARGET_DIR:-target}/release"
for bin in "${BINS[@]}"; do
    [ -x "$RELEASE_DIR/$bin" ] || die "$RELEASE_DIR/$bin missing"
done

# Settings both services share.
export KAFKA_TOPIC="${KAFKA_TOPIC:-healthcheck-results}"
if [ "$DEMO_BROKER" = mock ]; then
    log "starting the mock broker (librdkafka's mock cluster; log: .tmp/demo/mock-broker.log)"
    rm -f "$MOCK_BOOTSTRAP_FILE"
    # The mock cluster answers no CreateTopics: it creates the topic itself.
    setsid "$RELEASE_DIR/mock-broker" --bootstrap-file "$MOCK_BOOTSTRAP_FILE" \
        "$KAFKA_TOPIC:${KAFKA_TOPIC_PARTITIONS:-6}" \
        >"$DEMO_DIR/mock-broker.log" 2>&1 </dev/null 8>&- &
    MOCK_PID=$!
    mock_ready() { [ -s "$MOCK_BOOTSTRAP_FILE" ]; }
    rc=0
    poll --while-alive "$MOCK_PID" 15 1 mock_ready || rc=$?
    if ((rc != 0)); then
        tail_log "$DEMO_DIR/mock-broker.log"
        die "the mock broker did not start"
    fi
    BROKER="$(cat "$MOCK_BOOTSTRAP_FILE")"
    export KAFKA_CREATE_TOPIC=false
    log "mock broker on $BROKER"
fi
export KAFKA_BOOTSTRAP_SERVERS="$BROKER"

if port_open "$REFUSED_PORT"; then
    die "something listens on 127.0.0.1:$REFUSED_PORT, which must stay closed; set DEMO_PORT_BASE"
fi
for port in "$HEALTHY_PORT" "$MISMATCH_PORT" "$HANG_PORT" "${CHECKER_ADMIN##*:}" "${SINK_ADMIN##*:}" "$STATUS_PORT"; do
    if port_open "$port"; then
        die "port 127.0.0.1:$port is taken; set DEMO_PORT_BASE (or DEMO_STATUS_PORT) to move the demo's ports"
    fi
done

log "starting demo targets on ports $HEALTHY_PORT (healthy), $MISMATCH_PORT (wrong content), $HANG_PORT (hangs); $REFUSED_PORT stays closed"
setsid python3 scripts/demo-targets/server.py \
    --healthy "$HEALTHY_PORT" --mismatch "$MISMATCH_PORT" --hang "$HANG_PORT" \
    >"$DEMO_DIR/targets.log" 2>&1 </dev/null 8>&- &
TARGETS_PID=$!
wait_http "demo targets" "http://127.0.0.1:$HEALTHY_PORT/" 15 "$TARGETS_PID" "$DEMO_DIR/targets.log"

export LOG_FORMAT="${LOG_FORMAT:-text}"
export RUST_LOG="${RUST_LOG:-info}"
export SHUTDOWN_GRACE_PERIOD="${SHUTDOWN_GRACE_PERIOD:-10s}"

log "starting sink (admin http://$SINK_ADMIN, status page http://localhost:$STATUS_PORT/)"
# ROLLUP_INTERVAL: the status page's numbers follow the 5 s probes closely.
DATABASE_URL="$DB_URL" ADMIN_ADDR="$SINK_ADMIN" STATUS_ADDR="$STATUS_ADDR" INSTANCE_ID=demo-sink \
    ROLLUP_INTERVAL="${ROLLUP_INTERVAL:-5s}" \
    KAFKA_GROUP_ID=healthcheck-demo \
    setsid "$RELEASE_DIR/sink" >"$DEMO_DIR/sink.log" 2>&1 </dev/null 8>&- &
SINK_PID=$!
wait_http sink "http://$SINK_ADMIN/healthz" 60 "$SINK_PID" "$DEMO_DIR/sink.log"

log "starting checker (admin http://$CHECKER_ADMIN)"
TARGETS="$TARGETS_JSON" ADMIN_ADDR="$CHECKER_ADMIN" INSTANCE_ID=demo-checker \
    setsid "$RELEASE_DIR/checker" >"$DEMO_DIR/checker.log" 2>&1 </dev/null 8>&- &
CHECKER_PID=$!
wait_http checker "http://$CHECKER_ADMIN/healthz" 60 "$CHECKER_PID" "$DEMO_DIR/checker.log"
log "status page: open http://localhost:$STATUS_PORT/ (JSON: http://localhost:$STATUS_PORT/api/v1/targets)"

ready_code() {
    curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://$1/readyz" 2>/dev/null || true
}

# --------------------------------------------------------------------- show

started=$SECONDS
if [ -n "$DEMO_SECONDS" ]; then
    log "running for ${DEMO_SECONDS}s"
    while [ $((SECONDS - started)) -lt "$DEMO_SECONDS" ]; do
        sleep 2
        check_alive
        log "$(printf 't=%3ds  targets with rows: %s/%s  readyz: checker %s, sink %s' \
            "$((SECONDS - started))" "$(targets_with_rows)" "${#TARGET_NAMES[@]}" \
            "$(ready_code "$CHECKER_ADMIN")" "$(ready_code "$SINK_ADMIN")")"
    done
    echo
    echo "Final summary after ${DEMO_SECONDS}s (table probe_results):"
    summary
    echo "Expectations:"
    expectations
    have="$(targets_with_rows 2>/dev/null || true)"
    have="${have:-0}"
    if [ "$have" -eq "${#TARGET_NAMES[@]}" ]; then
        status_targets="$(curl -fsS --max-time 5 "http://$STATUS_ADDR/api/v1/targets" |
            python3 -c 'import json, sys; print(len(json.load(sys.stdin)["targets"]))' 2>/dev/null || true)"
        echo "Status page http://localhost:$STATUS_PORT/ lists ${status_targets:-0} targets"
        if [ "${status_targets:-0}" -ne "${#TARGET_NAMES[@]}" ]; then
            echo "demo: FAILED: the status page lists ${status_targets:-0} of ${#TARGET_NAMES[@]} demo targets" >&2
            tail_log "$DEMO_DIR/sink.log" 25
            exit 1
        fi
        echo "demo: OK: all ${#TARGET_NAMES[@]} demo targets have rows in probe_results"
        exit 0
    fi
    echo "demo: FAILED: only $have of ${#TARGET_NAMES[@]} demo targets have rows in probe_results" >&2
    tail_log "$DEMO_DIR/checker.log" 25
    tail_log "$DEMO_DIR/sink.log" 25
    exit 1
fi

while true; do
    check_alive
    output="$(
        printf 'healthcheck-pipeline demo  %s  (Ctrl-C to stop)\n\n' "$(date +%H:%M:%S)"
        printf 'checker  pid %-7s admin http://%s  readyz %s  log .tmp/demo/checker.log\n' \
            "$CHECKER_PID" "$CHECKER_ADMIN" "$(ready_code "$CHECKER_ADMIN")"
        printf 'sink     pid %-7s admin http://%s  readyz %s  log .tmp/demo/sink.log\n' \
            "$SINK_PID" "$SINK_ADMIN" "$(ready_code "$SINK_ADMIN")"
        printf 'status page  http://localhost:%s/   (JSON /api/v1/targets)\n' "$STATUS_PORT"
        printf 'postgres %s   broker %s\n\n' "$DB_URL" "$BROKER"
        summary
        echo "Expectations:"
        expectations
    )"
    if [ -t 1 ]; then
        printf '\033[H\033[2J'
    fi
    printf '%s\n' "$output"
    sleep 2
done
