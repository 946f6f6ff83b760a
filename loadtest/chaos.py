"""The fault suite (``tests/faults``) at a chosen scale, with its table at the end.

CI runs the suite at scale 1 as part of ``pytest``. This runs it bigger: ``--scale N``
multiplies the events, feed messages and clients of every scenario (and the feed rate
by sqrt(N)), and the per-scenario time bound with them. It uses the Kafka and Redis that
``ODDSTREAM_KAFKA`` / ``ODDSTREAM_REDIS`` name, or starts them with
``scripts/services.sh`` (and stops them after).

    python -m loadtest.chaos --scale 3
    python -m loadtest.chaos --scale 2 -k "gateway or redis"

The table is printed by the suite and written to ``artifacts/faults.md``; the exit
status is pytest's (0: every scenario passed).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SERVICES = ROOT / "scripts" / "services.sh"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m loadtest.chaos", description=__doc__)
    parser.add_argument("--scale", type=float, default=1.0, help="size factor (default 1)")
    parser.add_argument("-k", dest="keyword", help="only scenarios matching (pytest -k)")
    parser.add_argument("-x", dest="exitfirst", action="store_true", help="stop at a failure")
    return parser


def _services_up() -> bool:
    """Start Kafka and Redis unless the environment names them; True if started here."""
    if os.environ.get("ODDSTREAM_KAFKA") and os.environ.get("ODDSTREAM_REDIS"):
        return False
    out = subprocess.run(  # noqa: S603 - our own script, fixed arguments
        [str(SERVICES), "up"], check=True, stdout=subprocess.PIPE, text=True, timeout=300
    ).stdout
    for line in out.splitlines():
        name, _, value = line.partition("=")
        if name in {"ODDSTREAM_KAFKA", "ODDSTREAM_REDIS"}:
            os.environ[name] = value.strip("'\"")
    return True


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.scale <= 0:
        print("chaos: --scale must be positive", file=sys.stderr)
        return 2
    started = _services_up()
    os.environ["ODDSTREAM_FAULTS_SCALE"] = str(args.scale)
    pytest_args = ["tests/faults", "-q", "-p", "no:cacheprovider"]
    if args.keyword:
        pytest_args += ["-k", args.keyword]
    if args.exitfirst:
        pytest_args.append("-x")
    try:
        # A child process, so the suite starts on a clean interpreter and event loop.
        return subprocess.run(  # noqa: S603 - this interpreter, fixed arguments
            [sys.executable, "-m", "pytest", *pytest_args], cwd=ROOT, check=False
        ).returncode
    finally:
        if started:
            subprocess.run([str(SERVICES), "down"], check=False, timeout=120)  # noqa: S603


if __name__ == "__main__":
    sys.exit(main())
