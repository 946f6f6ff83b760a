"""What every process role shares: its event loop and how it fails at start-up."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any


class Failed(Exception):
    """A role cannot run; ``message`` says why, naming the setting at fault, and the
    command exits with ``status`` (2: a wrong setting, 1: a service unreachable)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def run(main: Coroutine[Any, Any, None]) -> int:
    """Run a role's ``main`` on uvloop where there is one; the exit status."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on POSIX
        asyncio.run(main)
    else:
        uvloop.run(main)
    return 0
