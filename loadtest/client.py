"""A lean benchmark client process: thousands of WebSocket or SSE connections on one
asyncio (uvloop) loop, counting what arrives into its slot of the scoreboard.

Run by ``loadtest.bench``, one process per few thousand connections::

    python -m loadtest.client --board /dev/shm/x --slot 0 --url ws://127.0.0.1:8000/ws \\
        --count 2500 --command '{"type":"subscribe","markets":["m1"]}'

Each connection is a bare :class:`asyncio.Protocol`: the HTTP upgrade (or the SSE
request), then frames parsed in place. Per received chunk it counts messages, deltas
(occurrences of ``"type":"delta"``, so a packed frame counts each of its deltas) and bytes;
while the board's record flag is set it also histograms, for each delta, the time from
its feed timestamp to now. ``ts`` is whole milliseconds, truncated, so half a millisecond
is added to it (the unbiased estimate); a single value is within +-0.5 ms.

Slow clients (``--slow-every K``: every K-th connection) get a small receive buffer and
read only 100 ms out of every second, so they fall behind at any realistic rate.

Bounded: connections have a time limit, the process exits at ``--deadline-s``, when the
board says stop, or when its parent goes away.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import resource
import socket
import sys
import time
from pathlib import Path
from typing import cast
from urllib.parse import urlsplit

from loadtest import wsframe
from loadtest.board import (
    BUCKETS,
    H_RECORD,
    H_STOP,
    S_BYTES,
    S_CLOSED,
    S_CONNECTED,
    S_DELTAS,
    S_DONE,
    S_FAILED,
    S_FRAMES,
    S_READY,
    S_SLOW_CLOSED,
    S_SLOW_DELTAS,
    S_SLOW_FRAMES,
    S_WORDS,
    Board,
    bucket_of,
)

DELTA = b'"type":"delta"'
TS = b'"ts":'
_SSE_TS = re.compile(rb'"type":"delta"[^\n]*?"ts":(\d+)')
_MAX_HEADER = 16384
_SLOW_RCVBUF = 4096
_SLOW_PERIOD_S = 1.0
_SLOW_READ_S = 0.1


def raise_nofile() -> int:
    """Raise the soft open-files limit to the hard one; returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


class Counters:
    """The process's slot, and the parsing shared by its connections."""

    def __init__(self, board: Board, slot: int):
        self.words = board.words
        self.base = board.base(slot)
        self.hist_fast = self.base + S_WORDS
        self.hist_slow = self.hist_fast + BUCKETS

    def add(self, field: int, n: int = 1) -> None:
        self.words[self.base + field] += n

    def recording(self) -> bool:
        return bool(self.words[H_RECORD])

    def latencies(self, ts_list: list[int], slow: bool) -> None:
        now_us = time.time_ns() / 1000
        words = self.words
        start = self.hist_slow if slow else self.hist_fast
        for ts in ts_list:
            words[start + bucket_of(now_us - ts * 1000 - 500)] += 1


class _Conn(asyncio.Protocol):
    """One client connection; subclasses parse the stream after the response head."""

    def __init__(self, counters: Counters, request: bytes, command: bytes | None, slow: bool):
        self.c = counters
        self.request = request
        self.command = command
        self.slow = slow
        self.transport: asyncio.Transport | None = None
        self.head = True
        self.rest = b""
        self.closed = False
        self.ready = False  # A delta has arrived.
        self.opened: asyncio.Future[bool] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.write(self.request)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_result(False)
        elif not self.closed:
            self.closed = True
            self.c.add(S_SLOW_CLOSED if self.slow else S_CLOSED)

    def data_received(self, data: bytes) -> None:
        if self.rest:
            data = self.rest + data
            self.rest = b""
        if self.head:
            end = data.find(b"\r\n\r\n")
            if end < 0:
                if len(data) > _MAX_HEADER:
                    self.fail()
                else:
                    self.rest = data
                return
            if not self.accept(data[: end + 4]):
                self.fail()
                return
            self.head = False
            self.opened.set_result(True)
            data = data[end + 4 :]
            if not data:
                return
        self.c.add(S_BYTES, len(data))
        self.rest = self.parse(data)

    def fail(self) -> None:
        if not self.opened.done():
            self.opened.set_result(False)
        if self.transport is not None:
            self.transport.abort()

    def accept(self, head: bytes) -> bool:
        raise NotImplementedError

    def parse(self, data: bytes) -> bytes:
        """Count what ``data`` holds; return the incomplete tail to keep."""
        raise NotImplementedError

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()


