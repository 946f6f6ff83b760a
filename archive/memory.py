"""The history API's embedded equivalent for ``oddstream dev``: the archive in memory.

:class:`MemoryHistory` keeps every market message the embedded pipeline publishes
(:meth:`MemoryHistory.add`) and answers the same queries as :class:`archive.query.History`
with the same pages and cursors, so the gateway's history routes work unchanged. Bounded:
past ``max_messages`` of one market, its oldest half is replaced by the book at the first
message kept (a snapshot at that seq), so older instants are no longer answered; result
rows are kept in full (few). Lost when the process ends.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

import msgspec

import protocol
from archive.query import (
    DEFAULT_PAGE,
    RESULT_KEY_TYPES,
    HistoryPage,
    QueryError,
    ResultRow,
    ResultsPage,
    after,
    decode_cursor,
    history_page,
    result_key,
    result_row,
    results_page,
)
from archive.rows import Rows
from protocol import Delta, Snapshot


@dataclass(slots=True)
class _Market:
    messages: list[Snapshot | Delta] = field(default_factory=list)
    keys: list[tuple[int, str, int]] = field(default_factory=list)
    """(ts, epoch, seq) of each message, for bisection; feed time may repeat."""


class MemoryHistory:
    def __init__(self, *, max_messages: int = 20_000):
        self._max = max_messages
        self._markets: dict[str, _Market] = {}
        self._sports: dict[str, str] = {}
        self._results: list[ResultRow] = []

    def add(self, payload: bytes) -> None:
        """Record one published payload; anything but a market message is ignored."""
        rows = Rows()
        try:
            message = rows.add(payload)
        except msgspec.DecodeError:
            return
        if isinstance(message, Snapshot):
            self._sports.setdefault(message.event_id, message.sport)
        market = self._markets.setdefault(message.market_id, _Market())
        key = (message.ts, message.epoch, message.seq)
        at = bisect.bisect_right(market.keys, key)
        market.keys.insert(at, key)
        market.messages.insert(at, message)
        for row in rows.results:
            bisect.insort(self._results, result_row(row), key=result_key)
        if len(market.messages) > self._max:
            self._trim(market)

    def _trim(self, market: _Market) -> None:
        cut = len(market.messages) // 2
        book = self._book(market, cut)
        market.messages[: cut + 1] = [book] if book is not None else []
        market.keys[: cut + 1] = [] if book is None else [(book.ts, book.epoch, book.seq)]

    def _book(self, market: _Market, index: int) -> Snapshot | None:
        """The book as of the message at ``index``: the last snapshot of its epoch at or
        before it, plus the deltas after that."""
        target = market.messages[index]
        start = index
        while start >= 0 and not (
            isinstance(market.messages[start], Snapshot)
            and market.messages[start].epoch == target.epoch
        ):
            start -= 1
        if start < 0:
            return None
        book = market.messages[start]
        assert isinstance(book, Snapshot)
        for message in market.messages[start + 1 : index + 1]:
            if message.epoch != book.epoch:
                continue
            if isinstance(message, Snapshot):
                book = message
            elif message.seq == book.seq + 1:
                book = protocol.apply(book, message)
            else:
                raise QueryError("history_gap", f"{book.market_id} has a gap after {book.seq}")
        return book

    async def close(self) -> None:
        """Nothing to release."""

    async def market_history(
        self,
        market_id: str,
        from_ts: int,
        to_ts: int,
        *,
        limit: int = DEFAULT_PAGE,
        cursor: str | None = None,
    ) -> HistoryPage:
        market = self._markets.get(market_id)
        if market is None:
            raise QueryError("unknown_market", f"no history for market {market_id}")
        book: Snapshot | None = None
        if cursor is None:
            last = bisect.bisect_right(market.keys, after(from_ts)) - 1
            book = self._book(market, last) if last >= 0 else None
            key: tuple[int, str, int] = after(from_ts)
        else:
            ts, epoch, seq = decode_cursor(cursor, (int, str, int))
            key = (ts, epoch, seq)
        start = bisect.bisect_right(market.keys, key)
        end = bisect.bisect_right(market.keys, after(to_ts))
        return history_page(
            market_id, book, market.messages[start : min(end, start + limit + 1)], limit
        )

    async def event_results(
        self, event_id: str, *, limit: int = DEFAULT_PAGE, cursor: str | None = None
    ) -> ResultsPage:
        if event_id not in self._sports:
            raise QueryError("not_found", f"no event {event_id} in the archive")
        return self._page([r for r in self._results if r.event_id == event_id], limit, cursor)

    async def results(
        self,
        sport: str,
        from_ts: int,
        to_ts: int,
        *,
        limit: int = DEFAULT_PAGE,
        cursor: str | None = None,
    ) -> ResultsPage:
        rows = [
            r
            for r in self._results
            if self._sports.get(r.event_id) == sport and from_ts <= r.ts < to_ts
        ]
        return self._page(rows, limit, cursor)

    def _page(self, rows: list[ResultRow], limit: int, cursor: str | None) -> ResultsPage:
        if cursor is not None:
            start = decode_cursor(cursor, RESULT_KEY_TYPES)
            rows = [r for r in rows if result_key(r) > start]
        return results_page(rows, limit)
