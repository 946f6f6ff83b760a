#!/usr/bin/env bash
# Makes sure Debian's Chromium is installed (the browser tests drive it with playwright-core;
# no browser is downloaded by npm). Prints the path of the executable on stdout.
# ODDSTREAM_CHROMIUM overrides the path (then nothing is installed).
set -euo pipefail
if [ -n "${ODDSTREAM_CHROMIUM:-}" ]; then
  [ -x "$ODDSTREAM_CHROMIUM" ] || { echo "ensure-chromium: ODDSTREAM_CHROMIUM=$ODDSTREAM_CHROMIUM is not executable" >&2; exit 1; }
  echo "$ODDSTREAM_CHROMIUM"; exit 0
fi
for exe in /usr/bin/chromium /usr/bin/chromium-browser; do
  if [ -x "$exe" ]; then echo "$exe"; exit 0; fi
done
as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"
  elif command -v sudo >/dev/null 2>&1; then sudo -n "$@"
  else echo "ensure-chromium: need root (or sudo) to apt-get install chromium" >&2; exit 1
  fi
}
command -v apt-get >/dev/null 2>&1 || { echo "ensure-chromium: no apt-get; install Chromium and set ODDSTREAM_CHROMIUM" >&2; exit 1; }
echo "ensure-chromium: installing Debian's chromium with apt-get ..." >&2
{
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium fonts-dejavu-core
} >&2
[ -x /usr/bin/chromium ] || { echo "ensure-chromium: /usr/bin/chromium missing after install" >&2; exit 1; }
echo /usr/bin/chromium
