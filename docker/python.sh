#!/bin/sh
# Makes sure the image has Python 3.11+ with venv: an official python image has it; the
# local Debian base (docker/base.sh) gets Debian's python3 from apt.
set -eu
if python3 -c 'import sys, venv; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    exit 0
fi
apt-get update -q
DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends python3 python3-venv
rm -rf /var/lib/apt/lists/*
