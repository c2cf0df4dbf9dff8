#!/usr/bin/env bash
# promtool-test.sh: checks and unit-tests the alert rules of deploy/mixin/ (run by `make test`).
#
#   1. `promtool check rules deploy/mixin/alerts.yaml` (syntax, PromQL, templates);
#   2. `promtool test rules` on every deploy/mixin/tests/*.yaml (input series -> the alerts
#      expected firing, and not firing, at given times);
#   3. every metric the rules name is registered by the services (a literal "name" in
#      services/*/src), so a renamed metric cannot leave an alert that never fires;
#   4. deploy/components/prometheus-rules/prometheusrule.yaml is what deploy/mixin/generate.py
#      makes of alerts.yaml (no drift);
#   5. compose's Prometheus config (docker/prometheus/prometheus.yml, with the rules file that
#      docker-compose.yml mounts beside it) runs in the real Prometheus of Debian's
#      `prometheus` package and reports every rule loaded and healthy on /api/v1/rules;
#   6. live: that Prometheus (1 s scrapes and evaluations) scrapes a real checker probing one
#      target that answers (the checker's own /healthz) and one that refuses (127.0.0.1:1),
#      with no broker (127.0.0.1:1): /api/v1/alerts must show HealthcheckProbeFailed pending for
#      the refusing target only, and HealthcheckCheckerNotDelivering pending (results wait, none
#      delivered), and the quorum ratio 1 and 0. The checker is target/debug/checker (built with
#      cargo when missing) unless PROMTOOL_TEST_CHECKER names a binary.
#
#   scripts/promtool-test.sh --self-test   also proves the unit tests catch broken rules
#                                          (deploy/mixin/selftest.py: each mutation of
#                                          alerts.yaml must fail them; about 30 s idle)
#
# Needs promtool and prometheus (Debian's `prometheus`, which `scripts/stack.sh install`
# installs) and python3. Exit 0 = all passed.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

MIXIN="$REPO/deploy/mixin"
self_test=0
case "${1:-}" in
"") ;;
--self-test) self_test=1 ;;
*) die "unknown argument '$1' (usage: scripts/promtool-test.sh [--self-test])" 2 ;;
esac
RULES="$MIXIN/alerts.yaml"

command -v promtool >/dev/null 2>&1 ||
    die "promtool not found: install Debian's prometheus package (scripts/stack.sh install does)"

log "promtool check rules ${RULES#"$REPO"/}"
promtool check rules "$RULES"

