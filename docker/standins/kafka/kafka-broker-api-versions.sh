#!/bin/sh
# The official image's tool of that name (the compose file's healthcheck). A small heap,
# not KAFKA_HEAP_OPTS: it runs every few seconds beside the broker.
exec java -Xmx64m -XX:TieredStopAtLevel=1 -XX:+UseSerialGC -cp '/opt/kafka/libs/*' \
    -Dlog4j2.configurationFile=/opt/kafka/bin/log4j2.properties \
    org.apache.kafka.tools.BrokerApiVersionsCommand "$@"
