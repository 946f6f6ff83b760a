"""Retention: ``oddstream archive --prune-before MS`` (``docs/data.md``, "Retention").

The rows that grow with the feed are ``market_messages`` (every message) and ``prices``
(every price change per selection). :func:`prune` removes those older than an instant,
market by market, in bounded statements, and keeps every instant from it on answerable:

1. the book at the instant (:meth:`archive.query.History.book_at`: the last message at
   or before it, rebuilt from its snapshot) replaces that message's row, as a
   ``snapshot`` at the same ``(epoch, seq)`` and ``ts`` (what the embedded archive does
   when it trims, ``archive/memory.py``); committed on its own;
2. the market's messages before that row, then its ``prices`` rows before the instant,
   are deleted at most ``chunk`` rows per statement, one commit each.

A market whose book cannot be rebuilt (a gap: ``history_gap``; ``too_long``) is left
whole and counted: never a wrong book. The job is idempotent, so a crash anywhere is
undone by running it again; the archive consumer may run meanwhile (it only appends
newer rows). ``market_changes``, ``results`` and the definitions are kept: they grow
with markets, not with the feed.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import protocol
from archive.db import MysqlUrl, connect
from archive.query import History, QueryError

log = logging.getLogger(__name__)

#: Rows one statement deletes at most (each its own transaction).
CHUNK = 10_000
_MARKETS_PAGE = 1_000


@dataclass(slots=True)
class PruneStats:
    markets: int = 0
    """Markets whose rows before the instant were pruned."""
    kept: int = 0
    """Markets left whole (their book at the instant could not be rebuilt)."""
    messages: int = 0
    prices: int = 0

    def line(self) -> str:
        return (
            f"markets={self.markets} kept_whole={self.kept} "
            f"messages_deleted={self.messages} prices_deleted={self.prices}"
        )


async def prune(url: MysqlUrl, before_ts: int, *, chunk: int = CHUNK) -> PruneStats:
    """Delete the history rows older than ``before_ts`` (feed epoch ms) that no instant
    from ``before_ts`` on needs. Raises one of :data:`archive.db.DISCONNECTED` when MySQL
    goes away (run it again)."""
    stats = PruneStats()
    history = History(url, pool_size=1)
    conn: Any = await connect(url, autocommit=False)
    try:
        async for market_id in _markets(conn):
            try:
                book = await history.book_at(market_id, before_ts)
            except QueryError as exc:
                stats.kept += 1
                log.warning("prune: %s kept whole: %s", market_id, exc.message)
                continue
            if book is None:
                continue  # Nothing of the market before the instant.
            stats.messages += await _prune_market(conn, book, chunk)
            stats.prices += await _deleting(
                conn,
                "DELETE FROM prices WHERE market_id = %s AND ts < %s LIMIT %s",
                (market_id, before_ts),
                chunk,
            )
            stats.markets += 1
    finally:
        conn.close()
        await history.close()
    return stats


async def _markets(conn: Any) -> AsyncIterator[str]:
    """Every market of the archive, a page at a time (keyset: bounded memory)."""
    last = ""
    while True:
        async with conn.cursor() as cur:
            await cur.execute(
                "SELECT market_id FROM markets WHERE market_id > %s ORDER BY market_id LIMIT %s",
                (last, _MARKETS_PAGE),
            )
            page = [str(r[0]) for r in await cur.fetchall()]
        await conn.commit()
        for market_id in page:
            yield market_id
        if len(page) < _MARKETS_PAGE:
            return
        last = page[-1]


async def _prune_market(conn: Any, book: protocol.Snapshot, chunk: int) -> int:
    """The book replaces its message's row; the messages before that row go."""
    key = (book.market_id, book.epoch, book.seq)
    async with conn.cursor() as cur:
        await cur.execute(
            "UPDATE market_messages SET kind = 'snapshot', payload = %s "
            "WHERE market_id = %s AND epoch = %s AND seq = %s",
            (protocol.encode(book), *key),
        )
    await conn.commit()
    ts, market_id, epoch, seq = book.ts, *key
    return await _deleting(
        conn,
        "DELETE FROM market_messages WHERE market_id = %s AND (ts < %s OR (ts = %s AND "
        "(epoch < %s OR (epoch = %s AND seq < %s)))) LIMIT %s",
        (market_id, ts, ts, epoch, epoch, seq),
        chunk,
    )


async def _deleting(conn: Any, sql: str, args: tuple[object, ...], limit: int) -> int:
    """Run a ``DELETE ... LIMIT limit`` until it deletes fewer rows than that, one commit
    per statement; the rows deleted."""
    deleted = 0
    while True:
        async with conn.cursor() as cur:
            await cur.execute(sql, (*args, limit))
            count = int(cur.rowcount)
        await conn.commit()
        deleted += count
        if count < limit:
            return deleted
