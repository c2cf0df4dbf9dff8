#!/usr/bin/env bash
# Benchmarks (`make bench`): checker CPU per probe against blackbox_exporter, capacity,
# scheduling precision, memory, sink throughput against a raw COPY, end-to-end latency,
# image sizes and start-up times. Prints a table and writes BENCHMARKS.md.
#
# Installs what is missing (nginx, wrk, prometheus-blackbox-exporter, linux-perf, rt-tests from Debian;
# PostgreSQL and tansu through scripts/stack.sh), builds the release binaries, starts its own
# PostgreSQL + broker (other ports than the test stack), runs services/bench, and stops
# everything it started on exit, Ctrl-C included. Not part of `make test`.
#
# Environment:
#   BENCH_QUICK=1        1 repeat and smaller sizes (report in .tmp/bench/, BENCHMARKS.md untouched)
#   BENCH_ONLY=a,b       some scenarios: images cpu capacity precision memory startup sink write profile fleet status firstrun
#                        (firstrun, a fresh clone's first make demo and make test, runs in full mode only: ~30 min)
#   BENCH_FIRST_RUN_STEPS=demo  firstrun times the first make demo only (~6 min)
#   BENCH_REPEATS=N      repeats per figure (default 3; quick 1)
#   BENCH_SINK_ROWS=N    messages pre-filled for the sink throughput (default 1000000; quick 200000)
#   BENCH_FLEET_TARGETS=N  targets of the fleet scenario (default 100000; quick 20000)
#   BENCH_STATUS_TARGETS=N targets of the status scenario's history (default 1000; quick 100)
#   BENCH_STATUS_DAYS=N  days of that history at one slot per 60 s (default 7: 10.08 M rows)
#   BENCH_KEEP_STATUS_DB=1  keep the status scenario's database (several GB) afterwards
#   BENCH_STATUS_ROLLUP_LIMIT=S  stop the status scenario's rollup backfill after S seconds (default 3600)
#   BENCH_PROFILE=0|1    perf profiles (default: on in a full run when perf works)
#   BENCH_OUT=PATH       where to write the report
#   BENCH_BASELINE_BIN_DIR=DIR  memory: also measure the checker in DIR (e.g. main's release build)
#                        in the same repeats, side by side
#   BENCH_SINK_ENV=K=V,K=V  sink: extra variables for every sink the harness starts (experiments)
#   BENCH_SINK_EXTRAS=0  sink: skip the mock-cluster repeats and the batch-size variants (experiments)
#   BENCH_PG_PORT        PostgreSQL port (default 54340)
#   BENCH_BROKER_PORT    broker port (default 19100)
#   BENCH_KEEP_STACK=1   leave PostgreSQL and the broker running afterwards
#   BENCH_TANSU_MIN_OPT_LEVEL=N  rebuild an installed tansu built below opt-level N (default 3,
#                        tansu's release profile; 0 measures on the test broker's build)
#   BENCH_NICE=N         run everything measured at nice N (e.g. -10 on a machine shared with other
#                        work, so that it skews the figures less; the report says so)
#   CHECKER_IMAGE, SINK_IMAGE  image names whose sizes are reported (default: from .env)
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO"
BENCH_PG_PORT="${BENCH_PG_PORT:-54340}"
BENCH_BROKER_PORT="${BENCH_BROKER_PORT:-19100}"
WORK="$REPO/.tmp/bench"
PIDS="$WORK/pids"
CARGO="${CARGO:-cargo}"
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"

# ------------------------------------------------------------------- install

install_tools() {
    local missing=()
    command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx-light)
    command -v wrk >/dev/null 2>&1 || missing+=(wrk)
    command -v prometheus-blackbox-exporter >/dev/null 2>&1 || missing+=(prometheus-blackbox-exporter)
    command -v perf >/dev/null 2>&1 || missing+=(linux-perf)
    command -v cyclictest >/dev/null 2>&1 || missing+=(rt-tests)
    if [ "${#missing[@]}" -gt 0 ]; then
        # linux-perf and rt-tests are optional: without them the profiles and the machine's
        # wake-up latency (cyclictest, section 3) are skipped.
        local required=() p
        for p in "${missing[@]}"; do case "$p" in linux-perf | rt-tests) ;; *) required+=("$p") ;; esac; done
        apt_install "${missing[@]}" || [ "${#required[@]}" -eq 0 ] || apt_install "${required[@]}"
    fi
    for tool in wrk prometheus-blackbox-exporter; do
        command -v "$tool" >/dev/null 2>&1 || die "$tool still missing after install"
    done
    # tansu built as its release profile has it (a TANSU_OPT_LEVEL=1 build is rebuilt): the
    # broker's CPU and serving rate are in the figures. BENCH_TANSU_MIN_OPT_LEVEL=0 keeps the
    # test broker's opt-level 0 build (no 11-minute rebuild; the report names the level).
    TANSU_MIN_OPT_LEVEL="${BENCH_TANSU_MIN_OPT_LEVEL:-3}" scripts/stack.sh install
}

