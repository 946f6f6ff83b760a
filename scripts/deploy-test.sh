#!/usr/bin/env bash
# The deployment tests (tests/deploy), with what they need on a fresh Debian machine:
#   * Docker (Debian's docker.io; dockerd started with --bridge=none --iptables=false if
#     none runs, and stopped afterwards), Compose (docker-compose), debootstrap;
#   * helm and actionlint, built by `go install` into .cache/go/bin (kept);
#   * the images (docker/build.sh: cached by content; on the bases BASE_IMAGE and
#     NODE_IMAGE when both are set, else on the local ones docker/base.sh makes).
# Then pytest: images built from the local base, the compose stack with its failover
# checks (WebSocket and SSE through HAProxy, `docker stop` of a gateway, `docker kill` of
# a book processor), `kubectl kustomize` of each overlay and `helm template` validated
# against the Kubernetes schemas, `helm lint`, actionlint.
#
# Usage: scripts/deploy-test.sh [all|manifests] [pytest args...]
#   manifests: only the manifest, chart and workflow checks (no Docker).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
TOOLS="$ROOT/.cache/go/bin"
LOGS="$ROOT/.cache/deploy"
HELM=helm.sh/helm/v3/cmd/helm@v3.22.0
ACTIONLINT=github.com/rhysd/actionlint/cmd/actionlint@v1.7.12

log() { printf '[deploy-test] %s\n' "$*" >&2; }
die() { printf '[deploy-test] ERROR: %s\n' "$*" >&2; exit 1; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo -n "$@"; fi
}

# need COMMAND PACKAGE... : apt-get install the packages unless COMMAND exists.
need() {
    local command=$1; shift
    command -v "$command" >/dev/null 2>&1 && return 0
    log "installing $* with apt-get"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q >&2
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" >&2
}

# go_tool NAME MODULE@VERSION : built once into .cache/go/bin, rebuilt when the version changes.
go_tool() {
    local name=$1 module=$2 stamp="$TOOLS/.$1.version"
    if [ -x "$TOOLS/$name" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$module" ]; then return 0; fi
    command -v go >/dev/null 2>&1 || die "Go is needed to build $name (go install $module)"
    log "go install $module (once; kept in .cache/go/bin)"
    mkdir -p "$TOOLS"
    (cd /tmp && GOBIN="$TOOLS" go install "$module") >&2
    printf '%s\n' "$module" >"$stamp"
}

kubectl_or_kustomize() {
    command -v kubectl >/dev/null 2>&1 && return 0
    go_tool kustomize sigs.k8s.io/kustomize/kustomize/v5@v5.5.0
}

# The dockerd start_dockerd started (its own pid file, whatever sudo put in between).
stop_dockerd() {
    local pid i
    pid="$(cat "$LOGS/dockerd.pid" 2>/dev/null || true)"
    [ -n "$pid" ] || return 0
    log "stopping the dockerd this script started (pid $pid)"
    as_root kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.2; done
    as_root kill -KILL "$pid" 2>/dev/null || true
}

start_dockerd() {
    docker info >/dev/null 2>&1 && return 0
    log "starting dockerd (no bridge, no iptables: containers use host networking)"
    mkdir -p "$LOGS"
    rm -f "$LOGS/dockerd.pid"
    as_root dockerd --bridge=none --iptables=false --ip6tables=false \
        --pidfile "$LOGS/dockerd.pid" </dev/null >"$LOGS/dockerd.log" 2>&1 &
    local launcher=$! i
    trap stop_dockerd EXIT
    for i in $(seq 1 150); do
        docker info >/dev/null 2>&1 && [ -s "$LOGS/dockerd.pid" ] && return 0
        kill -0 "$launcher" 2>/dev/null || { tail -n 20 "$LOGS/dockerd.log" >&2; die "dockerd exited"; }
        sleep 0.2
    done
    die "dockerd not ready after 30 s (log: .cache/deploy/dockerd.log)"
}

mode=all
case "${1:-}" in all|manifests) mode=$1; shift ;; esac
[ -x .venv/bin/pytest ] || scripts/setup.sh
kubectl_or_kustomize
go_tool helm "$HELM"
go_tool actionlint "$ACTIONLINT"
export PATH="$TOOLS:$PATH" ODDSTREAM_DEPLOY_TEST=1
if [ "$mode" = manifests ]; then
    exec .venv/bin/pytest tests/deploy/test_manifests.py "$@"
fi

need dockerd docker.io
docker compose version >/dev/null 2>&1 || need docker-compose docker-compose
# Local bases from Debian's archive unless registry images are named (CI: docker/base.sh).
[ -n "${BASE_IMAGE:-}" ] && [ -n "${NODE_IMAGE:-}" ] || need debootstrap debootstrap
start_dockerd
started=$SECONDS
docker/build.sh >/dev/null
log "images ready in $((SECONDS - started)) s"
.venv/bin/pytest tests/deploy "$@"
