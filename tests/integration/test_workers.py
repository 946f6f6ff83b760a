"""``oddstream gateway --workers N`` on a real Redis: the workers share one port, drain
together on SIGTERM, a worker that dies is started again, and a start-up failure fails
the command once (docs/deployment.md, "Every core of a node")."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import urllib.request
from pathlib import Path

import pytest
import websockets

import protocol
from protocol import CloseCode
from tests.integration.procs import Proc, processes, start

CLIENTS = 40


def _free_port_pair() -> int:
    """A port ``p`` with ``p + 1`` free too (the operator ports of two workers)."""
    for _ in range(50):
        with socket.socket() as first:
            first.bind(("127.0.0.1", 0))
            port = first.getsockname()[1]
            with socket.socket() as second, contextlib.suppress(OSError):
                second.bind(("127.0.0.1", port + 1))
                return port
    raise AssertionError("no two consecutive free ports")


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as answer:
        return str(answer.read().decode())


def _connections(ops_port: int) -> int:
    """The ``oddstream_connections`` gauge of the worker whose operator port this is."""
    for line in _get(f"http://127.0.0.1:{ops_port}/metrics").splitlines():
        if line.startswith("oddstream_connections "):
            return int(float(line.split()[1]))
    raise AssertionError(f"no oddstream_connections on {ops_port}")


def _workers(supervisor: int) -> set[int]:
    children = Path(f"/proc/{supervisor}/task/{supervisor}/children").read_text()
    return {int(pid) for pid in children.split()}


async def _gateway(procs: list[Proc], redis_url: str, ops_port: int, *extra: str) -> Proc:
    args = ["gateway", "--auth", "none", "--redis", redis_url, "--port", "0", "--workers", "2"]
    env = {"ODDSTREAM_OPS_PORT": str(ops_port)}
    return await start(procs, "gateway", [*args, "--log-level", "info", *extra], env)


async def test_workers_share_the_port_and_drain_together(redis_url: str) -> None:
    ops = _free_port_pair()
    async with processes() as procs:
        gateway = await _gateway(procs, redis_url, ops, "--drain-s", "2")
        url = (await gateway.url()).replace("http", "ws") + "/ws"
        conns = [await websockets.connect(url) for _ in range(CLIENTS)]
        try:
            for conn in conns:  # Every connection has been served (a hello) before counting.
                await conn.send(json.dumps({"type": "ping"}))
                await asyncio.wait_for(conn.recv(), 10)
            spread = [_connections(ops), _connections(ops + 1)]
            assert sum(spread) == CLIENTS
            assert min(spread) > 0, f"the kernel gave every connection to one worker: {spread}"

            gateway.proc.send_signal(signal.SIGTERM)
            for conn in conns:
                told = False
                with pytest.raises(websockets.ConnectionClosed) as closed:
                    async with asyncio.timeout(15):
                        while True:
                            message = protocol.decode_server(await conn.recv())
                            told = told or isinstance(message, protocol.Reconnect)
                assert told, "every client of every worker is told to reconnect"
                assert closed.value.rcvd is not None
                assert closed.value.rcvd.code == CloseCode.GOING_AWAY
            assert await asyncio.wait_for(gateway.proc.wait(), 20) == 0
        finally:
            for conn in conns:
                await conn.close()


async def test_a_dead_worker_is_started_again(redis_url: str) -> None:
    ops = _free_port_pair()
    async with processes() as procs:
        gateway = await _gateway(procs, redis_url, ops)
        await gateway.url()
        before = _workers(gateway.proc.pid)
        assert len(before) == 2
        victim = min(before)
        os.kill(victim, signal.SIGKILL)
        await gateway.wait_line("starting it again", timeout=20)
        await gateway.wait_line("a restarted worker is serving", timeout=30)
        after = _workers(gateway.proc.pid)
        assert len(after) == 2 and victim not in after
        assert '"ready"' in _get(f"http://127.0.0.1:{ops}/readyz")
        assert '"ready"' in _get(f"http://127.0.0.1:{ops + 1}/readyz")
        assert await gateway.stop() == 0


async def test_a_start_up_failure_fails_the_command_once() -> None:
    async with processes() as procs:
        gateway = await _gateway(procs, "redis://127.0.0.1:1/0", 0)
        code = await asyncio.wait_for(gateway.proc.wait(), 30)
        await gateway.next_line(timeout=5)
        assert code == 1, gateway.output()
        assert "127.0.0.1:1" in gateway.output()
        assert not any("serving on" in line for line in gateway.lines)
