#!/usr/bin/env python3
"""Proves the promtool unit tests of deploy/mixin/tests/ catch broken rules: each mutation of
MUTATIONS is applied to a scratch copy of alerts.yaml and `promtool test rules` on the test
files must then FAIL. Run by `scripts/promtool-test.sh --self-test`. Standard library only.

Exit 0 when every mutation was caught; 1 when one survived (a rule the tests do not pin) or
no longer applies (its text is gone from alerts.yaml: update the row).
"""
import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))

CHECKER = 'job=~"checker(-.+)?"'
SINK = 'job=~"sink(-.+)?"'
# (what the mutation breaks, text of alerts.yaml, its replacement)
MUTATIONS = [
    ("quorum alert without `for`",
     "expr: target:probe_failing_locations:ratio > 0.5\n        for: 1m",
     "expr: target:probe_failing_locations:ratio > 0.5\n        for: 0m"),
    ("quorum: half counts as down", "expr: target:probe_failing_locations:ratio > 0.5",
     "expr: target:probe_failing_locations:ratio >= 0.5"),
    ("a location down when any replica fails", "max by (namespace, target, location) (probe_success",
     "min by (namespace, target, location) (probe_success"),
    ("locations not told apart", "max by (namespace, target, location) (probe_success",
     "max by (namespace, target) (probe_success"),
    ("location alert also during a quorum failure",
     "          unless on (namespace, target)\n          target:probe_failing_locations:ratio > 0.5\n", ""),
    ("blackbox_exporter's probe_success counted", "probe_success{%s}" % CHECKER, "probe_success"),
    ("namespaces not told apart", "max by (namespace, target, location) (probe_success",
     "max by (target, location) (probe_success"),
    ("certificate warning at 14 days", "< 21 * 86400", "< 14 * 86400"),
    ("certificate warning below 7 days too", ">= 7 * 86400", "> 0"),
    ("certificate: latest instead of earliest", "min by (namespace, target) (probe_ssl_earliest_cert_expiry",
     "max by (namespace, target) (probe_ssl_earliest_cert_expiry"),
    ("checker down: any job", "up{%s} == 0" % CHECKER, "up == 0"),
    ("checker absent only when no series", "absent(up{%s} == 1)" % CHECKER, "absent(up{%s})" % CHECKER),
    ("not probing: standby replicas too",
     "healthcheck_checker_targets{%s} > 0\n          and on (namespace, job, instance)\n" % CHECKER, ""),
    ("lateness: median instead of p99", "histogram_quantile(0.99,", "histogram_quantile(0.5,"),
    ("skipped slots remembered 30 minutes", "skipped_slots_total{%s}[15m]" % CHECKER,
     "skipped_slots_total{%s}[30m]" % CHECKER),
    ("shutdown drops alerted", ', reason="buffer_full"', ""),
    ("not delivering while idle",
     "          and\n          healthcheck_checker_results_waiting{%s} > 0\n" % CHECKER, ""),
    ("sink not ready after 1 minute", "last_progress_timestamp_seconds{%s} > 120" % SINK,
     "last_progress_timestamp_seconds{%s} > 60" % SINK),
    ("no partitions when one sink has none", "sum by (namespace) (healthcheck_sink_partitions_assigned",
     "min by (namespace) (healthcheck_sink_partitions_assigned"),
    ("lag of a partition counted twice", "max by (namespace, topic, partition)", "sum by (namespace, topic, partition)"),
    ("dead letters remembered 30 minutes", "dead_letters_total{%s}[10m]" % SINK,
     "dead_letters_total{%s}[30m]" % SINK),
    ("rollup lag of any job", "max by (namespace) (healthcheck_sink_rollup_lag_seconds{%s})" % SINK,
     "max by (namespace) (healthcheck_sink_rollup_lag_seconds)"),
    ("rollup lag alert without `for`", "> 600\n        for: 10m", "> 600\n        for: 0m"),
    ("incidents summed over the sinks", "max by (namespace) (healthcheck_sink_open_incidents",
     "sum by (namespace) (healthcheck_sink_open_incidents"),
]


def main():
    promtool = shutil.which("promtool")
    if not promtool:
        sys.exit("mixin self-test: promtool not found (Debian's prometheus package)")
    with open(os.path.join(HERE, "alerts.yaml")) as f:
        source = f.read()
    failures = 0
    tmp = tempfile.mkdtemp(prefix="mixin-selftest-")
    try:
        for n, (title, old, new) in enumerate(MUTATIONS):
            if old not in source:
                print("  SELF-TEST BROKEN  %s: %r not in alerts.yaml" % (title, old))
                failures += 1
                continue
            copy = os.path.join(tmp, str(n))
            shutil.copytree(HERE, copy)
            with open(os.path.join(copy, "alerts.yaml"), "w") as f:
                f.write(source.replace(old, new))
            tests = sorted(os.path.join(copy, "tests", t) for t in os.listdir(os.path.join(copy, "tests"))
                           if t.endswith(".yaml"))
            proc = subprocess.run([promtool, "test", "rules"] + tests, capture_output=True, text=True,
                                  stdin=subprocess.DEVNULL)
            failed = [line.strip().rstrip(",") for line in (proc.stdout + proc.stderr).splitlines()
                      if line.strip().startswith("name:")]
            if proc.returncode == 0:
                failures += 1
                print("  SURVIVED  %s: the tests still pass" % title)
            else:
                print("  caught    %-45s %s" % (title, failed[0] if failed else "(promtool exit %d)" % proc.returncode))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if failures:
        print("mixin self-test FAILED: %d of %d mutations not caught" % (failures, len(MUTATIONS)))
        return 1
    print("mixin self-test passed: %d of %d broken copies of alerts.yaml fail the tests" % (len(MUTATIONS), len(MUTATIONS)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
