#!/usr/bin/env bash
# Subset of Apache Kafka's kafka-topics.sh for the tansu stand-in:
#   --bootstrap-server H:P --create --topic T [--partitions N] [--replication-factor R] [--if-not-exists] [--config k=v]
#   --bootstrap-server H:P --list
#   --bootstrap-server H:P --describe [--topic T]
set -euo pipefail
server=localhost:9092 action="" topic="" partitions=1 if_not_exists=0 configs=()
while (($#)); do
    case "$1" in
    --bootstrap-server) server=$2; shift ;;
    --create | --list | --describe | --delete) action=${1#--} ;;
    --topic) topic=$2; shift ;;
    --partitions) partitions=$2; shift ;;
    --replication-factor) shift ;;
    --if-not-exists) if_not_exists=1 ;;
    --if-exists) ;;
    --config) configs+=(--config "$2"); shift ;;
    --command-config) shift ;;
    *) echo "kafka-topics.sh (stand-in): unsupported option $1" >&2; exit 1 ;;
    esac
    shift
done
broker="tcp://${server%%,*}"
topics() { tansu topic list --broker "$broker" | jq -r '.[] | .name // empty'; }
case "$action" in
create)
    [[ -n "$topic" ]] || { echo "--topic is required" >&2; exit 1; }
    if topics | grep -qxF "$topic"; then
        ((if_not_exists)) && exit 0
        echo "Error while executing topic command : Topic '$topic' already exists." >&2
        exit 1
    fi
    tansu topic create "$topic" --partitions "$partitions" --broker "$broker" "${configs[@]}" >/dev/null
    echo "Created topic $topic."
    ;;
list) topics ;;
describe)
    tansu topic list --broker "$broker" | jq -r --arg t "$topic" \
        '.[] | select($t == "" or .name == $t) | "Topic: \(.name)\tPartitionCount: \(.partitions | length)\tReplicationFactor: 1"'
    ;;
delete) tansu topic delete "$topic" --broker "$broker" ;;
*) echo "one of --create, --list, --describe, --delete is required" >&2; exit 1 ;;
esac
