#!/usr/bin/env bash
# Prints the Compose project name `make up`/`down`/`logs` use: COMPOSE_PROJECT_NAME (the
# shell's, else .env's, else healthcheck-pipeline), with `-standin` appended when any base
# image the stack runs is a local stand-in built by scripts/base-images.sh (label
# io.healthcheck-pipeline.standin=true). Volume names start with the project name, so a
# stand-in run (Debian's PostgreSQL 15 behind the name postgres:16, tansu behind
# apache/kafka:3.9.0) never leaves its data in the volumes the real images use later: the
# real postgres:16 refuses a version-15 data directory (docker/README.md, "Local stand-ins").
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

name=$(env_value COMPOSE_PROJECT_NAME healthcheck-pipeline)
for image in postgres:16 apache/kafka:3.9.0 prom/prometheus:v2.53.0; do
    if [[ "$(docker image inspect -f '{{ index .Config.Labels "io.healthcheck-pipeline.standin" }}' "$image" 2>/dev/null)" == true ]]; then
        echo "$name-standin"
        exit 0
    fi
done
echo "$name"