class WSConn(_Conn):
    answers_pings = False
    """Centrifugo's JSON protocol pings with an empty object (``{}``) and expects one back."""

    def accept(self, head: bytes) -> bool:
        if not head.startswith(b"HTTP/1.1 101"):
            return False
        if self.command is not None and self.transport is not None:
            self.transport.write(wsframe.client_frame(self.command))
        return True

    def parse(self, data: bytes) -> bytes:
        n = len(data)
        i = 0
        frames = 0
        deltas = 0
        stamps: list[int] | None = [] if self.c.recording() else None
        while n - i >= 2:
            b1 = data[i + 1] & 0x7F
            if b1 < 126:
                h = 2
            elif b1 == 126:
                if n - i < 4:
                    break
                b1 = (data[i + 2] << 8) | data[i + 3]
                h = 4
            else:
                if n - i < 10:
                    break
                b1 = int.from_bytes(data[i + 2 : i + 10], "big")
                h = 10
            start = i + h
            end = start + b1
            if end > n:
                break
            op = data[i] & 0x0F
            if op == wsframe.OP_TEXT or op == wsframe.OP_BINARY:
                frames += 1
                d = data.count(DELTA, start, end)
                if d:
                    deltas += d
                    if stamps is not None:
                        p = data.find(DELTA, start, end)
                        while p >= 0:
                            q = data.find(TS, p, end) + 5
                            stamps.append(int(data[q : q + 13]))
                            p = data.find(DELTA, q, end)
                if self.answers_pings and is_ping(data, start, end):
                    frames -= end - start == 2  # A ping alone is not a message.
                    if self.transport is not None:
                        self.transport.write(wsframe.client_frame(b"{}"))
            elif op == wsframe.OP_PING and self.transport is not None:
                self.transport.write(wsframe.client_frame(data[start:end], wsframe.OP_PONG))
            elif op == wsframe.OP_CLOSE:
                code = int.from_bytes(data[start : start + 2], "big") if b1 >= 2 else 1005
                self.on_close(code)
            i = end
        self.count(frames, deltas, stamps)
        return data[i:] if i < n else b""

    def on_close(self, code: int) -> None:
        if not self.closed:
            self.closed = True
            self.c.add(S_SLOW_CLOSED if self.slow else S_CLOSED)
        if self.transport is not None:
            with contextlib.suppress(RuntimeError):
                self.transport.write(wsframe.close_frame(code if code < 5000 else 1000))
            self.transport.close()

    def count(self, frames: int, deltas: int, stamps: list[int] | None) -> None:
        if frames:
            self.c.add(S_SLOW_FRAMES if self.slow else S_FRAMES, frames)
        if deltas:
            self.c.add(S_SLOW_DELTAS if self.slow else S_DELTAS, deltas)
            if not self.ready:
                self.ready = True
                self.c.add(S_READY)
        if stamps:
            self.c.latencies(stamps, self.slow)


def is_ping(data: bytes, start: int, end: int) -> bool:
    """Whether the message ``data[start:end]`` holds a Centrifugo ping: an empty object
    alone, or as one line of a message that joins several replies with newlines (what its
    server does when pushes are queued)."""
    if end - start == 2:
        return data[start:end] == b"{}"
    return (
        data.startswith(b"{}\n", start)
        or data.find(b"\n{}\n", start, end) >= 0
        or data.endswith(b"\n{}", start, end)
    )


