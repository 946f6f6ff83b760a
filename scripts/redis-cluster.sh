#!/usr/bin/env bash
# A real Redis Cluster on loopback for tests: three masters and three replicas of
# Debian's redis-server (7.0+: sharded pub/sub), no persistence, a short node timeout
# so a killed master's replica is promoted within seconds. Started only when asked
# (`scripts/services.sh up cluster`, or this script directly); state in
# .cache/services/cluster/ (one folder per node: its nodes.conf and log).
#
# Usage:
#   scripts/redis-cluster.sh up          start the six nodes, create the cluster, wait
#                                        until cluster_state:ok and every master has its
#                                        replica; print the env line
#   scripts/redis-cluster.sh env         print the env line of the running cluster
#   scripts/redis-cluster.sh down        stop every node, forget the cluster
#   scripts/redis-cluster.sh kill PORT   SIGKILL one node (a master: its replica takes over)
#   scripts/redis-cluster.sh start PORT  start a killed node again (it rejoins)
#   scripts/redis-cluster.sh status      the cluster's nodes (stderr)
#
# stdout of `up` and `env` is exactly (eval-able):
#   ODDSTREAM_REDIS_CLUSTER=redis://127.0.0.1:<first port>
#
# Environment:
#   ODDSTREAM_REDIS_CLUSTER_PORT (17400)   first port; the nodes use six from it, and
#                                          their cluster bus ports 10000 above
#   ODDSTREAM_REDIS_CLUSTER_TIMEOUT (60)   readiness, s
#   ODDSTREAM_REDIS_CLUSTER_NODE_TIMEOUT (1000)  cluster-node-timeout, ms
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
DIR="$ROOT/.cache/services/cluster"
NODES=6

log() { printf '[redis-cluster] %s\n' "$*" >&2; }
die() { printf '[redis-cluster] ERROR: %s\n' "$*" >&2; exit 1; }

base_port() {
    local p=""
    [ -s "$DIR/port" ] && p="$(cat "$DIR/port")"
    printf '%s\n' "${p:-${ODDSTREAM_REDIS_CLUSTER_PORT:-17400}}"
}

ports() {
    local base; base="$(base_port)"
    seq "$base" $((base + NODES - 1))
}

cli() { local port=$1; shift; redis-cli -h 127.0.0.1 -p "$port" "$@"; }

# node_pid PORT -> prints the pid of our node on PORT if it lives
node_pid() {
    local port=$1 pid cmdline
    [ -s "$DIR/$port/pid" ] || return 1
    pid="$(cat "$DIR/$port/pid")"
    kill -0 "$pid" 2>/dev/null || return 1
    cmdline="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null || true)"
    case $cmdline in *redis-server*":$port"*) ;; *) return 1 ;; esac
    printf '%s\n' "$pid"
}

node_start() {
    local port=$1
    if node_pid "$port" >/dev/null; then return 0; fi
    mkdir -p "$DIR/$port"
    # setsid: its own session, detached from the caller's pipes ("$(... up)" returns).
    setsid redis-server --bind 127.0.0.1 --port "$port" --dir "$DIR/$port" \
        --cluster-enabled yes --cluster-config-file nodes.conf \
        --cluster-node-timeout "${ODDSTREAM_REDIS_CLUSTER_NODE_TIMEOUT:-1000}" \
        --cluster-allow-reads-when-down no \
        --save '' --appendonly no --daemonize no --protected-mode yes --loglevel notice \
        </dev/null >"$DIR/$port/log" 2>&1 &
    printf '%s\n' "$!" >"$DIR/$port/pid"
}

# wait_until SECONDS WHAT CMD...: poll CMD (every 0.1 s) until it succeeds.
wait_until() {
    local deadline=$((SECONDS + $1)) what=$2; shift 2
    until "$@"; do
        [ "$SECONDS" -lt "$deadline" ] || die "$what: not within the timeout; logs in ${DIR#"$ROOT"/}"
        sleep 0.1
    done
}

answers() { [ "$(cli "$1" ping 2>/dev/null)" = PONG ]; }

