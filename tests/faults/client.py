"""Resilient test clients that behave like the real SDK.

A client follows events and lobbies, rebuilds books with ``protocol.apply`` from exactly
what it receives, and survives anything the network or a gateway does to it:

- on any disconnect (or a ``reconnect`` message) it reconnects, to the next URL of its
  list, with jittered exponential backoff (or after the ``reconnect``'s ``after_ms``),
  and resumes with the position of every book it holds plus its events and lobbies
  (WebSocket: a ``resume`` command; SSE: the last ``id:`` as ``Last-Event-ID``);
- when nothing at all arrives for ``dead_after_s`` (heartbeats stopped), it treats the
  connection as dead and does the same;
- on a delta it cannot apply (``ApplyError``: gap, stale, epoch) it counts it and heals
  the market (WebSocket: ``resume`` for that market on the live connection; SSE: a fresh
  stream), never applying across a hole.

Everything it held is kept for the checker: each market's sequence of states (what a
screen showed), and counters (:class:`ClientStats`).
"""

from __future__ import annotations

import asyncio
import random
import socket
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Self

import httpx
import msgspec
import websockets
from websockets.asyncio.client import ClientConnection

import protocol
from protocol import Ack, ApplyError, Delta, EventState, Position, Reconnect, Snapshot

Kind = Literal["snapshot", "reset", "conflated", "delta"]


@dataclass
class ClientStats:
    messages: int = 0
    snapshots: int = 0
    """Snapshots taken as the start of a stream (first subscription, fresh SSE stream)."""
    resets: int = 0
    """Snapshots flagged ``reset`` (the server could not resume exactly) and snapshots
    that replaced a book the client held without a resume being asked for it (an SSE
    stream whose token did not cover the market)."""
    deltas: int = 0
    """Deltas applied."""
    gaps: int = 0
    """Deltas that skipped a seq (detected by ``apply``: never applied)."""
    duplicates: int = 0
    """Deltas already applied (stale seq) that arrived again (never applied)."""
    epoch_breaks: int = 0
    """Deltas of another epoch than the book held (never applied)."""
    checksum_failures: int = 0
    """Deltas after which the book would not have the delta's ``crc`` (never applied)."""
    repeated_snapshots: int = 0
    """Snapshots of the very book already held (harmless, but not promised)."""
    reset_distances: list[int] = field(default_factory=list)
    """For each ``reset`` snapshot answering a position of the same epoch: its seq minus
    the position's (negative: the server sent an older book than the client held)."""
    conflated: int = 0
    """Snapshots without ``reset`` that moved a book forward in its epoch outside a
    resume: a slow client's queued updates folded into one exact book (conflation)."""
    regressions: int = 0
    """Snapshots without ``reset`` that took a book back to an older seq of its epoch: an
    older price on screen than the one already shown."""
    needless_resets: int = 0
    """``reset`` snapshots answering a position whose missed deltas were all within the
    history window (``history_size``) of the same epoch: guarantee 3 says those are
    replayed, not reset. Not a wrong book; reported."""
    unflagged: int = 0
    """Undetected gaps: a snapshot without ``reset`` that moved a market the client had
    resumed to another position than its own (the client would have trusted it)."""
    healing_skipped: int = 0
    """Deltas ignored while a market was being healed (already superseded)."""
    orphans: int = 0
    """Deltas for a market the client held no book of."""
    reconnects: int = 0
    drains: int = 0
    """``reconnect`` messages received."""
    drain_position_mismatches: int = 0
    """Positions of a ``reconnect`` that differ from the client's own books."""
    heals: int = 0
    """Resume commands (or fresh SSE streams) sent to heal a market."""
    errors: int = 0
    """``error`` messages received."""
    lags_ms: list[int] = field(default_factory=list)
    """now - ts of each live delta applied (stamped by the feed after the connection that
    delivered it opened), in arrival order."""
    catchup_lags_ms: list[int] = field(default_factory=list)
    """now - ts of each delta applied that the feed stamped before the connection opened:
    missed during an outage and replayed by a resume."""
    close_codes: Counter[int] = field(default_factory=Counter)

    @property
    def worst_lag_ms(self) -> int:
        return max(self.lags_ms, default=0)

    @property
    def worst_catchup_ms(self) -> int:
        return max(self.catchup_lags_ms, default=0)


