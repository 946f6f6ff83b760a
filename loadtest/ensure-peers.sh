#!/usr/bin/env bash
# Installs what `python -m loadtest.bench` measures oddstream against, when missing:
#   * Pushpin: the Debian package `pushpin` (it pulls in condure and zurl), via apt-get;
#   * the `broadcaster` Python package (encode/broadcaster), into .venv;
#   * py-spy (for `--profile`), into .venv;
#   * Centrifugo, built by `go install` from the Go module proxy into .cache/go/bin (kept;
#     rebuilt only when CENTRIFUGO_MODULE changes).
# Idempotent: does nothing when everything is there. Never fails the caller: a peer that
# cannot be installed is reported here, and the benchmark then prints
# "<peer>: not available" and carries on without it.
#
# Usage: loadtest/ensure-peers.sh        (root, or passwordless sudo, for apt-get)
set -uo pipefail
cd "$(dirname "$0")/.."

say() { printf '[ensure-peers] %s\n' "$*" >&2; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"
    elif command -v sudo >/dev/null 2>&1; then sudo -n "$@"
    else return 1
    fi
}

python=.venv/bin/python
[ -x "$python" ] || python=${PYTHON:-python3}

if command -v pushpin >/dev/null 2>&1 && command -v condure >/dev/null 2>&1 \
        && command -v zurl >/dev/null 2>&1; then
    say "pushpin: $(pushpin --version 2>/dev/null | tail -n1)"
elif ! command -v apt-get >/dev/null 2>&1; then
    say "pushpin: not available (no apt-get; install Pushpin yourself)"
else
    say "pushpin: installing the Debian package ..."
    if as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
            pushpin >/dev/null 2>&1 \
        || { as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null 2>&1 \
             && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
                    --no-install-recommends pushpin >/dev/null 2>&1; }; then
        # The package starts a system-wide instance where an init system runs; the
        # benchmark runs its own, on free loopback ports, so that one is not needed.
        as_root /etc/init.d/pushpin stop >/dev/null 2>&1 || true
        say "pushpin: installed ($(pushpin --version 2>/dev/null | tail -n1))"
    else
        say "pushpin: not available (apt-get install pushpin failed)"
    fi
fi

for package in broadcaster py-spy; do
    module=${package//-/_}
    if [ "$package" = py-spy ]; then
        found=$([ -x "$(dirname "$python")/py-spy" ] || command -v py-spy >/dev/null 2>&1 && echo y)
    else
        found=$("$python" -c "import $module" >/dev/null 2>&1 && echo y)
    fi
    if [ "$found" = y ]; then
        say "$package: present"
    elif "$python" -m pip install -q "$package" >/dev/null 2>&1; then
        say "$package: installed"
    else
        say "$package: not available (pip install $package failed)"
    fi
done
CENTRIFUGO_MODULE=github.com/centrifugal/centrifugo/v6@v6.9.1
tools="$PWD/.cache/go/bin"
stamp="$tools/.centrifugo.version"
if [ -x "$tools/centrifugo" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$CENTRIFUGO_MODULE" ]; then
    say "centrifugo: present ($CENTRIFUGO_MODULE)"
elif ! command -v go >/dev/null 2>&1; then
    say "centrifugo: not available (no Go toolchain for go install $CENTRIFUGO_MODULE)"
else
    say "centrifugo: go install $CENTRIFUGO_MODULE (once; minutes; kept in .cache/go/bin) ..."
    mkdir -p "$tools"
    if (cd /tmp && GOBIN="$tools" go install "$CENTRIFUGO_MODULE") >/dev/null 2>&1; then
        printf '%s\n' "$CENTRIFUGO_MODULE" >"$stamp"
        say "centrifugo: installed ($("$tools/centrifugo" version 2>/dev/null | head -n1))"
    else
        say "centrifugo: not available (go install $CENTRIFUGO_MODULE failed)"
    fi
fi
exit 0
