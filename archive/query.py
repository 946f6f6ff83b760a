"""The read side of the archive: history and results from MySQL (no Kafka here).

:class:`History` answers three questions, each bounded and paginated by an opaque
cursor (keyset pagination: a page costs the same wherever it starts):

- :meth:`History.market_history`: a market's book at an instant ``from_ts`` (rebuilt
  from the last snapshot before it plus the deltas after that, with
  :func:`protocol.apply`) and the messages after it up to ``to_ts``;
- :meth:`History.event_results`: every result row of an event (settlements, voids,
  dead-heat and void factors, rollbacks), in feed time order;
- :meth:`History.results`: the result rows of a sport between two instants.

Errors: :class:`QueryError` with ``code`` ``unknown_market`` / ``not_found`` (404 on
REST), ``bad_cursor`` / ``too_long`` (400), ``history_gap`` (409: the archive lacks a
message the book needs), ``unavailable`` (503: MySQL unreachable or
slower than the timeout). Every query runs on a bounded pool under a timeout.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any, Protocol

import msgspec

import protocol
from archive.db import DISCONNECTED, MysqlUrl, create_pool
from protocol import Delta, Snapshot

#: Largest page a caller may ask for, and the default.
MAX_PAGE = 1_000
DEFAULT_PAGE = 100
#: Most messages applied to rebuild one book at an instant: past it the answer is
#: ``too_long`` (a market whose last snapshot is that far back).
MAX_REBUILD = 100_000
_REBUILD_CHUNK = 5_000

_decode = msgspec.json.Decoder(Snapshot | Delta).decode


class QueryError(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


class ResultRow(msgspec.Struct, frozen=True):
    """One result row: a selection's result, or (``rollback``) its undoing."""

    market_id: str
    epoch: str
    seq: int
    selection_id: str
    event_id: str
    ts: int
    status: str | None
    dead_heat: str | None
    void_factor: str | None
    rollback: bool


class HistoryPage(msgspec.Struct, frozen=True):
    """``book``: the market at ``from_ts`` (``None`` on later pages, or when the market
    had no message yet then); ``changes``: the messages after it, oldest first;
    ``next``: the cursor of the next page, ``None`` at the end."""

    market_id: str
    book: Snapshot | None
    changes: list[Snapshot | Delta]
    next: str | None


class ResultsPage(msgspec.Struct, frozen=True):
    results: list[ResultRow]
    next: str | None


def encode_cursor(*key: object) -> str:
    """An opaque page cursor for ``key`` (:func:`decode_cursor` reads it back)."""
    return base64.urlsafe_b64encode(msgspec.json.encode(key)).decode().rstrip("=")


