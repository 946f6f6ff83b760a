"""Graceful drain: SIGTERM makes `oddstream dev` tell each client where it stands, close it
with "reconnect and resume", and exit 0 within the deadline."""

from __future__ import annotations

import asyncio
import os
import signal
import sys

import pytest
import websockets

import protocol
from protocol import CloseCode
from tests.component.stack import Books


async def test_sigterm_drains_clients_with_positions_and_exits_zero() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "oddstream.cli",
        "dev",
        "--port",
        "0",
        "--rate",
        "400",
        "--web",
        "off",
        "--drain-s",
        "3",
        "--ops-port",
        "0",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        url = line.split("serving on ")[1].split()[0].rstrip("/")
        books = Books()
        async with websockets.connect(url.replace("http", "ws") + "/ws") as conn:
            await conn.send('{"type":"subscribe","lobbies":["football"]}')
            async with asyncio.timeout(20):
                while not any(s.seq > 1 for s in books.markets.values()):
                    books.take(protocol.decode_server(await conn.recv()))
            proc.send_signal(signal.SIGTERM)
            reconnect = None
            with pytest.raises(websockets.ConnectionClosed) as closed:
                async with asyncio.timeout(10):
                    while True:
                        message = protocol.decode_server(await conn.recv())
                        books.take(message)
                        if isinstance(message, protocol.Reconnect):
                            reconnect = message
            assert closed.value.rcvd is not None
            assert closed.value.rcvd.code == CloseCode.GOING_AWAY
        assert reconnect is not None
        assert reconnect.positions, "a lobby client holds markets"
        for position in reconnect.positions:
            book = books.markets[position.market_id]
            assert (position.epoch, position.seq) == (book.epoch, book.seq)
        assert await asyncio.wait_for(proc.wait(), 10) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
