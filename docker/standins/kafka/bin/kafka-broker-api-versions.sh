#!/usr/bin/env bash
# Stand-in for Apache Kafka's kafka-broker-api-versions.sh: succeeds when the
# broker answers a metadata request (used as the compose healthcheck).
set -euo pipefail
server=localhost:9092
while (($#)); do
    case "$1" in
    --bootstrap-server) server=$2; shift ;;
    esac
    shift
done
timeout 10 tansu topic list --broker "tcp://${server%%,*}" >/dev/null
echo "${server%%,*} (id: 1 rack: null) -> ApiVersions answered"