def percentile(values: Sequence[int], q: float) -> int:
    """The ``q``-quantile (0-1) of ``values`` by nearest rank; 0 when empty."""
    if not values:
        return 0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class ClientFailed(Exception):
    """The client met something it must not retry (a 41xx close code)."""


class ResilientClient:
    """The transport-independent part: books, counters, state history, waiting."""

    transport = "?"

    def __init__(
        self,
        name: str,
        urls: Sequence[str],
        *,
        events: Sequence[str] = (),
        lobbies: Sequence[str] = (),
        dead_after_s: float = 4.0,
        backoff_s: tuple[float, float] = (0.05, 1.0),
        max_after_s: float = 3.0,
        history_size: int = 256,
    ):
        if not urls:
            raise ValueError("a client needs at least one URL")
        self.name = name
        self.urls = [u.rstrip("/") for u in urls]
        self.events = tuple(events)
        self.lobbies = tuple(lobbies)
        self.dead_after_s = dead_after_s
        self.backoff_s = backoff_s
        self.max_after_s = max_after_s
        self.history_size = history_size
        self.books: dict[str, Snapshot] = {}
        self.event_states: dict[str, EventState] = {}
        self.history: dict[str, list[tuple[Kind, Snapshot]]] = {}
        """Every state each market's book took, in order: what a screen showed."""
        self.stats = ClientStats()
        self.connected_to: str | None = None
        self.connections = 0
        self.failure: BaseException | None = None
        self._url_index = 0
        self._attempt = 0
        self._opened_ms = 0
        self._healing: set[str] = set()
        """Markets in doubt, waiting for the delta after their book or a snapshot."""
        self._restarting: set[str] = set()
        """Markets held when a stream resumed with a token: those the server does not
        resume start again with a snapshot (counted with the resets)."""
        self._resuming: dict[str, Position] = {}
        """Markets asked to continue from a position: a snapshot without ``reset`` that
        moves them elsewhere would be an undetected gap."""
        self._changed = asyncio.Event()
        self._connected = asyncio.Event()
        self._stopping = False
        self._next_delay: float | None = None
        self._task: asyncio.Task[None] | None = None

    # -- lifecycle ------------------------------------------------------------------------

    def start(self, first_url: int = 0) -> Self:
        self._url_index = first_url % len(self.urls)
        self._task = asyncio.create_task(self._run(), name=f"client {self.name}")
        return self

    async def close(self) -> None:
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while not self._stopping:
            url = self.urls[self._url_index]
            self._next_delay = None
            self._attempt += 1
            try:
                await self._session(url)
            except ClientFailed as exc:
                self.failure = exc
                self._changed.set()
                return
            except (OSError, TimeoutError, websockets.WebSocketException, httpx.HTTPError):
                pass  # Any disconnect: reconnect and resume.
            finally:
                if self.connected_to is not None and not self._stopping:
                    self.stats.reconnects += 1
                self.connected_to = None
                self._connected.clear()
                self._changed.set()
            if self.stopping:
                return
            delay = self._next_delay
            if delay is None:
                # Exponential backoff with +-50 % jitter, from the first retry on, so a
                # fleet cut at once does not come back in the same instant.
                low, high = self.backoff_s
                delay = min(high, low * 2 ** min(self._attempt, 10)) * random.uniform(0.5, 1.5)
            self._url_index = (self._url_index + 1) % len(self.urls)
            await asyncio.sleep(delay)  # Backoff between attempts, by design.

    @property
    def stopping(self) -> bool:
        """Set by :meth:`close` (re-read after every await: it changes meanwhile)."""
        return self._stopping

    async def _session(self, url: str) -> None:
        raise NotImplementedError

    def _opened(self, url: str) -> None:
        self.connected_to = url
        self._opened_ms = now_ms()
        self.connections += 1
        self._attempt = 0  # It got through: the backoff starts over.
        self._connected.set()

    # -- the book rules ------------------------------------------------------------------

    def positions(self) -> tuple[Position, ...]:
        return tuple(
            Position(market_id=m, epoch=b.epoch, seq=b.seq) for m, b in sorted(self.books.items())
        )

    def take(self, message: protocol.ServerMessage, received_ms: int | None = None) -> list[str]:
        """Apply one server message; returns the markets that need healing."""
        stats = self.stats
        stats.messages += 1
        heal: list[str] = []
        match message:
            case Snapshot():
                self._snapshot(message)
            case Delta():
                m = message.market_id
                book = self.books.get(m)
                if book is None:
                    stats.orphans += 1
                elif m in self._healing and not (
                    message.epoch == book.epoch and message.seq == book.seq + 1
                ):
                    stats.healing_skipped += 1
                else:
                    try:
                        new = protocol.apply(book, message)
                    except ApplyError as exc:
                        if exc.reason == "gap":
                            stats.gaps += 1
                        elif exc.reason == "stale":
                            stats.duplicates += 1
                        elif exc.reason == "checksum":
                            stats.checksum_failures += 1
                        else:
                            stats.epoch_breaks += 1
                        if m not in self._healing:
                            self._healing.add(m)
                            heal.append(m)
                    else:
                        self._healing.discard(m)
                        self._resuming.pop(m, None)
                        self.books[m] = new
                        self.history.setdefault(m, []).append(("delta", new))
                        stats.deltas += 1
                        now = now_ms() if received_ms is None else received_ms
                        if message.ts >= self._opened_ms:
                            stats.lags_ms.append(now - message.ts)
                        else:
                            stats.catchup_lags_ms.append(now - message.ts)
            case EventState():
                held = self.event_states.get(message.event_id)
                if held is None or message.seq >= held.seq:
                    self.event_states[message.event_id] = message
            case Ack():
                self._ack(message)
            case Reconnect():
                self._reconnect(message)
            case protocol.Error():
                stats.errors += 1
            case _:
                pass
        self._changed.set()
        return heal

    def _snapshot(self, snap: Snapshot) -> None:
        m = snap.market_id
        held = self.books.get(m)
        resumed = self._resuming.pop(m, None)
        restarted = m in self._restarting
        self._restarting.discard(m)
        stats = self.stats
        kind: Kind = "snapshot"
        if snap.reset:
            stats.resets += 1
            kind = "reset"
            if resumed is not None and resumed.epoch == snap.epoch:
                stats.reset_distances.append(snap.seq - resumed.seq)
                if snap.seq - resumed.seq <= self.history_size:
                    stats.needless_resets += 1
        elif held is None:
            stats.snapshots += 1
        elif resumed is not None:
            if (snap.epoch, snap.seq) != (held.epoch, held.seq):
                # Asked to continue from our position, told to trust a book elsewhere,
                # without the reset flag: deltas may have been skipped unannounced.
                stats.unflagged += 1
        elif restarted or snap.epoch != held.epoch:
            # A stream started again without a resume (an SSE market the token did not
            # cover, a new epoch): the snapshot replaces the book, as documented.
            stats.resets += 1
            kind = "reset"
        elif getattr(snap, "conflated", False) or snap.seq > held.seq:
            stats.conflated += 1  # A slow client's queued updates, folded into one book.
            kind = "conflated"
            if snap.seq <= held.seq:
                stats.regressions += 1
        elif snap.seq < held.seq:
            stats.regressions += 1  # An older book than the one on screen.
        else:
            stats.repeated_snapshots += 1
        self._healing.discard(m)
        self.books[m] = snap
        self.history.setdefault(m, []).append((kind, snap))

    def _ack(self, ack: Ack) -> None:
        if ack.command == "resume":
            self._resumed(ack)

    def _resumed(self, ack: Ack) -> None:
        """A resume was acknowledged: markets it does not list no longer exist."""
        for m in list(self._resuming):
            if m not in ack.markets and m not in self._healing:
                self._resuming.pop(m)

    def _reconnect(self, message: Reconnect) -> None:
        """The gateway drains: its positions must be exactly the client's books (every
        frame before the message has been applied), no more, no fewer."""
        self.stats.drains += 1
        listed = {p.market_id for p in message.positions}
        for p in message.positions:
            book = self.books.get(p.market_id)
            if p.market_id in self._healing:
                continue  # In doubt on our side; the resume sorts it out.
            if book is None or (book.epoch, book.seq) != (p.epoch, p.seq):
                self.stats.drain_position_mismatches += 1
        self.stats.drain_position_mismatches += len(set(self.books) - listed)
        self._next_delay = min(self.max_after_s, message.after_ms / 1000)

    # -- waiting ---------------------------------------------------------------------------

    async def wait_connected(self, timeout: float = 20) -> None:
        async with asyncio.timeout(timeout):
            await self._connected.wait()

    async def wait_until(self, predicate: Callable[[], bool], timeout: float = 30) -> None:
        """Until ``predicate()`` holds, re-checked after every message or disconnect."""
        async with asyncio.timeout(timeout):
            while not predicate():
                if self.failure is not None:
                    raise self.failure
                self._changed.clear()
                await self._changed.wait()

    async def wait_books(self, targets: Mapping[str, tuple[str, int]], timeout: float = 30) -> bool:
        """Until every market of ``targets`` is held at exactly (epoch, seq) (True), or
        one is held past it in the same epoch (False: the server moved on)."""

        def held(m: str, at: tuple[str, int]) -> bool:
            return (b := self.books.get(m)) is not None and (b.epoch, b.seq) == at

        def beyond() -> bool:
            return any(
                (b := self.books.get(m)) is not None and b.epoch == at[0] and b.seq > at[1]
                for m, at in targets.items()
            )

        await self.wait_until(
            lambda: beyond() or all(held(m, at) for m, at in targets.items()), timeout
        )
        return not beyond()

    def covers(self, snap: Snapshot) -> bool:
        """Whether this client's subscriptions include the market."""
        return snap.event_id in self.events or (snap.main and snap.sport in self.lobbies)


