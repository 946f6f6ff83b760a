"""Writing a batch of rows and the Kafka offsets after it in one MySQL transaction.

Every insert is idempotent (``ON DUPLICATE KEY UPDATE`` of a key column to itself: a row
already there is left as it is, with no warning round trip as ``INSERT IGNORE`` would
make), so a batch written twice, after a crash or a rebalance, leaves one copy. The
offsets are written in the same transaction as the rows of the records below them: both
are stored, or neither (``docs/data.md``, "Exactly-once effect").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, TypeVar

from archive.db import DISCONNECTED, ArchiveError, MysqlUrl, connect
from archive.migrate import migrate
from archive.rows import Row, Rows

log = logging.getLogger(__name__)

T = TypeVar("T")


def _insert(table: str, columns: str, key: str) -> str:
    marks = ", ".join(["%s"] * len(columns.split(",")))
    upsert = f"ON DUPLICATE KEY UPDATE {key} = {key}"
    return f"INSERT INTO {table} ({columns}) VALUES ({marks}) {upsert}"  # noqa: S608


_EVENTS = _insert("events", "event_id, sport, first_ts", "event_id")
_MARKETS = _insert("markets", "market_id, event_id, sport, kind, name, first_ts", "market_id")
_SELECTIONS = _insert("selections", "market_id, selection_id, name", "market_id")
_MESSAGES = _insert("market_messages", "market_id, epoch, seq, kind, ts, payload", "market_id")
_CHANGES = _insert(
    "market_changes", "market_id, epoch, seq, ts, status, reason, name, main", "market_id"
)
_PRICES = _insert("prices", "market_id, epoch, seq, selection_id, ts, price, status", "market_id")
_RESULTS = _insert(
    "results",
    "market_id, epoch, seq, selection_id, event_id, ts, status, dead_heat, void_factor, "
    "is_rollback",
    "market_id",
)
# VALUES() in this clause: deprecated in MySQL 8.0.20+, still supported, and the one
# spelling MariaDB accepts too.
_OFFSETS = (
    "INSERT INTO archive_offsets (consumer_group, topic, kafka_partition, next_offset) "
    "VALUES (%s, %s, %s, %s) ON DUPLICATE KEY UPDATE next_offset = VALUES(next_offset)"
)

#: Rows per ``executemany`` (one multi-row INSERT each): bounded by the packet size.
CHUNK_ROWS = 1_000


class Writer:
    """The archive's one connection for writes. :meth:`open` connects and applies the
    migrations; :meth:`write` stores a batch and its offsets, waiting out a lost
    database for at most ``wait_s`` (reconnecting with a capped back-off) before it
    raises :class:`ArchiveError`. Calls are serialised: :meth:`offsets` during a
    rebalance waits for a write in flight to commit, so it reads the offsets that write
    stored."""

    def __init__(self, url: MysqlUrl, group: str, topic: str, *, wait_s: float = 300.0):
        self._url = url
        self._group = group
        self._topic = topic
        self._wait_s = wait_s
        self._conn: Any = None
        self._lock = asyncio.Lock()
        """One user of the connection at a time: the fetch loop writes while a rebalance
        (in aiokafka's coordination task) reads the offsets."""
        self.retries = 0
        """Writes that failed on a lost connection and were retried."""

    async def open(self) -> None:
        async with self._lock:
            await self._retrying(self._connect)

    async def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def offsets(self, partitions: Iterable[int]) -> dict[int, int]:
        """The next offset to read of each partition the archive has stored offsets for."""
        wanted = set(partitions)
        if not wanted:
            return {}

        async def read() -> dict[int, int]:
            async with self._conn.cursor() as cur:
                await cur.execute(
                    "SELECT kafka_partition, next_offset FROM archive_offsets "
                    "WHERE consumer_group = %s AND topic = %s",
                    (self._group, self._topic),
                )
                rows = await cur.fetchall()
            await self._conn.commit()  # End the read's snapshot (REPEATABLE READ).
            return {int(p): int(o) for p, o in rows if int(p) in wanted}

        async with self._lock:
            return await self._retrying(read)

    async def write(self, rows: Rows, offsets: Mapping[int, int]) -> None:
        """Store ``rows`` and the ``offsets`` (partition -> next offset) after them, in one
        transaction."""
        batches: list[tuple[str, list[Row]]] = [
            (_EVENTS, list(rows.events.values())),
            (_MARKETS, list(rows.markets.values())),
            (_SELECTIONS, list(rows.selections.values())),
            (_MESSAGES, rows.messages),
            (_CHANGES, rows.changes),
            (_PRICES, rows.prices),
            (_RESULTS, rows.results),
            (_OFFSETS, [(self._group, self._topic, p, o) for p, o in sorted(offsets.items())]),
        ]

        async def transaction() -> None:
            conn = self._conn
            try:
                async with conn.cursor() as cur:
                    for sql, table_rows in batches:
                        for i in range(0, len(table_rows), CHUNK_ROWS):
                            await cur.executemany(sql, table_rows[i : i + CHUNK_ROWS])
                await conn.commit()
            except BaseException:
                with contextlib.suppress(*DISCONNECTED):
                    await conn.rollback()
                raise

        async with self._lock:
            await self._retrying(transaction)

    async def _connect(self) -> None:
        await self.close()
        conn = await connect(self._url)
        try:
            async with conn.cursor() as cur:
                await cur.execute("SET autocommit = 1")
                await migrate(conn)
                await cur.execute("SET autocommit = 0")
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    async def _retrying(self, attempt: Callable[[], Awaitable[T]]) -> T:
        """Run ``attempt`` until it succeeds; on a lost connection reconnect and run it
        again, for at most ``wait_s``."""
        deadline = time.monotonic() + self._wait_s
        delay = 0.05
        while True:
            try:
                if self._conn is None:
                    await self._connect()
                return await attempt()
            except DISCONNECTED as exc:
                await self.close()
                self.retries += 1
                if time.monotonic() + delay > deadline:
                    raise ArchiveError(
                        f"MySQL unreachable for {self._wait_s:g} s: {exc}", retriable=True
                    ) from exc
                log.warning("archive: MySQL unreachable (%s); retrying in %.2f s", exc, delay)
                # Back-off before reconnecting: there is no event to await for a server
                # coming back.
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