all_answer() {
    local port
    for port in $(ports); do
        if ! node_pid "$port" >/dev/null; then
            tail -n 3 "$DIR/$port/log" >&2 || true
            die "node $port exited"
        fi
        answers "$port" || return 1
    done
}

# Every node sees the cluster ok, and three masters each have an online replica.
cluster_ready() {
    local port masters
    for port in $(ports); do
        cli "$port" cluster info 2>/dev/null | grep -q '^cluster_state:ok' || return 1
    done
    masters="$(cli "$(first_alive)" cluster nodes 2>/dev/null \
        | awk '$3 ~ /master/ && $3 !~ /fail/ && $9 != "" {print $1}')"
    [ "$(printf '%s\n' "$masters" | grep -c .)" -eq 3 ] || return 1
    for id in $masters; do
        cli "$(first_alive)" cluster replicas "$id" 2>/dev/null | grep -q 'slave' || return 1
        cli "$(first_alive)" cluster replicas "$id" 2>/dev/null | grep -qv 'fail' || return 1
    done
}

first_alive() {
    local port
    for port in $(ports); do
        if node_pid "$port" >/dev/null; then printf '%s\n' "$port"; return 0; fi
    done
    base_port
    return 1
}

print_env() { printf 'ODDSTREAM_REDIS_CLUSTER=%q\n' "redis://127.0.0.1:$(first_alive)"; }

cmd_up() {
    command -v redis-server >/dev/null 2>&1 || die "redis-server not found (scripts/services.sh up installs it)"
    mkdir -p "$DIR"
    local port p timeout="${ODDSTREAM_REDIS_CLUSTER_TIMEOUT:-60}" fresh=1
    for port in $(ports); do
        if node_pid "$port" >/dev/null; then fresh=0; continue; fi
        for p in "$port" $((port + 10000)); do
            if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
                die "port $p on 127.0.0.1 is in use; set ODDSTREAM_REDIS_CLUSTER_PORT"
            fi
        done
    done
    local base; base="$(base_port)"  # Read before the redirection empties the file.
    printf '%s\n' "$base" >"$DIR/port"
    if [ "$fresh" = 1 ]; then
        rm -rf "${DIR:?}"/[0-9]*
        log "starting $NODES nodes on 127.0.0.1:$(base_port)-$(($(base_port) + NODES - 1))"
    fi
    for port in $(ports); do node_start "$port"; done
    wait_until "$timeout" "nodes answering" all_answer
    if [ "$fresh" = 1 ]; then
        local addresses=()
        for port in $(ports); do addresses+=("127.0.0.1:$port"); done
        redis-cli --cluster create "${addresses[@]}" --cluster-replicas 1 --cluster-yes \
            >"$DIR/create.log" 2>&1 || { tail -n 20 "$DIR/create.log" >&2; die "cluster create failed"; }
    fi
    wait_until "$timeout" "cluster_state:ok with a replica per master" cluster_ready
    log "cluster ready (3 masters, 3 replicas)"
    print_env
}

cmd_down() {
    local port pid
    for port in $(ports); do
        if pid="$(node_pid "$port")"; then
            kill -TERM "$pid" 2>/dev/null || true
        fi
    done
    for port in $(ports); do
        if pid="$(node_pid "$port")"; then
            wait_until 15 "node $port stopping" eval "! kill -0 $pid 2>/dev/null"
        fi
    done
    rm -rf "$DIR"
    log "down"
}

cmd_kill() {
    local port=${1:?port} pid
    pid="$(node_pid "$port")" || die "no node of ours on port $port"
    log "killing node $port (pid $pid) with SIGKILL"
    kill -KILL "$pid"
    wait_until 10 "node $port gone" eval "! kill -0 $pid 2>/dev/null"
}

main() {
    case "${1:-}" in
        up) cmd_up ;;
        env) first_alive >/dev/null || die "not running (run: scripts/redis-cluster.sh up)"; print_env ;;
        down) cmd_down ;;
        kill) cmd_kill "${2:-}" ;;
        start) node_start "${2:?port}"; wait_until 20 "node $2 answering" answers "$2" ;;
        status) cli "$(first_alive)" cluster nodes >&2 ;;
        *) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//' >&2; exit 2 ;;
    esac
}

main "$@"