class WsClient(ResilientClient):
    """The WebSocket client. ``read_rate`` (messages/s) makes it a slow reader, and
    ``rcvbuf`` shrinks its socket receive buffer, so that back-pressure reaches the
    gateway sooner; ``conflate_ms`` asks for at most one update per market per interval
    (in ``subscribe``/``resume``, or the URL where the protocol lacks the field)."""

    transport = "ws"

    def __init__(
        self,
        name: str,
        urls: Sequence[str],
        *,
        read_rate: float | None = None,
        rcvbuf: int | None = None,
        conflate_ms: int | None = None,
        **kwargs: object,
    ):
        super().__init__(name, urls, **kwargs)  # type: ignore[arg-type]
        self.read_rate = read_rate
        self.rcvbuf = rcvbuf
        self.conflate_ms = conflate_ms
        # The command field where the protocol has it, else the URL (the older form).
        in_command = "conflate_ms" in protocol.Subscribe.__struct_fields__
        self._conflate: dict[str, Any] = (
            {"conflate_ms": conflate_ms} if conflate_ms and in_command else {}
        )
        self.query = f"conflate_ms={conflate_ms}" if conflate_ms and not in_command else ""
        self._conn: ClientConnection | None = None

    async def _session(self, url: str) -> None:
        ws_url = "ws" + url.removeprefix("http") + "/ws" + (f"?{self.query}" if self.query else "")
        sock = await self._socket(url) if self.rcvbuf else None
        try:
            async with websockets.connect(
                ws_url,
                subprotocols=[protocol.SUBPROTOCOL_JSON],  # type: ignore[list-item]
                open_timeout=5,
                close_timeout=2,
                ping_interval=None,  # Liveness is the protocol's heartbeat.
                max_size=2**22,
                max_queue=4 if self.read_rate else 64,
                sock=sock,
            ) as conn:
                self._conn = conn
                self._opened(url)
                await self._subscribe(conn)
                await self._read(conn)
        except websockets.ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd is not None else 1006
            self.stats.close_codes[code] += 1
            if 4100 <= code < 4200:
                raise ClientFailed(f"{self.name}: closed with {code}, not retriable") from exc
            raise
        finally:
            self._conn = None

    async def _socket(self, url: str) -> socket.socket:
        hostport = url.split("://", 1)[1]
        host, _, port = hostport.rpartition(":")
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf or 0)
        sock.setblocking(False)
        try:
            async with asyncio.timeout(5):
                await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
        except BaseException:
            sock.close()
            raise
        return sock

    async def _subscribe(self, conn: ClientConnection) -> None:
        positions = self.positions()
        if positions:
            self._resuming = {p.market_id: p for p in positions}
            command: protocol.ClientCommand = protocol.Resume(
                positions=positions,
                events=self.events,
                lobbies=self.lobbies,
                id="resume",
                **self._conflate,
            )
        else:
            command = protocol.Subscribe(
                events=self.events, lobbies=self.lobbies, id="sub", **self._conflate
            )
        await conn.send(protocol.encode(command).decode())

    async def _read(self, conn: ClientConnection) -> None:
        while True:
            try:
                async with asyncio.timeout(self.dead_after_s):
                    raw = await conn.recv()
            except TimeoutError:
                conn.transport.abort()  # Dead: no close handshake on a stalled path.
                raise
            if self.read_rate:
                await asyncio.sleep(1 / self.read_rate)  # A slow reader, by design.
            try:
                message = protocol.decode_server(raw)
            except msgspec.DecodeError:
                continue  # A message type this client does not know: skip it.
            heal = self.take(message)
            if heal:
                self.stats.heals += 1
                for m in heal:
                    book = self.books[m]
                    self._resuming[m] = Position(market_id=m, epoch=book.epoch, seq=book.seq)
                resume = protocol.Resume(
                    positions=tuple(self._resuming[m] for m in heal), id="heal"
                )
                await conn.send(protocol.encode(resume).decode())

    def faster(self) -> None:
        """Stop reading slowly (the slow client catches up)."""
        self.read_rate = None


