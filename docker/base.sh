#!/usr/bin/env bash
# Local base images for machines with no container registry, made from Debian's package
# archive and this machine's Node.js:
#   oddstream/base:bookworm        debootstrap --variant=minbase bookworm, imported
#   oddstream/node-base:bookworm   the same plus this machine's Node.js and npm
#                                  (Node 20.19+: Debian bookworm's own Node is too old for
#                                  the web UI's build)
# The mirror is the one apt is configured with here, read at run time; the CA trust is
# this machine's (/etc/ssl/certs, /usr/local/share/ca-certificates). Both images are
# kept, and the base's root file system is cached as .cache/deploy/base-bookworm.tar, so a
# second run (or a fresh dockerd) takes seconds.
#
# Usage: docker/base.sh            build what is missing; print the two image names
# Then:  docker build --build-arg BASE_IMAGE=oddstream/base:bookworm \
#          --build-arg NODE_IMAGE=oddstream/node-base:bookworm -f docker/Dockerfile .
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
CACHE="$ROOT/.cache/deploy"
BASE=oddstream/base:bookworm
NODE_BASE=oddstream/node-base:bookworm
SUITE=bookworm

log() { printf '[base] %s\n' "$*" >&2; }
die() { printf '[base] ERROR: %s\n' "$*" >&2; exit 1; }

have_image() { docker image inspect "$1" >/dev/null 2>&1; }

# The first Debian archive URI apt uses for $SUITE (deb822 .sources or one-line lists).
apt_mirror() {
    local uri
    uri="$(awk -v suite="$SUITE" '
        /^URIs:/ { uris = $2 }
        /^Suites:/ { for (i = 2; i <= NF; i++) if ($i == suite && uris != "" && uris !~ /security/) { print uris; exit } }
        /^$/ { uris = "" }' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)"
    if [ -z "$uri" ] && [ -f /etc/apt/sources.list ]; then
        uri="$(awk -v suite="$SUITE" '$1 == "deb" && $0 !~ /security/ {
            for (i = 2; i <= NF; i++) if ($i == suite) { print $(i - 1); exit } }' /etc/apt/sources.list)"
    fi
    [ -n "$uri" ] || die "no Debian $SUITE mirror in /etc/apt/sources.list{,.d/*.sources}"
    printf '%s\n' "$uri"
}

build_base() {
    local tarball="$CACHE/base-$SUITE.tar"
    if [ ! -s "$tarball" ]; then
        command -v debootstrap >/dev/null 2>&1 || die "debootstrap is not installed (apt-get install debootstrap)"
        local dir="$CACHE/rootfs.$$" mirror
        mirror="$(apt_mirror)"
        log "debootstrap --variant=minbase $SUITE from the configured mirror (about a minute) ..."
        rm -rf "$dir"; mkdir -p "$dir"
        debootstrap --variant=minbase "$SUITE" "$dir" "$mirror" >"$CACHE/debootstrap.log" 2>&1 \
            || { tail -n 20 "$CACHE/debootstrap.log" >&2; rm -rf "$dir"; die "debootstrap failed"; }
        rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/*
        tar -C "$dir" -cf "$tarball.tmp" .
        rm -rf "$dir"
        mv "$tarball.tmp" "$tarball"
    fi
    log "importing $BASE"
    docker import "$tarball" "$BASE-rootfs" >/dev/null
    # This machine's CA trust goes in too (registries may sit behind a TLS-inspecting
    # proxy here): its CA bundle, and its local CAs so that a later update-ca-certificates
    # (an apt install of ca-certificates) keeps them.
    local ctx="$CACHE/trust.$$"
    rm -rf "$ctx"; mkdir -p "$ctx/local"
    cp /etc/ssl/certs/ca-certificates.crt "$ctx/"
    cp -L /usr/local/share/ca-certificates/*.crt "$ctx/local/" 2>/dev/null || true
    cat >"$ctx/Dockerfile" <<DOCKERFILE
FROM $BASE-rootfs
COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY local/ /usr/local/share/ca-certificates/
ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \\
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt \\
    NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt \\
    npm_config_cafile=/etc/ssl/certs/ca-certificates.crt
CMD ["bash"]
DOCKERFILE
    docker build -q -t "$BASE" "$ctx" >/dev/null
    docker rmi "$BASE-rootfs" >/dev/null
    rm -rf "$ctx"
}

build_node_base() {
    command -v node >/dev/null 2>&1 || die "Node.js 20.19+ is needed on this machine for $NODE_BASE"
    node -e 'const [a, b] = process.versions.node.split(".").map(Number); process.exit(a > 20 || (a === 20 && b >= 19) ? 0 : 1)' \
        || die "Node.js $(node --version) is older than 20.19"
    local ctx="$CACHE/node-base.$$" node npm_dir
    node="$(readlink -f "$(command -v node)")"
    npm_dir="$(npm root -g)/npm"
    [ -f "$npm_dir/bin/npm-cli.js" ] || die "npm is not installed beside $node"
    rm -rf "$ctx"; mkdir -p "$ctx/usr/local/bin" "$ctx/usr/local/lib/node_modules"
    # The node binary (it needs only libc and libstdc++, which minbase has) and npm.
    cp "$node" "$ctx/usr/local/bin/node"
    cp -a "$npm_dir" "$ctx/usr/local/lib/node_modules/npm"
    ln -s ../lib/node_modules/npm/bin/npm-cli.js "$ctx/usr/local/bin/npm"
    ln -s ../lib/node_modules/npm/bin/npx-cli.js "$ctx/usr/local/bin/npx"
    tar -C "$ctx" -cf "$ctx/node.tar" usr
    rm -rf "$ctx/usr"
    printf 'FROM %s\nADD node.tar /\nRUN node --version && npm --version\n' "$BASE" >"$ctx/Dockerfile"
    log "building $NODE_BASE from $BASE and this machine's Node.js $(node --version)"
    docker build -q --network host -t "$NODE_BASE" "$ctx" >/dev/null
    rm -rf "$ctx"
}

main() {
    mkdir -p "$CACHE"
    docker info >/dev/null 2>&1 || die "no Docker daemon (scripts/deploy-test.sh starts one)"
    have_image "$BASE" || build_base
    have_image "$NODE_BASE" || build_node_base
    printf 'BASE_IMAGE=%s\nNODE_IMAGE=%s\n' "$BASE" "$NODE_BASE"
}

main "$@"