class CentrifugoConn(WSConn):
    """A WebSocket client of Centrifugo's JSON protocol: ``--command`` holds its connect
    and subscribe commands (one per line, one frame); it answers the server's pings."""

    answers_pings = True


def event_end(body: bytes) -> int:
    """Where the last complete SSE event of ``body`` ends (0: none is complete). An event
    ends with a blank line: "\\n\\n", or "\\r\\n\\r\\n" (sse-starlette's default)."""
    lf, crlf = body.rfind(b"\n\n"), body.rfind(b"\n\r\n")
    return max(lf + 2 if lf >= 0 else 0, crlf + 3 if crlf >= 0 else 0)


class SSEConn(WSConn):
    """An SSE stream: the events are counted after de-chunking (``Transfer-Encoding:
    chunked``, as HTTP/1.1 servers stream) or straight from a close-delimited body."""

    def __init__(self, counters: Counters, request: bytes, command: bytes | None, slow: bool):
        super().__init__(counters, request, None, slow)
        self.chunked = False
        self.body = b""

    def accept(self, head: bytes) -> bool:
        if not head.startswith(b"HTTP/1.1 200") and not head.startswith(b"HTTP/1.0 200"):
            return False
        self.chunked = b"transfer-encoding: chunked" in head.lower()
        return True

    def parse(self, data: bytes) -> bytes:
        rest = b""
        if self.chunked:
            parts = []
            i = 0
            n = len(data)
            while i < n:
                eol = data.find(b"\r\n", i)
                if eol < 0:
                    break
                size = int(data[i:eol].split(b";", 1)[0] or b"0", 16)
                if eol + 2 + size + 2 > n:
                    break
                parts.append(data[eol + 2 : eol + 2 + size])
                i = eol + 2 + size + 2
            rest = data[i:]
            body = self.body + b"".join(parts)
        else:
            body = self.body + data
        cut = event_end(body)
        if cut == 0:
            self.body = body
            return rest
        events = body[:cut]
        self.body = body[cut:]
        frames = events.count(b"\n\n") + events.count(b"\n\r\n")
        deltas = events.count(DELTA)
        stamps = None
        if deltas and self.c.recording():
            stamps = [int(m) for m in _SSE_TS.findall(events)]
        self.count(frames, deltas, stamps)
        return rest


async def _connect(
    kind: type[_Conn],
    counters: Counters,
    host: str,
    port: int,
    request: bytes,
    command: bytes | None,
    slow: bool,
    timeout_s: float,
) -> _Conn | None:
    loop = asyncio.get_running_loop()
    conn = kind(counters, request, command, slow)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    if slow:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _SLOW_RCVBUF)
    try:
        async with asyncio.timeout(timeout_s):
            await loop.sock_connect(sock, (host, port))
            await loop.create_connection(lambda: conn, sock=sock)
            ok = await conn.opened
    except (OSError, TimeoutError):
        sock.close()
        conn.fail()
        return None
    if not ok:
        conn.fail()
        return None
    return conn


def _request(
    url: str, subprotocol: str | None, protocol: str = "oddstream"
) -> tuple[type[_Conn], str, int, bytes]:
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    port = parts.port or 80
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    lines = [f"GET {target} HTTP/1.1", f"Host: {host}:{port}"]
    kind: type[_Conn]
    if parts.scheme == "ws":
        kind = CentrifugoConn if protocol == "centrifugo" else WSConn
        lines += [
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {wsframe.new_key().decode()}",
            "Sec-WebSocket-Version: 13",
        ]
        if subprotocol:
            lines.append(f"Sec-WebSocket-Protocol: {subprotocol}")
    elif parts.scheme == "http":
        kind = SSEConn
        lines += ["Accept: text/event-stream", "Cache-Control: no-cache"]
    else:
        raise SystemExit(f"client: unsupported URL {url!r} (ws:// or http://)")
    return kind, host, port, ("\r\n".join(lines) + "\r\n\r\n").encode()


