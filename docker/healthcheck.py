"""The image's HEALTHCHECK: a gateway (``oddstream gateway`` or ``dev``) is healthy when its
``/readyz`` answers 200 on the port it serves (``ODDSTREAM_PORT``, default 8000); the other
commands have no HTTP listener, so a running process is a healthy one."""

import os
import sys
import urllib.error
import urllib.request

SERVING = ("gateway", "dev")


def main() -> int:
    with open("/proc/1/cmdline", "rb") as f:
        argv = f.read().decode(errors="replace").split("\0")
    if not any(arg in SERVING for arg in argv):
        return 0
    url = f"http://127.0.0.1:{os.environ.get('ODDSTREAM_PORT', '8000')}/readyz"
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return 0 if response.status == 200 else 1
    except (OSError, urllib.error.URLError):
        return 1


if __name__ == "__main__":
    sys.exit(main())
