#!/usr/bin/env bash
# Local backing services for oddstream development, tests and CI:
#   * Apache Kafka 3.9.1 (Scala 2.13), single-node KRaft broker+controller,
#     jars fetched from Maven Central via scripts/kafka/pom.xml
#   * Redis (Debian's redis-server), no persistence
# Everything binds to 127.0.0.1. State lives in the git-ignored .cache/ folder
# at the repo root:
#   .cache/kafka/libs/       broker jars (fetched once; ~/.m2 caches too)
#   .cache/services/         pid files, ports, logs, generated config, data
#
# Usage:
#   scripts/services.sh up            start what is missing, print env lines
#   scripts/services.sh up cluster    the same, plus a Redis Cluster (three masters, three
#                                     replicas: scripts/redis-cluster.sh), whose env line
#                                     ODDSTREAM_REDIS_CLUSTER=redis://127.0.0.1:<port> follows
#   scripts/services.sh env           print env lines for running services
#   scripts/services.sh down          stop what `up`/`start` started
#   scripts/services.sh status        human-readable state (stderr)
#   scripts/services.sh kill  kafka|redis   SIGKILL (simulate a crash)
#   scripts/services.sh start kafka|redis   start again on the recorded port;
#                                           Kafka keeps its data (no reformat)
#   scripts/services.sh stop  kafka|redis   graceful stop (TERM, then KILL)
#   scripts/services.sh restart kafka|redis graceful stop + start
#   scripts/services.sh jars          fetch Kafka's jars (once), print their folder
#                                     (the Kafka image is built from them: docker/)
#
# stdout of `up` and `env` is exactly (eval-able):
#   ODDSTREAM_KAFKA=127.0.0.1:<port>
#   ODDSTREAM_REDIS=redis://127.0.0.1:<port>/0
#   ODDSTREAM_MYSQL=mysql://oddstream:oddstream@127.0.0.1:<port>/oddstream
# (MariaDB is scripts/mariadb.sh's: port ODDSTREAM_MYSQL_PORT, 13306 by default)
# e.g.   set -a; eval "$(scripts/services.sh up)"; set +a
# All other output goes to stderr.
#
# Environment:
#   ODDSTREAM_KAFKA / ODDSTREAM_REDIS / ODDSTREAM_REDIS_CLUSTER
#                                       externally provided service: not started,
#                                       value echoed back unchanged
#   ODDSTREAM_KAFKA_PORT (19092), ODDSTREAM_KAFKA_CONTROLLER_PORT (port+1),
#   ODDSTREAM_REDIS_PORT (16379)        ports used when starting
#   ODDSTREAM_REDIS_CLUSTER_PORT (17400) first of the six cluster nodes' ports (up cluster)
#   ODDSTREAM_KAFKA_TIMEOUT (90), ODDSTREAM_REDIS_TIMEOUT (20)  readiness, s
#   ODDSTREAM_KAFKA_HEAP_OPTS (-Xmx512M -Xms256M)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
KAFKA_SUPPORT="$ROOT/scripts/kafka"
CACHE="$ROOT/.cache"
LIBS="$CACHE/kafka/libs"
SVC="$CACHE/services"
KAFKA_DIR="$SVC/kafka"            # generated config
KAFKA_DATA="$SVC/kafka-data"      # log.dirs (KRaft metadata + topics)
KAFKA_LOG="$SVC/kafka.log"        # broker stdout/stderr (log4j console)
REDIS_LOG="$SVC/redis.log"

KAFKA_VERSION="3.9.1"
KAFKA_READY_LINE="Kafka Server started"

log() { printf '[services] %s\n' "$*" >&2; }
die() { printf '[services] ERROR: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------- helpers ---

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"
    elif command -v sudo >/dev/null 2>&1; then sudo -n "$@"
    else die "need root (or sudo) to run: $*"
    fi
}

apt_install() {
    command -v apt-get >/dev/null 2>&1 || die "apt-get not found; install $* yourself"
    log "installing $* with apt-get ..."
    {
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q \
        && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@"
    } >&2 || die "apt-get install $* failed"
}

