"""The built web UI (``web/dist``: the shell with the React board and the Angular bet slip)
for ``oddstream dev``, rebuilt first when its sources are newer than the build.

Only ``oddstream dev`` calls this, once, before serving. It never raises for a missing or
broken toolchain: it answers ``None`` and the caller serves the plain demo page instead.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

#: Files at the top of ``web/`` whose change means a rebuild.
TOP_FILES = ("package.json", "package-lock.json", "tsconfig.base.json")
#: Folders of ``web/`` holding sources; tests and outputs inside them are skipped.
SOURCE_DIRS = ("packages", "apps", "scripts")
SOURCE_SUFFIXES = frozenset({".ts", ".tsx", ".mts", ".mjs", ".js", ".json", ".html", ".css"})
SKIP_DIRS = frozenset({"node_modules", "dist", ".angular", "test", "artifacts"})
#: A cold ``npm ci`` plus the build take about a minute here; this bounds a stuck one.
BUILD_TIMEOUT_S = 900.0


def ensure_built(web_dir: Path, *, timeout_s: float = BUILD_TIMEOUT_S) -> Path | None:
    """Return ``web_dir / "dist"`` once it holds a build at least as new as the sources.

    When a source (``package.json``, the lockfile, anything under ``packages/``, ``apps/``
    or ``scripts/``) is newer than ``dist/index.html``, runs ``npm ci`` (``npm install``
    without a lockfile) when ``node_modules`` is missing or older than the lockfile, then
    ``npm run build``, printing one line to stderr first. npm's own output goes to stderr
    too, so stdout keeps only what the caller prints.

    Returns ``None``, after a one-line warning on stderr, when ``web_dir`` has no
    ``package.json``, npm is not on ``PATH``, or a step fails or exceeds ``timeout_s``.
    """
    dist = web_dir / "dist"
    index = dist / "index.html"
    if not (web_dir / "package.json").is_file():
        _warn(f"no web UI sources in {web_dir}")
        return None
    if index.is_file() and newest_source_mtime(web_dir) <= index.stat().st_mtime:
        return dist
    npm = shutil.which("npm")
    if npm is None:
        _warn("npm is not installed, so the web UI cannot be built")
        return None
    print(
        f"oddstream: building the web UI in {web_dir} (npm run build; first time ~1-2 min) ...",
        file=sys.stderr,
        flush=True,
    )
    steps: list[list[str]] = []
    if _needs_install(web_dir):
        lockfile = (web_dir / "package-lock.json").is_file()
        steps.append([npm, "ci" if lockfile else "install", "--no-audit", "--no-fund"])
    steps.append([npm, "run", "build"])
    for step in steps:
        try:
            done = subprocess.run(  # noqa: S603 - fixed argv, no shell
                step,
                cwd=web_dir,
                stdin=subprocess.DEVNULL,
                stdout=sys.stderr,
                stderr=sys.stderr,
                timeout=timeout_s,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            _warn(f"`{' '.join(step[1:])}` failed: {exc}")
            return None
        if done.returncode != 0:
            _warn(f"`npm {' '.join(step[1:])}` exited {done.returncode}")
            return None
    if not index.is_file():
        _warn(f"the build did not produce {index}")
        return None
    return dist


def newest_source_mtime(web_dir: Path) -> float:
    """The newest modification time among the web UI's sources (0.0 when none)."""
    return max((p.stat().st_mtime for p in _sources(web_dir)), default=0.0)


def _sources(web_dir: Path) -> Iterator[Path]:
    for name in TOP_FILES:
        path = web_dir / name
        if path.is_file():
            yield path
    for name in SOURCE_DIRS:
        yield from _walk(web_dir / name)


def _walk(folder: Path) -> Iterator[Path]:
    if not folder.is_dir():
        return
    for entry in folder.iterdir():
        if entry.is_dir():
            if entry.name not in SKIP_DIRS:
                yield from _walk(entry)
        elif entry.suffix in SOURCE_SUFFIXES:
            yield entry


def _needs_install(web_dir: Path) -> bool:
    marker = web_dir / "node_modules" / ".package-lock.json"
    if not marker.is_file():
        return True
    lockfile = web_dir / "package-lock.json"
    return lockfile.is_file() and lockfile.stat().st_mtime > marker.stat().st_mtime


def _warn(reason: str) -> None:
    print(f"oddstream: {reason}; serving the plain demo page instead", file=sys.stderr, flush=True)
