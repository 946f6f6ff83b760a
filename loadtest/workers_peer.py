"""The real ``oddstream gateway`` with ``--workers N``, fed through Redis as a book processor
feeds it: the scaling rows of ``ws_5k`` (``oddstream_workers1`` / ``oddstream_workers2``)
and the 40k-connection hold.

This process seeds the Redis store (``ODDSTREAM_REDIS``, one database the run owns and
flushes) with the benchmark's markets, starts ``python -m oddstream gateway --workers N``
(auth off, no per-address cap, operator listeners on free ports), and publishes each delta
on its event's route with the store's own transaction (``RedisStore.write_and_publish``,
what ``books`` does), so every worker's relay receives it. The benchmark measures the
gateway's whole process tree (the supervisor and its workers).

    python -m loadtest.workers_peer --board /dev/shm/x --port 0 --workers 2

Prints ``oddstream_workers: pid N`` and ``oddstream_workers: serving on
http://127.0.0.1:PORT/``, or ``oddstream_workers: not available (why)`` and exits 3: no
``ODDSTREAM_REDIS``, or a gateway that rejects ``--workers`` (a branch without it).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from loadtest import peer, procs
from loadtest.board import Board
from loadtest.payloads import DeltaSource, events, market_ids, now_ms, snapshots

NAME = "oddstream_workers"
_START_TIMEOUT_S = 60.0


def redis_url(db: int) -> str | None:
    url = os.environ.get("ODDSTREAM_REDIS", "")
    if not url:
        return None
    return url.rsplit("/", 1)[0] + f"/{db}" if url.rsplit("/", 1)[-1].isdigit() else url


def gateway_argv(url: str, port: int, ops_port: int, workers: int) -> list[str]:
    return procs.python(
        "oddstream.cli",
        "gateway",
        "--workers",
        str(workers),
        "--redis",
        url,
        "--port",
        str(port),
        "--ops-port",
        str(ops_port),
        "--auth",
        "none",
        "--max-connections-per-ip",
        "0",
        "--log-level",
        "warning",
    )


async def run(board: Board, args: argparse.Namespace, work: Path) -> int:
    import redis.asyncio as aioredis

    from channels.names import route
    from channels.redis_store import RedisStore
    from channels.store import Batch

    url = redis_url(args.redis_db)
    assert url is not None
    markets = market_ids(args.markets)
    owned = aioredis.from_url(url)  # The database this run owns: flushed before and after.
    await owned.flushdb()
    store = await RedisStore.connect(url)
    ts = now_ms()
    books = snapshots(markets, ts)
    await store.write(
        Batch(
            snapshots={s.market_id: s for s in books},
            events={e.event_id: e for e in events(markets, ts)},
        )
    )
    # The public port and a block for the workers' operator listeners (worker i: + i),
    # chosen together so that none is another's.
    port, *ops = procs.free_ports(1 + args.workers, block=True)
    port = args.port or port
    ops_port = ops[0]
    log = (work / "gateway.log").open("wb")
    proc = await asyncio.create_subprocess_exec(
        *gateway_argv(url, port, ops_port, args.workers),
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=procs.ROOT,
    )
    stop = peer.stop_on_signals()
    try:
        deadline = time.monotonic() + _START_TIMEOUT_S
        ready = await peer.wait_port(port, deadline)
        for i in range(args.workers):  # Every worker serving, not only the port bound.
            ready = ready and await _ready(ops_port + i, deadline)
        if not ready or proc.returncode is not None:
            tail = (work / "gateway.log").read_text(errors="replace")[-400:]
            print(f"{NAME}: not available (the gateway did not start: {tail!r})", flush=True)
            return peer.UNAVAILABLE
        source = DeltaSource(markets)
        # Published as a book processor publishes: once, on the event's route.
        channels = {s.market_id: (route(s.sport, s.event_id),) for s in books}

        async def publish(n: int) -> None:
            publications = []
            for _ in range(n):
                payload = source.next()
                publications.append((channels[source.market], payload))
            await store.write_and_publish(Batch(), publications)

        url = f"http://127.0.0.1:{port}/"
        await peer.announce_and_drive(NAME, proc.pid, url, board, publish, stop)
        return 0
    finally:
        await peer.stop_process(proc, 15)
        log.close()
        await store.close()
        await owned.flushdb()
        await owned.aclose()


async def _ready(ops_port: int, deadline: float) -> bool:
    """Whether a worker's ``/readyz`` answers 200 before ``deadline``."""
    import httpx

    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{ops_port}") as http:
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if (await http.get("/readyz", timeout=2)).status_code == 200:
                    return True
            await asyncio.sleep(0.2)  # Polling a child's start-up, bounded by the deadline.
    return False


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--redis-db", type=int, default=3, help="the Redis database it owns")


def _missing() -> str | None:
    if redis_url(0) is None:
        return "ODDSTREAM_REDIS is not set (scripts/services.sh up)"
    probe = subprocess.run(  # noqa: S603 - fixed argv
        procs.python("oddstream.cli", "gateway", "--help"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=procs.ROOT,
    )
    if "--workers" not in probe.stdout:
        return "this gateway has no --workers (oddstream gateway --help does not list it)"
    return None


async def _serve(board: Board, args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="oddstream-workers-") as tmp:
        return await run(board, args, Path(tmp))


def main(argv: list[str] | None = None) -> int:
    return peer.main(NAME, argv, _serve, arguments=_arguments, unavailable=_missing)


if __name__ == "__main__":
    sys.exit(main())