port_open() {  # port_open PORT -> 0 if something accepts on 127.0.0.1:PORT
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

read_file() { [ -s "$1" ] && cat "$1" || true; }

# pid_alive NAME -> prints pid and returns 0 if our recorded process lives
pid_alive() {
    local name=$1 pid pattern cmdline
    pid="$(read_file "$SVC/$name.pid")"
    [ -n "$pid" ] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    # guard against pid reuse: check the command line
    case $name in
        kafka) pattern='kafka.Kafka' ;;
        redis) pattern='redis-server' ;;
    esac
    cmdline="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null || true)"
    case $cmdline in *"$pattern"*) ;; *) return 1 ;; esac
    printf '%s\n' "$pid"
}

wait_gone() {  # wait_gone PID SECONDS
    local pid=$1 deadline=$((SECONDS + $2))
    local state
    while kill -0 "$pid" 2>/dev/null; do
        # a zombie (parent not reaping) is as good as gone
        state="$(sed -e 's/^.*) //' "/proc/$pid/stat" 2>/dev/null | cut -c1 || true)"
        [ "$state" != Z ] || return 0
        [ "$SECONDS" -lt "$deadline" ] || return 1
        sleep 0.2
    done
}

# spawn LOGFILE CMD... : start CMD detached (own session, stdin /dev/null,
# stdout+stderr to LOGFILE) with every other inherited descriptor closed, so
# that a caller doing "$(services.sh up)" (or holding any pipe) never waits on
# the daemon. Sets SPAWNED_PID (setsid does not fork here, so it is CMD's pid).
spawn() {
    local logfile=$1; shift
    (
        for fd in "/proc/$BASHPID/fd"/*; do
            fd=${fd##*/}
            case $fd in 0|1|2) ;; *) eval "exec $fd>&-" 2>/dev/null || true ;; esac
        done
        exec setsid "$@" </dev/null >"$logfile" 2>&1
    ) &
    SPAWNED_PID=$!
}

# start_failed NAME LOG LINES PID WHY: a service did not start: say WHY with the end of
# its log, kill PID (empty: it has exited already), forget its pid file and exit 1.
start_failed() {
    local name=$1 logfile=$2 lines=$3 pid=$4 why=$5
    log "$why; last lines of ${logfile#"$ROOT"/}:"
    tail -n "$lines" "$logfile" >&2 || true
    if [ -n "$pid" ]; then kill -KILL "$pid" 2>/dev/null || true; fi
    rm -f "$SVC/$name.pid"
    exit 1
}

lock() {
    mkdir -p "$SVC"
    if command -v flock >/dev/null 2>&1; then
        exec 9>"$SVC/.lock"
        flock -w 300 9 || die "could not lock $SVC/.lock"
    fi
}

kafka_port() {
    local p; p="$(read_file "$SVC/kafka.port")"
    printf '%s\n' "${p:-${ODDSTREAM_KAFKA_PORT:-19092}}"
}
kafka_controller_port() {
    local p; p="$(read_file "$SVC/kafka.controller_port")"
    printf '%s\n' "${p:-${ODDSTREAM_KAFKA_CONTROLLER_PORT:-$(( $(kafka_port) + 1 ))}}"
}
redis_port() {
    local p; p="$(read_file "$SVC/redis.port")"
    printf '%s\n' "${p:-${ODDSTREAM_REDIS_PORT:-16379}}"
}

# ------------------------------------------------------------------ kafka ---

