#!/usr/bin/env bash
# The second command: set up, start the real services the tests need (Kafka, Redis, a Redis
# Cluster; or use those ODDSTREAM_KAFKA / ODDSTREAM_REDIS / ODDSTREAM_REDIS_CLUSTER point at), check types and lint, run every test.
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh

started=0
cleanup() { if [ "$started" = 1 ]; then scripts/services.sh down || true; fi; }
trap cleanup EXIT
env_lines=$(scripts/services.sh up cluster)
started=1
eval "$env_lines"
export ODDSTREAM_KAFKA ODDSTREAM_REDIS ODDSTREAM_MYSQL ODDSTREAM_REDIS_CLUSTER
echo "test: Kafka at $ODDSTREAM_KAFKA, Redis at $ODDSTREAM_REDIS, Redis Cluster at $ODDSTREAM_REDIS_CLUSTER" >&2

echo "test: ruff" >&2
.venv/bin/ruff check .
.venv/bin/ruff format --check .
echo "test: mypy --strict" >&2
.venv/bin/mypy
echo "test: import contracts (lint-imports)" >&2
.venv/bin/lint-imports
echo "test: schema is current" >&2
.venv/bin/python -m protocol.schema --check
echo "test: docs/openapi.json is current" >&2
.venv/bin/python -m server.openapi --check
echo "test: docs/configuration.md is current" >&2
.venv/bin/python -m oddstream.options --check
echo "test: web (types, build, SDK unit tests, browser tests)" >&2
web/scripts/test.sh
echo "test: Prometheus and promtool (Debian's prometheus; alert and scrape tests)" >&2
scripts/prometheus.sh >/dev/null
echo "test: pytest" >&2
.venv/bin/pytest "$@"
scripts/deploy-test.sh
