#!/bin/sh
# The official image's start: every KAFKA_* variable but the JVM's becomes a setting
# (KAFKA_LOG_DIRS: log.dirs; "__" stands for "_", "___" for "-"), and a new data
# directory is formatted with CLUSTER_ID.
set -eu
config=/opt/kafka/config/server.properties
mkdir -p /opt/kafka/config
env | grep '^KAFKA_' | while IFS='=' read -r name value; do
    case "$name" in
        KAFKA_HEAP_OPTS | KAFKA_OPTS | KAFKA_JVM_PERFORMANCE_OPTS) continue ;;
    esac
    key=$(printf '%s' "${name#KAFKA_}" | tr 'A-Z' 'a-z' | sed 's/___/-/g; s/__/@/g; s/_/./g; s/@/_/g')
    printf '%s=%s\n' "$key" "$value"
done > "$config"
# shellcheck disable=SC2086 # the JVM options are words, as in kafka-run-class.sh
set -- ${KAFKA_HEAP_OPTS:-} ${KAFKA_OPTS:-} -cp '/opt/kafka/libs/*' \
    -Dlog4j2.configurationFile=/opt/kafka/bin/log4j2.properties
java "$@" kafka.tools.StorageTool format -t "$CLUSTER_ID" -c "$config" --ignore-formatted
exec java "$@" kafka.Kafka "$config"