# ------------------------------------------------------------------- cleanup

# Stops what the harness recorded in $PIDS (by pid, and only processes of the kinds it
# starts), then our PostgreSQL and broker.
cleanup() {
    local rc=$? pid comm alive=()
    trap - EXIT INT TERM
    if [ -f "$PIDS" ]; then
        while read -r pid; do
            if [ -z "$pid" ] || [ ! -r "/proc/$pid/comm" ]; then continue; fi
            comm="$(cat "/proc/$pid/comm" 2>/dev/null || true)"
            case "$comm" in
                checker | sink | nginx | prometheus-bla* | wrk | perf)
                    kill -TERM "$pid" 2>/dev/null && alive+=("$pid") ;;
            esac
        done <"$PIDS"
        if [ "${#alive[@]}" -gt 0 ]; then
            log "stopping ${#alive[@]} process(es) left by the harness"
            sleep 3
            for pid in "${alive[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
        fi
        rm -f "$PIDS"
    fi
    if [ -z "${BENCH_KEEP_STACK:-}" ]; then
        PG_PORT="$BENCH_PG_PORT" BROKER_PORT="$BENCH_BROKER_PORT" scripts/stack.sh down || true
    fi
    exit "$rc"
}

# ---------------------------------------------------------------------- main

install_tools
log "building the release binaries"
"$CARGO" build --release --locked -p checker -p sink -p bench

mkdir -p "$WORK"
: >"$PIDS"
trap cleanup EXIT
trap 'exit 130' INT TERM
PG_PORT="$BENCH_PG_PORT" BROKER_PORT="$BENCH_BROKER_PORT" scripts/stack.sh up

BENCH_BROKER_PID="$(cat "$REPO/.tmp/broker/$BENCH_BROKER_PORT/tansu.pid" 2>/dev/null || true)"
CHECKER_IMAGE="$(env_value CHECKER_IMAGE healthcheck-pipeline/checker:local)"
SINK_IMAGE="$(env_value SINK_IMAGE healthcheck-pipeline/sink:local)"
export BENCH_REPO="$REPO" BENCH_WORK_DIR="$WORK" BENCH_PIDS_FILE="$PIDS" BENCH_BIN_DIR="$REPO/target/release"
export BENCH_DATABASE_URL="postgres://healthcheck:healthcheck@127.0.0.1:$BENCH_PG_PORT/healthcheck"
export BENCH_KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:$BENCH_BROKER_PORT" BENCH_BROKER_PID
export CHECKER_IMAGE SINK_IMAGE
if [ -n "${BENCH_NICE:-}" ]; then
    # Our PostgreSQL (postmaster and backends) and broker, every thread; the harness and
    # what it starts inherit the value from `nice`.
    pg_pid="$(head -n 1 "$(find "$REPO/.tmp/pg/$BENCH_PG_PORT" /tmp/healthcheck-stack-*/pg/"$BENCH_PG_PORT" \
        -maxdepth 2 -name postmaster.pid 2>/dev/null | head -n 1)" 2>/dev/null || true)"
    pids=("$BENCH_BROKER_PID")
    if [ -n "$pg_pid" ]; then
        pids+=("$pg_pid")
        mapfile -t -O "${#pids[@]}" pids < <(pgrep -P "$pg_pid")
    fi
    for pid in "${pids[@]}"; do
        for task in /proc/"$pid"/task/*; do
            if [ -e "$task" ]; then renice -n "$BENCH_NICE" -p "${task##*/}" >/dev/null 2>&1 || true; fi
        done
    done
    nice -n "$BENCH_NICE" "$REPO/target/release/bench"
else
    "$REPO/target/release/bench"
fi
