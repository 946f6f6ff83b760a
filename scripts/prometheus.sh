#!/usr/bin/env bash
# Debian's Prometheus for the alert and dashboard checks and the scraping test
# (docs/observability.md): installs the `prometheus` package (which ships promtool) with
# apt-get when `prometheus` or `promtool` is missing, and prints where they are. The
# package's own service is not started here (nor by apt in a container): the tests start
# their own server on 127.0.0.1 with a temporary data directory.
#
# Usage: scripts/prometheus.sh
set -euo pipefail
if ! command -v prometheus >/dev/null 2>&1 || ! command -v promtool >/dev/null 2>&1; then
    printf '[prometheus] installing Debian'"'"'s prometheus with apt-get\n' >&2
    run() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo -n "$@"; fi; }
    run env DEBIAN_FRONTEND=noninteractive apt-get update -q >&2
    run env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus >&2
fi
printf '[prometheus] %s\n' "$(prometheus --version 2>&1 | head -n 1)" >&2
command -v prometheus promtool
