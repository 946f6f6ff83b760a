#!/usr/bin/env bash
# One command for the whole distributed system (docker/compose.yaml):
#
#   docker/up.sh            build the images (cached by content), start every service,
#                           wait until all are healthy, print the load balancer's URL
#   docker/up.sh down       stop and remove the stack
#   docker/up.sh ps|logs|...  any other docker compose command, on this project
#
# Needs a running Docker daemon and Compose (`docker compose` or Debian's
# `docker-compose`). Settings: the ODDSTREAM_* variables docker/compose.yaml names
# (ports, ODDSTREAM_FEED_COMMAND, ODDSTREAM_DRAIN_S, ...); ODDSTREAM_UP_TIMEOUT (180 s).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
cd "$ROOT"

log() { printf '[up] %s\n' "$*" >&2; }
die() { printf '[up] ERROR: %s\n' "$*" >&2; exit 1; }

compose() {
    if docker compose version >/dev/null 2>&1; then
        docker compose -p oddstream -f docker/compose.yaml "$@"
    elif command -v docker-compose >/dev/null 2>&1; then
        docker-compose -p oddstream -f docker/compose.yaml "$@"
    else
        die "Docker Compose is missing (the compose plugin, or apt-get install docker-compose)"
    fi
}

# Until every container of the stack is healthy (a finished bounded feed counts).
wait_healthy() {
    local deadline=$((SECONDS + ${ODDSTREAM_UP_TIMEOUT:-180})) id state pending
    while :; do
        pending=""
        for id in $(compose ps -q); do
            state="$(docker inspect -f '{{.Name}} {{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{end}} {{.State.ExitCode}}' "$id")"
            case $state in
                *" running healthy "*) ;;
                *" exited "*" 0") ;;
                *" exited "* | *" restarting "*) die "container failed: $state (docker/up.sh logs)" ;;
                *) pending="$pending ${state%% *}" ;;
            esac
        done
        [ -n "$pending" ] || return 0
        [ "$SECONDS" -lt "$deadline" ] || die "not healthy after ${ODDSTREAM_UP_TIMEOUT:-180} s:$pending"
        sleep 1
    done
}

case "${1:-up}" in
    up)
        docker info >/dev/null 2>&1 || die "no Docker daemon is running"
        started=$SECONDS
        images="$(docker/build.sh)"
        set -a; eval "$images"; set +a
        printf '%s\n' "$images"
        compose up -d --no-build >&2
        wait_healthy
        log "up and healthy in $((SECONDS - started)) s: http://127.0.0.1:${ODDSTREAM_LB_PORT:-26080}/"
        ;;
    down)
        compose down --remove-orphans --timeout 20 >&2
        ;;
    *)
        compose "$@"
        ;;
esac