kafka_fetch_jars() {
    local stamp="$LIBS/.complete" want
    want="kafka-$KAFKA_VERSION $(cksum <"$KAFKA_SUPPORT/pom.xml")"
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
        return 0
    fi
    command -v mvn >/dev/null 2>&1 || apt_install maven
    log "fetching Kafka $KAFKA_VERSION jars with Maven into ${LIBS#"$ROOT"/} ..."
    local tmp="$CACHE/kafka/libs.tmp.$$"
    rm -rf "$tmp"; mkdir -p "$tmp"
    # (Maven 3.8 prints stray ANSI resets even with -q -B: strip them.)
    if ! mvn -q -B -Dstyle.color=never -f "$KAFKA_SUPPORT/pom.xml" \
            org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy-dependencies \
            -DincludeScope=runtime -DoutputDirectory="$tmp" 2>&1 \
            | sed -e 's/\x1b\[[0-9;]*m//g' -e '/^$/d' >&2; then
        rm -rf "$tmp"
        die "mvn dependency:copy-dependencies failed (is Maven Central reachable?)"
    fi
    ls "$tmp"/kafka_2.13-"$KAFKA_VERSION".jar >/dev/null 2>&1 || { rm -rf "$tmp"; die "kafka jar missing after fetch"; }
    printf '%s\n' "$want" >"$tmp/.complete"
    rm -rf "$LIBS"
    mv "$tmp" "$LIBS"
    log "fetched $(find "$LIBS" -name "*.jar" | wc -l) jars"
}

kafka_java() {  # kafka_java MAIN ARGS... (foreground)
    java -cp "$LIBS/*" \
        -Dlog4j.configuration="file:$KAFKA_SUPPORT/log4j.properties" \
        -Dkafka.logs.dir="$SVC" \
        "$@"
}

kafka_write_config() {
    local port=$1 cport=$2
    mkdir -p "$KAFKA_DIR"
    sed -e "s|@KAFKA_PORT@|$port|g" \
        -e "s|@CONTROLLER_PORT@|$cport|g" \
        -e "s|@DATA_DIR@|$KAFKA_DATA|g" \
        "$KAFKA_SUPPORT/server.properties.in" >"$KAFKA_DIR/server.properties"
}

kafka_format() {
    local id
    # Kafka cluster ids are 16 random bytes, URL-safe base64 without padding.
    # Avoid a leading '-' (it would parse as a command-line option).
    while :; do
        id="$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')"
        case $id in -*) ;; *) break ;; esac
    done
    rm -rf "$KAFKA_DATA"
    mkdir -p "$KAFKA_DATA"
    log "formatting Kafka storage (cluster id $id)"
    kafka_java kafka.tools.StorageTool format -t "$id" \
        -c "$KAFKA_DIR/server.properties" >&2 \
        || die "kafka StorageTool format failed"
}

# kafka_start fresh|keep
kafka_start() {
    local mode=$1 pid port cport
    if pid="$(pid_alive kafka)"; then
        log "kafka already running (pid $pid, port $(kafka_port))"
        return 0
    fi
    command -v java >/dev/null 2>&1 || apt_install default-jre-headless
    kafka_fetch_jars

    if [ "$mode" = fresh ]; then
        port="${ODDSTREAM_KAFKA_PORT:-19092}"
        cport="${ODDSTREAM_KAFKA_CONTROLLER_PORT:-$((port + 1))}"
    else
        port="$(kafka_port)"; cport="$(kafka_controller_port)"
    fi
    local p
    for p in "$port" "$cport"; do
        ! port_open "$p" || die "port $p on 127.0.0.1 is already in use; set ODDSTREAM_KAFKA_PORT / ODDSTREAM_KAFKA_CONTROLLER_PORT, or ODDSTREAM_KAFKA to use an existing broker"
    done

    kafka_write_config "$port" "$cport"
    if [ "$mode" = fresh ] || [ ! -f "$KAFKA_DATA/meta.properties" ]; then
        kafka_format
    else
        log "reusing Kafka data in ${KAFKA_DATA#"$ROOT"/}"
    fi
    printf '%s\n' "$port" >"$SVC/kafka.port"
    printf '%s\n' "$cport" >"$SVC/kafka.controller_port"

    if [ -f "$KAFKA_LOG" ]; then mv -f "$KAFKA_LOG" "$KAFKA_LOG.prev"; fi
    log "starting Kafka $KAFKA_VERSION on 127.0.0.1:$port (controller $cport)"
    # shellcheck disable=SC2086
    spawn "$KAFKA_LOG" java -cp "$LIBS/*" \
        ${ODDSTREAM_KAFKA_HEAP_OPTS:--Xmx512M -Xms256M} \
        -server -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
        -XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent \
        -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true \
        -Dlog4j.configuration="file:$KAFKA_SUPPORT/log4j.properties" \
        -Dkafka.logs.dir="$SVC" \
        kafka.Kafka "$KAFKA_DIR/server.properties"
    pid=$SPAWNED_PID
    printf '%s\n' "$pid" >"$SVC/kafka.pid"

    local timeout="${ODDSTREAM_KAFKA_TIMEOUT:-90}" deadline
    deadline=$((SECONDS + timeout))
    until grep -q "$KAFKA_READY_LINE" "$KAFKA_LOG" 2>/dev/null; do
        if ! kill -0 "$pid" 2>/dev/null; then
            start_failed kafka "$KAFKA_LOG" 40 "" "Kafka exited during start-up"
        fi
        if [ "$SECONDS" -ge "$deadline" ]; then
            start_failed kafka "$KAFKA_LOG" 40 "$pid" "Kafka not ready after ${timeout}s"
        fi
        sleep 0.2
    done
    log "kafka ready (pid $pid)"
}