def decode_cursor(cursor: str, types: Sequence[type]) -> tuple[Any, ...]:
    """The key of a cursor, checked against ``types``; raises ``bad_cursor``."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        values = msgspec.json.decode(raw)
    except (binascii.Error, ValueError, msgspec.DecodeError):
        raise QueryError("bad_cursor", "the cursor is not one this API gave") from None
    if (
        not isinstance(values, list)
        or len(values) != len(types)
        or not all(type(v) is t for v, t in zip(values, types, strict=True))
    ):
        raise QueryError("bad_cursor", "the cursor is not one this API gave")
    return tuple(values)


_RESULT_COLUMNS = (
    "r.market_id, r.epoch, r.seq, r.selection_id, r.event_id, r.ts, r.status, r.dead_heat, "
    "r.void_factor, r.is_rollback"
)
#: The types of a results cursor's key: (ts, market_id, epoch, seq, selection_id).
RESULT_KEY_TYPES = (int, str, str, int, str)


def result_key(row: ResultRow) -> tuple[int, str, str, int, str]:
    """The order of result rows, and the key of a results cursor."""
    return (row.ts, row.market_id, row.epoch, row.seq, row.selection_id)


def after(ts: int) -> tuple[int, str, int]:
    """The history key (ts, epoch, seq) after every message of feed time ``ts``."""
    return (ts, "\U0010ffff", 2**62)


def results_page(rows: Sequence[ResultRow], limit: int) -> ResultsPage:
    """A page of the first ``limit`` of ``rows`` (read ``limit + 1`` to know whether
    more follow), with the cursor of the next page."""
    last = rows[limit - 1] if len(rows) > limit else None
    return ResultsPage(
        list(rows[:limit]), None if last is None else encode_cursor(*result_key(last))
    )


def history_page(
    market_id: str, book: Snapshot | None, changes: Sequence[Snapshot | Delta], limit: int
) -> HistoryPage:
    """A page of the first ``limit`` of ``changes`` (read ``limit + 1``), with ``book``
    and the cursor of the next page."""
    last = changes[limit - 1] if len(changes) > limit else None
    cursor = None if last is None else encode_cursor(last.ts, last.epoch, last.seq)
    return HistoryPage(market_id, book, list(changes[:limit]), cursor)


def result_row(r: Sequence[Any]) -> ResultRow:
    """A row of ``results`` (its columns in table order) as a :class:`ResultRow`."""
    return ResultRow(
        str(r[0]),
        str(r[1]),
        int(r[2]),
        str(r[3]),
        str(r[4]),
        int(r[5]),
        r[6],
        r[7],
        r[8],
        bool(r[9]),
    )


class HistorySource(Protocol):
    """What the gateway's history routes read: :class:`History` (MySQL) or
    :class:`archive.memory.MemoryHistory` (``oddstream dev``)."""

    async def market_history(
        self, market_id: str, from_ts: int, to_ts: int, *, limit: int, cursor: str | None
    ) -> HistoryPage: ...

    async def event_results(
        self, event_id: str, *, limit: int, cursor: str | None
    ) -> ResultsPage: ...

    async def results(
        self, sport: str, from_ts: int, to_ts: int, *, limit: int, cursor: str | None
    ) -> ResultsPage: ...

    async def close(self) -> None: ...


class History:
    """Queries over the archive through a pool of at most ``pool_size`` connections; each
    waits at most ``timeout_s``. :meth:`close` when done."""

    def __init__(self, url: MysqlUrl, *, pool_size: int = 4, timeout_s: float = 10.0):
        self._url = url
        self._size = pool_size
        self._timeout_s = timeout_s
        self._pool: Any = None
        self._opening = asyncio.Lock()

    async def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            await self._pool.wait_closed()
            self._pool = None

    @asynccontextmanager
    async def _cursor(self) -> AsyncIterator[Any]:
        try:
            async with asyncio.timeout(self._timeout_s):
                async with self._opening:
                    if self._pool is None:
                        self._pool = await create_pool(self._url, size=self._size)
                async with self._pool.acquire() as conn, conn.cursor() as cur:
                    yield cur
        except (*DISCONNECTED,) as exc:
            raise QueryError("unavailable", f"the archive is unavailable: {exc!r}") from None

    async def _rows(self, sql: str, args: Sequence[object]) -> list[tuple[Any, ...]]:
        async with self._cursor() as cur:
            await cur.execute(sql, tuple(args))
            return list(await cur.fetchall())

    async def market_history(
        self,
        market_id: str,
        from_ts: int,
        to_ts: int,
        *,
        limit: int = DEFAULT_PAGE,
        cursor: str | None = None,
    ) -> HistoryPage:
        """The book at ``from_ts`` and the messages with ``from_ts < ts <= to_ts``."""
        book: Snapshot | None = None
        if cursor is None:
            if not await self._rows(
                "SELECT 1 FROM markets WHERE market_id = %s", (market_id,)
            ) and not await self._rows(
                "SELECT 1 FROM market_messages WHERE market_id = %s LIMIT 1", (market_id,)
            ):
                raise QueryError("unknown_market", f"no history for market {market_id}")
            book = await self.book_at(market_id, from_ts)
            start: tuple[Any, ...] = after(from_ts)
        else:
            start = decode_cursor(cursor, (int, str, int))
        rows = await self._rows(
            "SELECT payload FROM market_messages WHERE market_id = %s "
            "AND ts <= %s AND (ts > %s OR (ts = %s AND (epoch > %s OR (epoch = %s AND seq > %s))))"
            " ORDER BY ts, epoch, seq LIMIT %s",
            (market_id, to_ts, start[0], start[0], start[1], start[1], start[2], limit + 1),
        )
        return history_page(market_id, book, [_decode(r[0]) for r in rows], limit)

    async def book_at(self, market_id: str, ts: int) -> Snapshot | None:
        """The market's book as of the last message with a feed time at or before ``ts``;
        ``None`` before its first message."""
        last = await self._rows(
            "SELECT epoch, seq FROM market_messages WHERE market_id = %s AND ts <= %s "
            "ORDER BY ts DESC, epoch DESC, seq DESC LIMIT 1",
            (market_id, ts),
        )
        if not last:
            return None
        epoch, seq = str(last[0][0]), int(last[0][1])
        start = await self._rows(
            "SELECT seq FROM market_messages WHERE market_id = %s AND epoch = %s "
            "AND seq <= %s AND kind = 'snapshot' ORDER BY seq DESC LIMIT 1",
            (market_id, epoch, seq),
        )
        if not start:
            raise QueryError("too_long", f"no snapshot of {market_id} before seq {seq}")
        first = int(start[0][0])
        if seq - first > MAX_REBUILD:
            raise QueryError(
                "too_long", f"rebuilding {market_id} at {ts} needs {seq - first} deltas"
            )
        book: Snapshot | None = None
        at = first - 1
        while at < seq:
            rows = await self._rows(
                "SELECT payload FROM market_messages WHERE market_id = %s AND epoch = %s "
                "AND seq > %s AND seq <= %s ORDER BY seq LIMIT %s",
                (market_id, epoch, at, seq, _REBUILD_CHUNK),
            )
            for (payload,) in rows:
                message = _decode(payload)
                if message.seq != at + 1:
                    break
                if isinstance(message, Snapshot):
                    book = message
                elif book is not None:
                    book = protocol.apply(book, message)
                at = message.seq
            if at < seq and (not rows or _decode(rows[-1][0]).seq != at):
                # A seq the archive never received (docs/data.md): never a wrong book.
                raise QueryError("history_gap", f"{market_id} has a gap after seq {at}")
        return book

    async def event_results(
        self, event_id: str, *, limit: int = DEFAULT_PAGE, cursor: str | None = None
    ) -> ResultsPage:
        """Every result row of an event, oldest first. Raises ``not_found`` for an event
        the archive never saw."""
        if cursor is None and not await self._rows(
            "SELECT 1 FROM events WHERE event_id = %s", (event_id,)
        ):
            raise QueryError("not_found", f"no event {event_id} in the archive")
        return await self._results("r.event_id = %s", (event_id,), limit, cursor)

    async def results(
        self,
        sport: str,
        from_ts: int,
        to_ts: int,
        *,
        limit: int = DEFAULT_PAGE,
        cursor: str | None = None,
    ) -> ResultsPage:
        """The result rows of ``sport``'s events with ``from_ts <= ts < to_ts``."""
        return await self._results(
            "e.sport = %s AND r.ts >= %s AND r.ts < %s", (sport, from_ts, to_ts), limit, cursor
        )

    async def _results(
        self, where: str, args: tuple[object, ...], limit: int, cursor: str | None
    ) -> ResultsPage:
        after: tuple[object, ...] = (-(2**62), "", "", -1, "")
        if cursor is not None:
            after = decode_cursor(cursor, RESULT_KEY_TYPES)
        rows = await self._rows(
            f"SELECT {_RESULT_COLUMNS} FROM results r JOIN events e ON e.event_id = r.event_id "  # noqa: S608 - constants
            f"WHERE {where} AND (r.ts, r.market_id, r.epoch, r.seq, r.selection_id) > "
            "(%s, %s, %s, %s, %s) ORDER BY r.ts, r.market_id, r.epoch, r.seq, r.selection_id "
            "LIMIT %s",
            (*args, *after, limit + 1),
        )
        return results_page([result_row(r) for r in rows], limit)
