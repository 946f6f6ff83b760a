"""py-spy sampling of a system under test, and a plain-text summary of where the time goes.

``python -m loadtest.bench --profile DIR`` samples the oddstream gateway during each
throughput phase (``py-spy record --nonblocking``: the process is not paused) and writes
``DIR/<scenario>-oddstream.txt`` (collapsed stacks, for flame graph tools) and
``DIR/<scenario>-oddstream.summary.txt``. Or, on any collapsed-stack file::

    python -m loadtest.profile DIR/ws_5k-oddstream.txt
"""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

_IDLE = ("Runner.run", "run_forever", "_run_once", "select (selectors.py")


def start(
    pid: int, seconds: float, out: Path, rate: int = 200, delay_s: float = 0
) -> subprocess.Popen[bytes] | None:
    """Start sampling ``pid`` for ``seconds`` (after ``delay_s``); None when py-spy is
    not installed. Bounded: py-spy stops by itself after ``seconds``."""
    exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(exe).exists():
        return None
    argv = [exe, "record", "--nonblocking", "--pid", str(pid)]
    argv += ["--duration", str(max(1, round(seconds))), "--rate", str(rate)]
    argv += ["--format", "raw", "--output", str(out)]
    if delay_s > 0:
        argv = ["sh", "-c", f'sleep {delay_s:g} && exec "$0" "$@"', *argv]
    return subprocess.Popen(  # noqa: S603 - argv built here
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def finish(
    sampler: subprocess.Popen[bytes] | None, out: Path, wait_s: float, log: Callable[[str], None]
) -> Path | None:
    """Wait up to ``wait_s`` for a sampler :func:`start` returned to stop, then write the
    summary of what it recorded next to ``out`` (``*.summary.txt``) and log its path;
    the summary's path, or None when nothing was sampled."""
    if sampler is None:
        return None
    with contextlib.suppress(subprocess.TimeoutExpired):
        sampler.wait(wait_s)
    if not out.exists():
        return None
    summary = out.with_suffix(".summary.txt")
    summary.write_text(summarize(out))
    log(f"  profile: {summary}")
    return summary


def _frame(frame: str) -> str:
    """``func (path/to/file.py:123)`` -> ``func (file.py)``: one entry per function."""
    match = re.match(r"(.*) \((.*?):\d+\)$", frame)
    if not match:
        return frame
    name, path = match.groups()
    parts = Path(path).parts
    short = "/".join(parts[-2:]) if len(parts) >= 2 else path
    return f"{name} ({short})"


def summarize(raw: Path, top: int = 25) -> str:
    """Self and inclusive time per function, busy samples only (the event loop waiting
    in ``Runner.run`` is idle)."""
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = idle = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        frames = [_frame(f) for f in stack.split(";") if f]
        total += n
        if not frames or any(frames[-1].startswith(i) for i in _IDLE):
            idle += n
            continue
        self_time[frames[-1]] += n
        for f in set(frames):
            inclusive[f] += n
    busy = total - idle
    lines = [
        f"samples {total}, busy {busy} ({100 * busy / max(1, total):.0f}%), "
        f"idle in the event loop {idle}",
        "",
        f"top {top} by self time (% of busy samples):",
    ]
    lines += [f"  {100 * n / max(1, busy):5.1f}%  {f}" for f, n in self_time.most_common(top)]
    lines += ["", f"top {top} by inclusive time (% of busy samples):"]
    lines += [f"  {100 * n / max(1, busy):5.1f}%  {f}" for f, n in inclusive.most_common(top)]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args:
        print("usage: python -m loadtest.profile COLLAPSED_STACKS.txt", file=sys.stderr)
        return 2
    print(summarize(Path(args[0])), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