shopt -s nullglob
tests=("$MIXIN"/tests/*.yaml)
((${#tests[@]})) || die "no test files in deploy/mixin/tests/"
log "promtool test rules (${#tests[@]} files)"
# promtool resolves rule_files relative to each test file.
promtool test rules "${tests[@]}"

log "metrics the rules name are registered by the services"
missing=0
# Metrics a branch not merged yet adds, one name each, warned about instead of failing
# (empty: every metric the rules name must be registered).
PENDING=()
# probe_* and healthcheck_* names in the rules, not inside a recording rule's level:name:op
# (a histogram's _bucket series is its name).
mapfile -t names < <(grep -oE '(^|[^:a-z0-9_])(probe|healthcheck)_[a-z0-9_]+' "$RULES" |
    sed -E 's/^[^a-z]//; s/_bucket$//' | sort -u)
for name in "${names[@]}"; do
    if grep -rqF --include='*.rs' "\"$name\"" "$REPO/services"; then
        [[ " ${PENDING[*]} " != *" $name "* ]] ||
            log "note: $name is registered now: remove it from PENDING in ${BASH_SOURCE[0]#"$REPO"/}"
    elif [[ " ${PENDING[*]} " == *" $name "* ]]; then
        log "warning: $name is not registered yet (PENDING: added by another branch)"
    else
        log "error: $name is used by deploy/mixin/alerts.yaml but no service registers it"
        missing=$((missing + 1))
    fi
done
((missing == 0)) || die "$missing metric(s) of the rules not found in services/*/src"
log "  ${#names[@]} metrics checked: ${names[*]}"

python3 "$MIXIN/generate.py" --check

command -v prometheus >/dev/null 2>&1 ||
    die "prometheus not found: install Debian's prometheus package (scripts/stack.sh install does)"
log "compose's Prometheus config loads the rules (real prometheus $(prometheus --version 2>&1 | awk 'NR == 1 {print $3}'))"
work=$(mktemp -d "${TMPDIR:-/tmp}/promtool-test.XXXXXX")
prom_pid=""
cleanup() {
    stop_process prometheus "$prom_pid" 5
    rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$work/etc"
cp "$REPO/docker/prometheus/prometheus.yml" "$work/etc/prometheus.yml"
# The bind mounts of docker-compose.yml into /etc/prometheus/ (its config's directory).
mounts=$(grep -oE '\./[^:[:space:]]+:/etc/prometheus/[^:[:space:]]+' "$REPO/docker-compose.yml" | grep -v ':/etc/prometheus/prometheus.yml$' || true)
[[ -n "$mounts" ]] || die "docker-compose.yml mounts no rules file into /etc/prometheus/"
while IFS=: read -r src dst; do
    mkdir -p "$work/etc/$(dirname "${dst#/etc/prometheus/}")"
    cp "$REPO/${src#./}" "$work/etc/${dst#/etc/prometheus/}"
done <<<"$mounts"
promtool check config "$work/etc/prometheus.yml"
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
prometheus --config.file="$work/etc/prometheus.yml" --storage.tsdb.path="$work/data" \
    --web.listen-address="127.0.0.1:$port" >"$work/prometheus.log" 2>&1 &
prom_pid=$!
rules_json() { python3 -c 'import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=2).read().decode())' \
    "http://127.0.0.1:$port/api/v1/rules" >"$work/rules.json" 2>/dev/null; }
if ! poll --while-alive "$prom_pid" 30 0.5 rules_json; then
    tail_log "$work/prometheus.log"
    die "prometheus did not answer /api/v1/rules on 127.0.0.1:$port"
fi
# Every rule of the source is loaded (same names, same count) and none reports an error
# (health "unknown" until the first evaluation is fine).
python3 - "$RULES" "$work/rules.json" <<'PY'
import json, re, sys
src = open(sys.argv[1]).read()
want = sorted(re.findall(r"^\s+- (?:alert|record): (\S+)", src, re.M))
data = json.load(open(sys.argv[2]))["data"]["groups"]
got = sorted(r["name"] for g in data for r in g["rules"])
bad = [(r["name"], r.get("lastError")) for g in data for r in g["rules"] if r.get("health") == "err"]
if got != want or bad:
    sys.exit("promtool-test: compose's Prometheus loaded %s, expected %s; errors: %s" % (got, want, bad))
print("promtool-test: compose's Prometheus loaded all %d rules of %d groups" % (len(got), len(data)))
PY
log "live: a real checker scraped by the real Prometheus with these rules"
checker=${PROMTOOL_TEST_CHECKER:-}
if [[ -z "$checker" ]]; then
    cargo build -q -p checker --manifest-path "$REPO/Cargo.toml" || die "cargo build -p checker failed"
    checker="$(cargo metadata -q --format-version 1 --no-deps --manifest-path "$REPO/Cargo.toml" |
        python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')/debug/checker"
fi
[[ -x "$checker" ]] || die "no checker binary at $checker (PROMTOOL_TEST_CHECKER)"
stop_process prometheus "$prom_pid" 5
prom_pid=""
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
admin_port=$(free_port)
port=$(free_port)
checker_pid=""
trap 'stop_process checker "$checker_pid" 5; cleanup' EXIT
TARGETS="[{\"name\":\"answers\",\"url\":\"http://127.0.0.1:$admin_port/healthz\",\"interval\":\"1s\"},
          {\"name\":\"refuses\",\"url\":\"http://127.0.0.1:1/\",\"interval\":\"1s\"}]" \
    KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:1 ADMIN_ADDR="127.0.0.1:$admin_port" LOG_FORMAT=json SHUTDOWN_GRACE_PERIOD=1s \
    "$checker" >"$work/checker.log" 2>&1 &
checker_pid=$!
mkdir -p "$work/live"
cat >"$work/live/prometheus.yml" <<YAML
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files:
  - $RULES
scrape_configs:
  - job_name: checker
    static_configs:
      - targets: ["127.0.0.1:$admin_port"]
YAML
prometheus --config.file="$work/live/prometheus.yml" --storage.tsdb.path="$work/live/data" \
    --web.listen-address="127.0.0.1:$port" >"$work/prometheus-live.log" 2>&1 &
prom_pid=$!
live_ok() {
    python3 - "http://127.0.0.1:$port" >"$work/live.out" 2>&1 <<'PY'
import json, sys, urllib.parse, urllib.request
base = sys.argv[1]
def get(path):
    return json.load(urllib.request.urlopen(base + path, timeout=2))["data"]
alerts = {(a["labels"]["alertname"], a["labels"].get("target", "")): a["state"] for a in get("/api/v1/alerts")["alerts"]}
ratio = {r["metric"]["target"]: float(r["value"][1]) for r in
         get("/api/v1/query?query=" + urllib.parse.quote("target:probe_failing_locations:ratio"))["result"]}
want = {("HealthcheckProbeFailed", "refuses"): "pending", ("HealthcheckCheckerNotDelivering", ""): "pending"}
print("alerts:", alerts, "ratio:", ratio)
ok = all(alerts.get(k) == v for k, v in want.items()) and ("HealthcheckProbeFailed", "answers") not in alerts \
    and ("HealthcheckCheckerAbsent", "") not in alerts and ratio == {"answers": 0.0, "refuses": 1.0}
sys.exit(0 if ok else 1)
PY
}
if ! poll --while-alive "$prom_pid" 60 1 live_ok; then
    cat "$work/live.out" >&2
    tail_log "$work/checker.log" 10
    tail_log "$work/prometheus-live.log" 10
    die "live: the alerts expected from a real checker did not show (last state above)"
fi
log "  after ${POLL_WAITED}s: $(cat "$work/live.out")"
stop_process checker "$checker_pid" 5
checker_pid=""

if ((self_test)); then
    log "self-test: broken copies of alerts.yaml must fail the unit tests"
    python3 "$MIXIN/selftest.py"
fi
log "all rule checks passed"