async def run(args: argparse.Namespace) -> None:
    board = Board.open(args.board)
    counters = Counters(board, args.slot)
    kind, host, port, request = _request(args.url, args.subprotocol, args.protocol)
    command = args.command.encode() if args.command else None
    commands = (
        [line for line in args.commands_file.read_bytes().splitlines() if line.strip()]
        if args.commands_file
        else []
    )
    parent = os.getppid()
    deadline = time.monotonic() + args.deadline_s
    conns: list[_Conn] = []
    gate = asyncio.Semaphore(args.concurrency)

    async def one(index: int) -> None:
        slow = args.slow_every > 0 and (args.first + index) % args.slow_every == 0
        async with gate:
            if board.get(H_STOP):
                return
            mine = commands[(args.first + index) % len(commands)] if commands else command
            conn = await _connect(
                kind, counters, host, port, request, mine, slow, args.connect_timeout_s
            )
        if conn is None:
            counters.add(S_FAILED)
        else:
            conns.append(conn)
            counters.add(S_CONNECTED)

    async def work() -> None:
        async with asyncio.TaskGroup() as group:
            for i in range(args.count):
                group.create_task(one(i))
        counters.add(S_DONE)
        await asyncio.Event().wait()  # Hold the connections until the watcher stops us.

    def should_stop() -> bool:
        # The board says stop, the time is up, or the orchestrator died: do not linger.
        return bool(board.get(H_STOP)) or time.monotonic() > deadline or os.getppid() != parent

    worker = asyncio.create_task(work())
    try:
        tick = 0
        slow: list[_Conn] = []
        while not should_stop() and not worker.done():
            if tick % 10 == 0:
                slow = [c for c in conns if c.slow]  # Connections still being opened.
            if slow:
                # Slow readers: read for _SLOW_READ_S out of every _SLOW_PERIOD_S.
                phase = tick % round(_SLOW_PERIOD_S / _SLOW_READ_S)
                for c in slow:
                    if c.transport is not None and not c.transport.is_closing():
                        if phase == 0:
                            c.transport.resume_reading()
                        elif phase == 1:
                            c.transport.pause_reading()
            tick += 1
            await asyncio.sleep(_SLOW_READ_S)  # The control cadence, by design.
    finally:
        worker.cancel()
        await asyncio.gather(worker, return_exceptions=True)
        for c in conns:
            c.close()
        await asyncio.sleep(0)
        board.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--board", type=Path, required=True)
    parser.add_argument("--slot", type=int, required=True)
    parser.add_argument("--url", required=True, help="ws://host:port/path or http://... (SSE)")
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--first", type=int, default=0, help="index of the first connection")
    parser.add_argument("--command", help="text frame sent after the WebSocket handshake")
    parser.add_argument(
        "--commands-file",
        type=Path,
        help="one command per line; connection i sends line i (mod their number)",
    )
    parser.add_argument("--subprotocol")
    parser.add_argument(
        "--protocol",
        choices=("oddstream", "centrifugo"),
        default="oddstream",
        help="centrifugo: answer its JSON protocol's pings",
    )
    parser.add_argument("--slow-every", type=int, default=0)
    parser.add_argument("--concurrency", type=int, default=128)
    parser.add_argument("--connect-timeout-s", type=float, default=30.0)
    parser.add_argument("--deadline-s", type=float, default=900.0)
    args = parser.parse_args(argv)
    limit = raise_nofile()
    if args.count + 16 > limit:
        print(
            f"client: {args.count} connections exceed the open-files limit {limit}", file=sys.stderr
        )
        return 2
    try:
        import uvloop

        uvloop.run(run(args))
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
