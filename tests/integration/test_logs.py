"""Real role processes log one JSON event per line on stderr (``docs/observability.md#logs``):
a book processor and a feed on real Kafka and Redis, every stderr line parsed."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from typing import Any

import pytest

from tests.harness import Space, isolated
from tests.integration.procs import ROOT

pytestmark = pytest.mark.integration

CONTRACT = {"ts", "level", "role", "logger", "message"}


async def start(args: list[str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "oddstream.cli", *args,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "ODDSTREAM_OPS_PORT": "0"}, cwd=ROOT,
    )  # fmt: skip


def event(line: bytes, role: str) -> dict[str, Any]:
    """One stderr line: a JSON object with the contract's fields, of ``role``."""
    parsed = json.loads(line)
    assert isinstance(parsed, dict), line
    assert parsed.keys() >= CONTRACT, parsed
    assert parsed["role"] == role, parsed
    return parsed


@pytest.fixture
async def space(kafka_bootstrap: str, redis_url: str) -> Space:
    return await isolated(kafka_bootstrap, redis_url, 7, "l")


async def test_roles_log_one_json_event_per_line(space: Space) -> None:
    books = await start(space.books_args(log_level="info"))
    try:
        assert books.stderr is not None
        seen: list[dict[str, Any]] = []
        async with asyncio.timeout(60):
            # Assigned partitions: the processor consumes what the feed sends next.
            while not any("assigned partitions" in e["message"] for e in seen):
                line = await books.stderr.readline()
                assert line, "books exited"
                seen.append(event(line, "books"))
            feed = await start(space.feed_args(seed=3, events=2, rate=20_000, limit=2000))
            assert feed.stderr is not None
            feed_lines = (await feed.stderr.read()).splitlines()
            assert await feed.wait() == 0
            books.send_signal(signal.SIGTERM)
            seen += [event(line, "books") for line in (await books.stderr.read()).splitlines()]
            assert await books.wait() == 0
    finally:
        if books.returncode is None:
            books.kill()
            await books.wait()
    messages = [event(line, "feed")["message"] for line in feed_lines]
    assert [m.split(" (")[0] for m in messages] == ["sent 1000 messages", "sent 2000 messages"]
    assert seen[-1]["message"].startswith("books: stopped: records=")