# ------------------------------------------------------------------ redis ---

# redis_start fresh|keep  (fresh: port from env/default; keep: recorded port)
redis_start() {
    local mode=$1 pid port
    if pid="$(pid_alive redis)"; then
        log "redis already running (pid $pid, port $(redis_port))"
        return 0
    fi
    if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
        apt_install redis-server
    fi
    if [ "$mode" = fresh ]; then port="${ODDSTREAM_REDIS_PORT:-16379}"
    else port="$(redis_port)"
    fi
    ! port_open "$port" || die "port $port on 127.0.0.1 is already in use; set ODDSTREAM_REDIS_PORT, or ODDSTREAM_REDIS to use an existing server"
    printf '%s\n' "$port" >"$SVC/redis.port"

    if [ -f "$REDIS_LOG" ]; then mv -f "$REDIS_LOG" "$REDIS_LOG.prev"; fi
    log "starting redis-server on 127.0.0.1:$port"
    spawn "$REDIS_LOG" redis-server --bind 127.0.0.1 --port "$port" \
        --save '' --appendonly no --daemonize no \
        --dir "$SVC" --protected-mode yes --loglevel notice
    pid=$SPAWNED_PID
    printf '%s\n' "$pid" >"$SVC/redis.pid"

    local timeout="${ODDSTREAM_REDIS_TIMEOUT:-20}" deadline
    deadline=$((SECONDS + timeout))
    until [ "$(redis-cli -h 127.0.0.1 -p "$port" ping 2>/dev/null)" = PONG ]; do
        if ! kill -0 "$pid" 2>/dev/null || [ "$SECONDS" -ge "$deadline" ]; then
            start_failed redis "$REDIS_LOG" 20 "$pid" "redis not ready"
        fi
        sleep 0.1
    done
    log "redis ready (pid $pid)"
}

# ------------------------------------------------------------ stop / kill ---

svc_stop() {  # svc_stop NAME  (TERM, wait, then KILL)
    local name=$1 pid
    if ! pid="$(pid_alive "$name")"; then
        rm -f "$SVC/$name.pid"
        return 0
    fi
    log "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    if ! wait_gone "$pid" "$([ "$name" = kafka ] && echo 45 || echo 15)"; then
        log "$name did not stop in time; sending KILL"
        kill -KILL "$pid" 2>/dev/null || true
        wait_gone "$pid" 10 || die "could not kill $name (pid $pid)"
    fi
    rm -f "$SVC/$name.pid"
}

svc_kill() {  # svc_kill NAME  (SIGKILL: crash simulation)
    local name=$1 pid
    if ! pid="$(pid_alive "$name")"; then
        log "$name is not running"
        rm -f "$SVC/$name.pid"
        return 0
    fi
    log "killing $name (pid $pid) with SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    wait_gone "$pid" 10 || die "could not kill $name (pid $pid)"
    rm -f "$SVC/$name.pid"
}