class SseClient(ResilientClient):
    """The SSE client: ``/sse?events=...&lobbies=...``, resuming with ``Last-Event-ID``."""

    transport = "sse"

    def __init__(self, name: str, urls: Sequence[str], **kwargs: object):
        super().__init__(name, urls, **kwargs)  # type: ignore[arg-type]
        self.last_event_id: str | None = None
        self._fresh = False

    async def _session(self, url: str) -> None:
        params = {}
        if self.events:
            params["events"] = ",".join(self.events)
        if self.lobbies:
            params["lobbies"] = ",".join(self.lobbies)
        headers = {"Accept": "text/event-stream"}
        if self.last_event_id is not None and not self._fresh:
            headers["Last-Event-ID"] = self.last_event_id
            self._restarting = set(self.books)
        else:
            # A fresh stream: every market starts again from a snapshot.
            self.books.clear()
            self.last_event_id = None
        self._fresh = False
        self._resuming.clear()
        self._healing.clear()
        timeout = httpx.Timeout(5.0, read=self.dead_after_s)
        async with (
            httpx.AsyncClient(base_url=url, timeout=timeout) as http,
            http.stream("GET", "/sse", params=params, headers=headers) as response,
        ):
            if response.status_code != 200:
                body = await response.aread()
                if 400 <= response.status_code < 500 and response.status_code != 404:
                    raise ClientFailed(f"{self.name}: SSE refused: {response.status_code} {body!r}")
                raise httpx.HTTPStatusError(
                    f"SSE {response.status_code}", request=response.request, response=response
                )
            self._opened(url)
            event_id: str | None = None
            async for line in response.aiter_lines():
                if line.startswith("id:"):
                    event_id = line[3:].strip()
                elif line.startswith("data:"):
                    try:
                        message = protocol.decode_server(line[5:].strip())
                    except msgspec.DecodeError:
                        event_id = None
                        continue
                    heal = self.take(message)
                    if event_id is not None:
                        self.last_event_id = event_id
                    event_id = None
                    if heal:
                        # The token names positions past the hole: start a fresh stream.
                        self.stats.heals += 1
                        self._fresh = True
                        self._next_delay = 0.0
                        return
        raise httpx.RemoteProtocolError("SSE stream ended")

    def _ack(self, ack: Ack) -> None:
        if ack.command == "resume":
            # Learnt from the answer: the markets the token resumed must continue exactly.
            for m in ack.markets:
                self._restarting.discard(m)
                book = self.books.get(m)
                if book is not None:
                    self._resuming[m] = Position(market_id=m, epoch=book.epoch, seq=book.seq)
