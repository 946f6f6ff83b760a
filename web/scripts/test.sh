#!/usr/bin/env bash
# The web test command (called by the repository's scripts/test.sh; also runs on its own):
# Debian's Chromium, npm ci, generated-types drift check and type checks, build, then every
# web test (vitest unit tests of the SDK, then the browser tests against `oddstream dev`).
# Needs the Python venv (scripts/setup.sh at the repository root) for the browser tests, and
# Kafka and Redis (ODDSTREAM_KAFKA / ODDSTREAM_REDIS, as scripts/test.sh exports them) for the
# operator page's (e2e/operator.e2e.test.ts: a distributed run).
set -euo pipefail
cd "$(dirname "$0")/.."
started=$SECONDS
step() { printf 'web-test: %s\n' "$*" >&2; }

step "chromium: $(scripts/ensure-chromium.sh)"
if [ -f package-lock.json ]; then
  step "npm ci"
  npm ci --no-audit --no-fund --loglevel=error
else
  step "npm install (no lockfile yet: commit the package-lock.json it writes)"
  npm install --no-audit --no-fund --loglevel=error
fi
step "check:types (generated protocol types current; tsc --strict everywhere)"
npm run --silent check:types
step "build"
npm run --silent build
step "test"
npm test --silent
step "done in $((SECONDS - started)) s"
