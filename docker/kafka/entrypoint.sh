#!/bin/sh
# Writes the broker's config from the shared template (the ports of KAFKA_PORT and
# KAFKA_CONTROLLER_PORT, on 127.0.0.1: host networking), formats the storage the first
# time, then runs the broker in the foreground.
set -euf  # -f: the classpath's * is Java's wildcard, not the shell's.
home=/var/lib/kafka
data="$home/data"
conf="$home/server.properties"
sed -e "s|@KAFKA_PORT@|$KAFKA_PORT|g" \
    -e "s|@CONTROLLER_PORT@|$KAFKA_CONTROLLER_PORT|g" \
    -e "s|@DATA_DIR@|$data|g" \
    /opt/kafka/config/server.properties.in >"$conf"
opts="-cp /opt/kafka/libs/* $KAFKA_HEAP_OPTS -XX:+UseG1GC -XX:MaxGCPauseMillis=20
    -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true
    -Dlog4j.configuration=file:/opt/kafka/config/log4j.properties -Dkafka.logs.dir=$home"
if [ ! -f "$data/meta.properties" ]; then
    # shellcheck disable=SC2086 # $opts is a list of options.
    java $opts kafka.tools.StorageTool format -c "$conf" \
        -t "$(java $opts kafka.tools.StorageTool random-uuid)"
fi
# shellcheck disable=SC2086
exec java $opts kafka.Kafka "$conf"
