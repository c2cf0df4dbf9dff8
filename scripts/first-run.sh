#!/usr/bin/env bash
# first-run.sh: how long a new user's first `make demo` and first `make test` take (issue #15,
# goal 6), measured as a new user runs them: a fresh clone of HEAD, nothing built, no test
# broker installed. Used by `make bench` (scenario `firstrun`); runs alone too.
#
#   scripts/first-run.sh [demo] [test]     (default: both)
#
# What is fresh: the clone, its target/ (CARGO_TARGET_DIR is unset), the tansu build directory
# and binary (TANSU_BUILD_DIR, TANSU_BIN inside the clone), the ports. What is not: the Rust
# toolchain, the Debian packages (PostgreSQL, promtool) and cargo's package cache, which a
# fresh machine fills from the crate registry first (downloads are not timed here).
#
# Prints one `key=value` line per figure on stdout (seconds), progress on stderr:
#   demo_s          the first `DEMO_SECONDS=$FIRST_RUN_DEMO_SECONDS make demo`, whole
#   demo_build_s    of which the release build (demo.sh's "built in")
#   demo_again_s    the same command once more (what a later run costs)
#   broker_build_s  `scripts/stack.sh install` building tansu (the first step of `make test`)
#   test_s          the first `make test`, whole, broker build included (a later `make test`
#                   costs what its tests take to run, the figure minus both builds)
#
# Environment: FIRST_RUN_DIR (default: a new directory under /tmp, removed at the end unless
# FIRST_RUN_KEEP=1), FIRST_RUN_DEMO_SECONDS (default 20), TANSU_OPT_LEVEL (passed on).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STEPS=("$@")
[ ${#STEPS[@]} -gt 0 ] || STEPS=(demo test)
DEMO_SECONDS_RUN="${FIRST_RUN_DEMO_SECONDS:-20}"
DIR="${FIRST_RUN_DIR:-$(mktemp -d /tmp/first-run.XXXXXX)}"

say() { echo "[first-run $(date +%H:%M:%S)] $*" >&2; }
cleanup() {
    if [ -d "$DIR/clone" ]; then
        (cd "$DIR/clone" && PG_PORT=54361 BROKER_PORT=19121 scripts/stack.sh down >/dev/null 2>&1) || true
    fi
    [ "${FIRST_RUN_KEEP:-0}" = 1 ] || rm -rf "$DIR"
}
trap cleanup EXIT

# Seconds (one decimal) that "$@" took; its output goes to $log.
timed() {
    local log=$1 t0 rc=0
    shift
    t0=$(date +%s.%N)
    "$@" >"$log" 2>&1 || rc=$?
    awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f\n", b - a }'
    return $rc
}

say "cloning HEAD into $DIR/clone"
git clone -q "$REPO" "$DIR/clone"
cd "$DIR/clone"
unset CARGO_TARGET_DIR
export TANSU_BUILD_DIR="$DIR/tansu-build" TANSU_BIN="$DIR/tansu-bin/tansu"

for step in "${STEPS[@]}"; do
    case "$step" in
    demo)
        say "first make demo (DEMO_SECONDS=$DEMO_SECONDS_RUN), nothing built yet"
        s=$(DEMO_SECONDS=$DEMO_SECONDS_RUN DEMO_PG_PORT=54360 timed "$DIR/demo.log" make demo) || {
            tail -n 30 "$DIR/demo.log" >&2
            exit 1
        }
        echo "demo_s=$s"
        built=$(sed -n 's/.*built in \([0-9]*\)s.*/\1/p' "$DIR/demo.log" | tail -n 1)
        [ -z "$built" ] || echo "demo_build_s=$built"
        say "make demo again"
        s=$(DEMO_SECONDS=$DEMO_SECONDS_RUN DEMO_PG_PORT=54360 timed "$DIR/demo2.log" make demo) || {
            tail -n 30 "$DIR/demo2.log" >&2
            exit 1
        }
        echo "demo_again_s=$s"
        ;;
    test)
        export PG_PORT=54361 BROKER_PORT=19121
        say "building the test broker (make test's first step) into $TANSU_BIN"
        b=$(timed "$DIR/broker.log" scripts/stack.sh install) || {
            tail -n 30 "$DIR/broker.log" >&2
            exit 1
        }
        echo "broker_build_s=$b"
        say "first make test (broker built ${b}s ago)"
        s=$(timed "$DIR/test.log" make test) || {
            tail -n 40 "$DIR/test.log" >&2
            exit 1
        }
        echo "test_s=$(awk -v a="$b" -v b="$s" 'BEGIN { printf "%.1f\n", a + b }')"
        ;;
    *)
        echo "first-run.sh: unknown step '$step' (demo, test)" >&2
        exit 2
        ;;
    esac
done
