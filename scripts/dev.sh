#!/usr/bin/env bash
# The first command: set up, then run `oddstream dev` (everything in one process, no Kafka
# or Redis needed). Extra arguments go to `oddstream dev`, e.g. --port 8080 --events 20.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/oddstream dev "$@"
