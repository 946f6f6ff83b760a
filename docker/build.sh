#!/usr/bin/env bash
# Builds the four images of the compose stack, each tagged by a hash of everything it is
# built from, so an unchanged image is never rebuilt:
#   oddstream:<hash>           docker/Dockerfile (gateway, books, feed, dev)
#   oddstream-kafka:<hash>     docker/kafka (jars from `scripts/services.sh jars`)
#   oddstream-redis:<hash>     docker/redis
#   oddstream-haproxy:<hash>   docker/haproxy
# Base images: BASE_IMAGE / NODE_IMAGE when set (e.g. python:3.11-slim-bookworm and
# node:22-bookworm-slim from a registry), else the local ones docker/base.sh makes from
# Debian's archive.
#
# stdout is exactly (eval-able; docker/compose.yaml reads these):
#   ODDSTREAM_IMAGE=... ODDSTREAM_KAFKA_IMAGE=... ODDSTREAM_REDIS_IMAGE=... ODDSTREAM_LB_IMAGE=...
# Build times go to stderr.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
cd "$ROOT"
CACHE="$ROOT/.cache/deploy"

log() { printf '[build] %s\n' "$*" >&2; }

if [ -z "${BASE_IMAGE:-}" ] || [ -z "${NODE_IMAGE:-}" ]; then
    eval "$(docker/base.sh)"
fi
for base in "$BASE_IMAGE" "$NODE_IMAGE"; do
    docker image inspect "$base" >/dev/null 2>&1 || docker pull -q "$base" >&2
done

# hash_of PATH... : one hash of the named files' paths and contents (tracked or not,
# ignored files left out), and of the base images' ids.
hash_of() {
    {
        docker image inspect -f '{{.Id}}' "$BASE_IMAGE" "$NODE_IMAGE"
        git ls-files -z --cached --others --exclude-standard -- "$@" \
            | sort -z | xargs -0 -r sha256sum
    } | sha256sum | cut -c1-16
}

# build NAME:TAG CONTEXT DOCKERFILE : unless the image exists.
build() {
    local image=$1 context=$2 dockerfile=$3 started=$SECONDS
    if docker image inspect "$image" >/dev/null 2>&1; then
        log "$image: cached"
        return 0
    fi
    log "$image: building ..."
    if ! docker build --network host -q -t "$image" -f "$dockerfile" \
            --build-arg BASE_IMAGE="$BASE_IMAGE" --build-arg NODE_IMAGE="$NODE_IMAGE" \
            "$context" >"$CACHE/build-${image%%:*}.log" 2>&1; then
        tail -n 30 "$CACHE/build-${image%%:*}.log" >&2
        log "$image: build failed (log: ${CACHE#"$ROOT"/}/build-${image%%:*}.log)"
        exit 1
    fi
    log "$image: built in $((SECONDS - started)) s, $(docker image inspect -f '{{.Size}}' "$image" | awk '{printf "%.0f MB", $1 / 1e6}')"
    # Older builds of the same image go (their layers stay while another tag uses them).
    docker images --format '{{.Repository}}:{{.Tag}}' "${image%%:*}" | grep -vxF "$image" \
        | xargs -r docker rmi >/dev/null 2>&1 || true
}

mkdir -p "$CACHE"
app="oddstream:$(hash_of pyproject.toml README.md protocol feeds channels server archive oddstream web docker/Dockerfile docker/python.sh docker/healthcheck.py .dockerignore)"
kafka="oddstream-kafka:$(hash_of docker/kafka scripts/kafka)"
redis="oddstream-redis:$(hash_of docker/redis)"
lb="oddstream-haproxy:$(hash_of docker/haproxy)"

build "$app" . docker/Dockerfile
if ! docker image inspect "$kafka" >/dev/null 2>&1; then
    # Kafka's context: the jars the test command fetches, its config, the entrypoint.
    libs="$(scripts/services.sh jars)"
    ctx="$CACHE/kafka-context"
    rm -rf "$ctx"; mkdir -p "$ctx"
    cp -al "$libs" "$ctx/libs" 2>/dev/null || cp -a "$libs" "$ctx/libs"
    cp scripts/kafka/server.properties.in scripts/kafka/log4j.properties \
        docker/kafka/entrypoint.sh docker/kafka/Dockerfile "$ctx/"
    build "$kafka" "$ctx" "$ctx/Dockerfile"
    rm -rf "$ctx"
fi
build "$redis" . docker/redis/Dockerfile
build "$lb" . docker/haproxy/Dockerfile

printf 'ODDSTREAM_IMAGE=%s\nODDSTREAM_KAFKA_IMAGE=%s\nODDSTREAM_REDIS_IMAGE=%s\nODDSTREAM_LB_IMAGE=%s\n' \
    "$app" "$kafka" "$redis" "$lb"