# -------------------------------------------------------------------- env ---

print_kafka() { printf 'ODDSTREAM_KAFKA=%q\n' "$1"; }
print_redis() { printf 'ODDSTREAM_REDIS=%q\n' "$1"; }

cmd_env() {
    local rc=0
    if [ -n "${ODDSTREAM_KAFKA:-}" ]; then print_kafka "$ODDSTREAM_KAFKA"
    elif pid_alive kafka >/dev/null; then print_kafka "127.0.0.1:$(kafka_port)"
    else log "kafka is not running (run: scripts/services.sh up)"; rc=1
    fi
    if [ -n "${ODDSTREAM_REDIS:-}" ]; then print_redis "$ODDSTREAM_REDIS"
    elif pid_alive redis >/dev/null; then print_redis "redis://127.0.0.1:$(redis_port)/0"
    else log "redis is not running (run: scripts/services.sh up)"; rc=1
    fi
    "$ROOT/scripts/mariadb.sh" env || rc=1
    if [ -n "${ODDSTREAM_REDIS_CLUSTER:-}" ]; then
        printf 'ODDSTREAM_REDIS_CLUSTER=%q\n' "$ODDSTREAM_REDIS_CLUSTER"
    elif [ -d "$SVC/cluster" ]; then
        "$ROOT/scripts/redis-cluster.sh" env || rc=1
    fi
    return "$rc"
}

cmd_up() {
    lock
    if [ -n "${ODDSTREAM_KAFKA:-}" ]; then
        log "using external Kafka $ODDSTREAM_KAFKA"
    else
        kafka_start fresh
    fi
    if [ -n "${ODDSTREAM_REDIS:-}" ]; then
        log "using external Redis $ODDSTREAM_REDIS"
    else
        redis_start fresh
    fi
    "$ROOT/scripts/mariadb.sh" up >/dev/null
    if [ "${1:-}" = cluster ]; then
        if [ -n "${ODDSTREAM_REDIS_CLUSTER:-}" ]; then
            log "using external Redis Cluster $ODDSTREAM_REDIS_CLUSTER"
        else
            # 9>&-: the nodes must not inherit the lock (a later up/down would wait on it).
            "$ROOT/scripts/redis-cluster.sh" up >/dev/null 9>&-
        fi
    fi
    cmd_env
}

cmd_down() {
    lock
    svc_stop kafka
    svc_stop redis
    "$ROOT/scripts/mariadb.sh" down
    if [ -d "$SVC/cluster" ]; then "$ROOT/scripts/redis-cluster.sh" down; fi
    log "down"
}

cmd_status() {
    local name pid
    for name in kafka redis; do
        if pid="$(pid_alive "$name")"; then
            log "$name: running (pid $pid, port $(read_file "$SVC/$name.port"))"
        else
            log "$name: not running"
        fi
    done
}

need_service() {
    case "${1:-}" in
        kafka|redis) ;;
        *) die "expected 'kafka' or 'redis', got '${1:-}'" ;;
    esac
}

usage() {
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//' >&2
}

main() {
    local cmd="${1:-}"
    case "$cmd" in
        up)     cmd_up "${2:-}" ;;
        down)   cmd_down ;;
        env)    cmd_env ;;
        status) cmd_status ;;
        kill)   need_service "${2:-}"; lock; svc_kill "$2" ;;
        stop)   need_service "${2:-}"; lock; svc_stop "$2" ;;
        start)
            need_service "${2:-}"; lock
            if [ "$2" = kafka ]; then kafka_start keep; else redis_start keep; fi ;;
        restart)
            need_service "${2:-}"; lock; svc_stop "$2"
            if [ "$2" = kafka ]; then kafka_start keep; else redis_start keep; fi ;;
        jars)   lock; kafka_fetch_jars; printf '%s\n' "$LIBS" ;;
        -h|--help|help) usage ;;
        *) usage; exit 2 ;;
    esac
}

main "$@"
