"""Snapshot and history storage in Redis: the :class:`~channels.store.Store` of a real
deployment, written by book processors and read by every gateway.

It behaves exactly like :class:`~channels.store.MemoryStore` (the reference semantics);
the integration tests run one table of cases against both.

Key layout (``P`` is the deployment's prefix, ``--redis-prefix``, ``"os:"`` by default;
it starts the pub/sub channels :meth:`RedisStore.write_and_publish` publishes on too; the
id is always the last part of a key, so ids may contain ``:``)::

    P snap:<market_id>            STRING  the market's Snapshot, protocol JSON
    P hist:<market_id>            ZSET    its recent deltas: member = Delta JSON, score = seq;
                                          trimmed to the ``history_size`` highest seqs
    P hepoch:<market_id>          STRING  the epoch the history belongs to
    P event:<event_id>            STRING  the EventState, protocol JSON
    P markets                     SET     every market id
    P event-markets:<event_id>    SET     the event's market ids
    P lobby:<sport>               SET     main market ids of the sport's events
    P events                      SET     every event id
    P sport-events:<sport>        SET     the sport's event ids
    P partition-events:<n>        SET     event ids written from Kafka partition n
    P event-partition             HASH    event id -> its Kafka partition (authoritative)
    P offsets                     HASH    "<topic>:<partition>" -> next offset to consume
    P fence:<n>                   STRING  fencing token of Kafka partition n's owner
    P outbox:<n>                  LIST    partition n's last outbox entries (exactly-once deltas)

The snap, hist, hepoch, event and event-markets keys of an ended event carry the TTL its
batches ask for (``Batch.ttl_ms``, set in the same transaction); other keys have none.

Writes: :meth:`RedisStore.write` sends a whole :class:`~channels.store.Batch` as one
MULTI/EXEC transaction, so a reader sees all of a batch or none of it. A new epoch of a
market must drop the old epoch's history, which needs the old epoch: a tiny Lua script
inside the same transaction compares ``hepoch`` with the new epoch and deletes the
history when they differ, then trims each history to ``history_size``. It runs *after*
the batch's deltas are added, exactly like ``MemoryStore``: deltas written in the very
batch that changes the epoch are dropped too, and the caller takes a snapshot instead
(safe). A write is idempotent (SET, SADD, ZADD of the same members, HSET), so redis-py
may retry it after a dropped connection. Commands are grouped (one MSET of snapshots,
one ZADD per market, one SADD per index key) to keep the transaction short.

:meth:`RedisStore.write_and_publish` adds the batch's messages to the same transaction,
published by a second script in order (each distinct set of channels sent once). The
transaction is packed by hiredis into one write and its replies read straight off the
connection: a processor writes tens of thousands of deltas a second, and redis-py's
pipeline spent more per command (packing, a timeout per reply) than Redis did.

A fenced batch (``Batch.fence``, :mod:`channels.fencing`) is a compare-and-set: WATCH
and GET its partitions' fence keys, refuse the batch if one holds a higher token, else
run the transaction (raising lower tokens to the batch's first); Redis refuses the EXEC
if a fence key changed after the WATCH (a claim came in between): refused too. One round
trip more than an unfenced write.

Redis transactions are isolated, not rolled back: a command failing *inside* EXEC (only
possible if someone stored a key of the wrong type under the prefix) leaves the others
applied. A connection lost before EXEC applies nothing.

Reads: bulk reads use MGET (chunked); :meth:`RedisStore.history` reads the snapshot and
the history in one MULTI so it never sees a snapshot from one write and a trimmed
history from another. Index sets are unordered in Redis, so list results are sorted by
id (``MemoryStore`` returns insertion order; the ``Store`` protocol promises neither).

Every network operation is bounded by the client's socket timeouts; Redis failures are
raised as :class:`~channels.store.StoreError` (retriable) with the cause chained.

Redis Cluster (``redis+cluster://host:port``): every key of one transaction must live in
one hash slot, so the prefix becomes a hash tag, ``{P}``: all of a deployment's keys share
one slot, and the store talks to that slot's master, found from the cluster's slot map
(again after any failure: a replica promoted after a failover becomes the master it
writes to). A deployment's storage lives on one master (and its replica); what spreads
over the masters is pub/sub (:mod:`channels.redis_cluster`), which never joins the
store's transaction there.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import hiredis
import msgspec
import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

import protocol
from channels.fencing import FencedError, admit
from channels.redis_conn import (
    ClusterMap,
    RedisEndpoint,
    connect,
    describe,
    is_cluster_url,
    ping,
    redact_url,
)
from channels.store import OUTBOX_KEEP, Batch, MarketSummary, StoreError
from protocol import EventState, Snapshot

log = logging.getLogger(__name__)

#: Keys per MGET in bulk reads: large enough to amortise round trips, small enough not
#: to block Redis (single-threaded) on one huge reply.
MGET_CHUNK = 1000

Arg = str | int | bytes
"""One argument of a Redis command."""

_snapshot_decoder = msgspec.json.Decoder(Snapshot)
_event_decoder = msgspec.json.Decoder(EventState)


class _Head(msgspec.Struct):
    """Just the stream position of a stored snapshot; the rest of the JSON is skipped."""

    epoch: str
    seq: int


_head_decoder = msgspec.json.Decoder(_Head)

# Runs inside write()'s transaction, after the batch's deltas were added. KEYS: the
# hepoch and hist keys of each market touched, in pairs; ARGV[1]: the history size;
# ARGV[i + 1]: "+" and the epoch of market i's snapshot in the batch, or "" if it has
# none. Drops the history of every market whose epoch changed, then trims each history.
_HISTORY_SCRIPT = """
local size = tonumber(ARGV[1])
for i = 1, #ARGV - 1 do
  local hepoch, hist, arg = KEYS[2 * i - 1], KEYS[2 * i], ARGV[i + 1]
  if arg ~= '' then
    local epoch = string.sub(arg, 2)
    local old = redis.call('GET', hepoch)
    if old ~= epoch then
      if old then redis.call('DEL', hist) end
      redis.call('SET', hepoch, epoch)
    end
  end
  redis.call('ZREMRANGEBYRANK', hist, 0, -size - 1)
end
return #ARGV - 1
"""

# Runs inside write_and_publish()'s transaction: PUBLISHes its messages, in order. One
# command however many messages (redis-py and hiredis spend far more per command and
# per argument than Redis spends per PUBLISH). A batch's messages go to few distinct
# sets of channels (a market's are always the same), so each set is sent once: ARGV[1]
# is the number of sets, then each set as its size k and its k channels; then, per
# message, the number of its set (from 1) and its payload.
_PUBLISH_SCRIPT = """
local sets, a = {}, 2
for s = 1, tonumber(ARGV[1]) do
  local k, set = tonumber(ARGV[a]), {}
  for j = 1, k do set[j] = ARGV[a + j] end
  sets[s] = set
  a = a + k + 1
end
local n = #ARGV
while a <= n do
  local set, payload = sets[tonumber(ARGV[a])], ARGV[a + 1]
  for j = 1, #set do redis.call('PUBLISH', set[j], payload) end
  a = a + 2
end
return n
"""


class RedisStore(RedisEndpoint):
    """:class:`~channels.store.Store` over Redis; see the module docstring for the layout.

    Build it with :meth:`connect`. ``socket_timeout`` bounds every socket read and write,
    ``connect_timeout`` every connection attempt.
    """

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        url: str,
        history_size: int = 256,
        prefix: str = "os:",
        timeouts: dict[str, float] | None = None,
    ):
        if history_size < 1:
            raise ValueError(f"history_size must be at least 1, not {history_size}")
        self._client = client
        self.where = redact_url(url)
        self._history_size = history_size
        self.prefix = prefix
        self._cluster = is_cluster_url(url)
        self._p = "{" + prefix + "}" if self._cluster else prefix
        self._timeouts = timeouts or {"socket_timeout": 2.0, "connect_timeout": 2.0}
        self._master = ""
        self._map: ClusterMap | None = None

    @classmethod
    async def connect(
        cls,
        url: str,
        *,
        history_size: int = 256,
        prefix: str = "os:",
        socket_timeout: float = 2.0,
        connect_timeout: float = 2.0,
    ) -> RedisStore:
        """A store on a client that answered a PING (:func:`channels.redis_conn.connect`;
        raises :class:`StoreError` or :class:`ValueError`)."""
        timeouts = {"socket_timeout": socket_timeout, "connect_timeout": connect_timeout}
        if not is_cluster_url(url):
            client = await connect(url, "oddstream-store", StoreError, **timeouts)
            return cls(client, url=url, history_size=history_size, prefix=prefix)
        slots = ClusterMap(url, deadline=connect_timeout)
        try:
            master = await slots.master_of("{" + prefix + "}")
            client = await connect(master, "oddstream-store", StoreError, **timeouts)
        except (RedisError, OSError, TimeoutError, StoreError) as exc:
            await slots.close()
            raise StoreError(f"Redis Cluster at {redact_url(url)}: {describe(exc)}") from exc
        store = cls(client, url=url, history_size=history_size, prefix=prefix, timeouts=timeouts)
        store._master, store._map = master, slots
        return store

    # -- keys ----------------------------------------------------------------------------------

    def _snap(self, market_id: str) -> str:
        return f"{self._p}snap:{market_id}"

    def _hist(self, market_id: str) -> str:
        return f"{self._p}hist:{market_id}"

    def _event(self, event_id: str) -> str:
        return f"{self._p}event:{event_id}"

    def _fence(self, partition: int) -> str:
        return f"{self._p}fence:{partition}"

    # -- writes --------------------------------------------------------------------------------

    async def write(self, batch: Batch) -> None:
        """Apply a batch in one MULTI/EXEC: readers see all of it or none of it.
        Raises :class:`StoreError` when Redis fails; the batch may then be retried;
        :class:`~channels.fencing.FencedError` when its fence is older than Redis's."""
        await self.write_and_publish(batch, ())

    async def claim(self, partition: int) -> int:
        """INCR the partition's fence key: the new owner's token."""
        token: int = await self._run(self._client.incr(self._fence(partition)), "claim")
        return token

    def shares_server_with(self, broker: object) -> bool:
        """True when ``broker`` publishes on this store's Redis server, so a batch and its
        publications can be one transaction (which publishes under this store's prefix);
        never on a cluster (the transaction is single-slot)."""
        return (
            not self._cluster
            and self.same_server(broker)
            and isinstance(broker, RedisEndpoint)
            and broker.prefix == self.prefix
        )

    signals_sent = True
    """:meth:`write_and_publish` takes ``sent`` (``feeds.processor.SignallingStore``)."""

    async def write_and_publish(
        self,
        batch: Batch,
        publications: Sequence[tuple[Sequence[str], bytes]],
        *,
        sent: asyncio.Event | None = None,
    ) -> None:
        """Write a batch and PUBLISH its messages in one MULTI/EXEC. Redis runs it as a
        unit, so a processor that dies mid-step leaves either none of it or all of it
        stored *and* published: no stored delta that no gateway was told about.

        ``sent``, when given, is set once the transaction is on its way to Redis (or
        the call ends without having sent it): a caller with other work to do may go
        on with it then, while Redis runs the transaction."""
        if not batch and not batch.partitions and not publications:
            if sent is not None:
                sent.set()
            return
        commands = self._batch_commands(batch)
        if publications:
            commands.append(_publish_command(self.prefix, publications))
        fence = {self._fence(p): (p, token) for p, token in batch.fence.items()}
        try:
            await self._run(self._transaction(commands, sent, fence), "write")
        finally:
            if sent is not None:
                sent.set()

    def _batch_commands(self, batch: Batch) -> list[list[Arg]]:
        commands: list[list[Arg]] = []
        if not batch and not batch.partitions:
            return commands
        p = self._p
        # Deltas first, then the epoch check: the same order as MemoryStore.
        deltas: dict[str, list[Arg]] = {}
        for market_id, seq, payload in batch.history:
            pairs = deltas.get(market_id)
            if pairs is None:
                pairs = deltas[market_id] = ["ZADD", f"{p}hist:{market_id}"]
            pairs += (seq, payload)
        commands += deltas.values()
        snapshots = batch.snapshots
        touched = dict.fromkeys([*deltas, *snapshots])
        if touched:
            keys: list[Arg] = []
            args: list[Arg] = [self._history_size]
            for market_id in touched:
                keys += (f"{p}hepoch:{market_id}", f"{p}hist:{market_id}")
                snap = snapshots.get(market_id)
                args.append("" if snap is None else "+" + snap.epoch)
            commands.append(["EVAL", _HISTORY_SCRIPT, len(keys), *keys, *args])
        if snapshots:
            mset: list[Arg] = ["MSET"]
            for market_id, snap in snapshots.items():
                mset += (f"{p}snap:{market_id}", protocol.encode(snap))
            commands.append(mset)
            commands.append(["SADD", f"{p}markets", *snapshots])
            by_event: dict[str, list[Arg]] = {}
            lobbies: dict[str, list[Arg]] = {}
            for market_id, snap in snapshots.items():
                by_event.setdefault(snap.event_id, []).append(market_id)
                if snap.main:
                    lobbies.setdefault(snap.sport, []).append(market_id)
            for event_id, ids in by_event.items():
                commands.append(["SADD", f"{p}event-markets:{event_id}", *ids])
            for sport, ids in lobbies.items():
                commands.append(["SADD", f"{p}lobby:{sport}", *ids])
        if batch.events:
            mset = ["MSET"]
            for event_id, state in batch.events.items():
                mset += (f"{p}event:{event_id}", protocol.encode(state))
            commands.append(mset)
            commands.append(["SADD", f"{p}events", *batch.events])
            by_sport: dict[str, list[Arg]] = {}
            for event_id, state in batch.events.items():
                by_sport.setdefault(state.sport, []).append(event_id)
            for sport, ids in by_sport.items():
                commands.append(["SADD", f"{p}sport-events:{sport}", *ids])
        if batch.ttl_ms:
            commands += _expiries(p, batch)
        if batch.offsets:
            hset: list[Arg] = ["HSET", f"{p}offsets"]
            for (topic, partition), offset in batch.offsets.items():
                hset += (f"{topic}:{partition}", offset)
            commands.append(hset)
        if batch.partitions:
            hset = ["HSET", f"{p}event-partition"]
            by_partition: dict[int, list[Arg]] = {}
            for event_id, partition in batch.partitions.items():
                hset += (event_id, partition)
                by_partition.setdefault(partition, []).append(event_id)
            commands.append(hset)
            for partition, ids in by_partition.items():
                commands.append(["SADD", f"{p}partition-events:{partition}", *ids])
        for partition, entry in batch.outbox.items():
            commands.append(["RPUSH", f"{p}outbox:{partition}", entry])
            commands.append(["LTRIM", f"{p}outbox:{partition}", -OUTBOX_KEEP, -1])
        return commands

    async def _transaction(
        self,
        commands: Sequence[Sequence[Arg]],
        sent: asyncio.Event | None = None,
        fence: _Fence | None = None,
    ) -> None:
        """Run ``commands`` in one MULTI/EXEC, sent in one write.

        The commands are packed by hiredis and their replies read straight off the
        connection, not through a redis-py pipeline, whose per-command bookkeeping
        costs more than the commands themselves. Like a pipeline, a dropped connection
        is retried on a fresh one (the writes are idempotent, a repeated PUBLISH is
        dropped by ``seq``); raises the first error Redis reported. Sets ``sent`` once
        the transaction is written to the connection. With a ``fence`` (fence key ->
        (partition, token)), the transaction runs only if :func:`channels.fencing.admit`
        admits it, under a WATCH of the fence keys (else :class:`FencedError`)."""
        packed = b"".join([*[_pack(tuple(c)) for c in commands], _EXEC])
        pool = self._client.connection_pool
        conn = await pool.get_connection()  # type: ignore[no-untyped-call]
        try:

            async def fail(_error: Exception) -> None:
                await conn.disconnect()

            await conn.retry.call_with_retry(
                lambda: _exchange(conn, packed, len(commands), sent, fence), fail
            )
        except BaseException:
            # Replies may be left unread (cancelled, or failed mid-way): the connection
            # must not go back to the pool as it is.
            await conn.disconnect()
            raise
        finally:
            await pool.release(conn)

    # -- reads ---------------------------------------------------------------------------------

    async def snapshot(self, market_id: str) -> Snapshot | None:
        raw: bytes | None = await self._run(self._client.get(self._snap(market_id)), "snapshot")
        return None if raw is None else _snapshot_decoder.decode(raw)

    async def snapshots(self, market_ids: Iterable[str]) -> list[Snapshot]:
        """Snapshots of the markets that exist, in the order asked."""
        raws = await self._mget([self._snap(m) for m in market_ids], "snapshots")
        return [_snapshot_decoder.decode(r) for r in raws if r is not None]

    async def history(self, market_id: str, epoch: str, after_seq: int) -> list[bytes] | None:
        """Encoded deltas ``after_seq + 1 ...`` up to the latest, in order; ``[]`` when
        ``after_seq`` is the latest; ``None`` when they cannot all be given (epoch changed,
        history trimmed, market unknown): the caller must take a snapshot instead."""
        hist = self._hist(market_id)
        tx = self._client.pipeline(transaction=True)
        tx.get(self._snap(market_id))
        tx.zrange(hist, 0, 0, withscores=True)
        tx.zrangebyscore(hist, f"({after_seq}", "+inf")
        raw, first, deltas = await self._run(tx.execute(), "history")
        if raw is None:
            return None
        head = _head_decoder.decode(raw)
        if head.epoch != epoch or after_seq > head.seq:
            return None
        if after_seq == head.seq:
            return []
        if not first or first[0][1] > after_seq + 1:
            return None
        result: list[bytes] = deltas
        return result

    async def event(self, event_id: str) -> EventState | None:
        raw: bytes | None = await self._run(self._client.get(self._event(event_id)), "event")
        return None if raw is None else _event_decoder.decode(raw)

    async def events(self, sport: str | None = None) -> list[EventState]:
        """Events (of one sport, or all), sorted by id."""
        key = f"{self._p}events" if sport is None else f"{self._p}sport-events:{sport}"
        ids = await self._members(key, "events")
        raws = await self._mget([self._event(e) for e in ids], "events")
        states = [_event_decoder.decode(r) for r in raws if r is not None]
        return [s for s in states if sport is None or s.sport == sport]

    async def market_ids(self, event_id: str) -> list[str]:
        """Markets of one event, sorted (empty when the event is unknown)."""
        return await self._members(f"{self._p}event-markets:{event_id}", "market_ids")

    async def lobby(self, sport: str) -> list[str]:
        """Main markets of every event of a sport, sorted."""
        return await self._members(f"{self._p}lobby:{sport}", "lobby")

    async def summaries(self, event_id: str | None = None) -> list[MarketSummary]:
        """Summaries of every market, or of one event's, sorted by market id."""
        key = f"{self._p}markets" if event_id is None else f"{self._p}event-markets:{event_id}"
        ids = await self._members(key, "summaries")
        raws = await self._mget([self._snap(m) for m in ids], "summaries")
        return [MarketSummary.of(_snapshot_decoder.decode(r)) for r in raws if r is not None]

    async def offsets(self, topic: str, partition: int) -> int | None:
        raw: bytes | None = await self._run(
            self._client.hget(f"{self._p}offsets", f"{topic}:{partition}"), "offsets"
        )
        return None if raw is None else int(raw)

    async def load_partition(self, partition: int) -> tuple[list[Snapshot], list[EventState]]:
        """Snapshots and events of every event that hashes to ``partition`` (restore).

        The per-partition set may hold events since written from another partition (the
        topic was repartitioned); the ``event-partition`` hash has the last word."""
        p = self._p
        candidates = await self._members(f"{p}partition-events:{partition}", "load_partition")
        if not candidates:
            return [], []
        where: list[bytes | None] = await self._run(
            self._client.hmget(f"{p}event-partition", candidates), "load_partition"
        )
        event_ids = [e for e, w in zip(candidates, where, strict=True) if w == b"%d" % partition]
        pipe = self._client.pipeline(transaction=False)
        for e in event_ids:
            pipe.smembers(f"{p}event-markets:{e}")
        market_sets: list[set[bytes]] = await self._run(pipe.execute(), "load_partition")
        market_ids = sorted(m.decode() for ms in market_sets for m in ms)
        snap_raws = await self._mget([self._snap(m) for m in market_ids], "load_partition")
        event_raws = await self._mget([self._event(e) for e in event_ids], "load_partition")
        snaps = [_snapshot_decoder.decode(r) for r in snap_raws if r is not None]
        events = [_event_decoder.decode(r) for r in event_raws if r is not None]
        return snaps, events

    async def outbox(self, partition: int) -> list[bytes]:
        entries: list[bytes] = await self._run(
            self._client.lrange(f"{self._p}outbox:{partition}", 0, -1), "outbox"
        )
        return entries

    async def ping(self) -> None:
        """PING; raises :class:`StoreError` naming the server when it does not answer."""
        await self._run(ping(self._client, 1.0), "ping")

    async def close(self) -> None:
        try:
            if self._map is not None:
                await self._map.close()
            await self._client.aclose()
        except (RedisError, OSError) as exc:
            raise StoreError(f"closing Redis at {self.where}: {describe(exc)}") from exc

    # -- plumbing ------------------------------------------------------------------------------

    async def _members(self, key: str, op: str) -> list[str]:
        raw: set[bytes] = await self._run(self._client.smembers(key), op)
        return sorted(m.decode() for m in raw)

    async def _mget(self, keys: Sequence[str], op: str) -> list[bytes | None]:
        if not keys:
            return []
        if len(keys) <= MGET_CHUNK:
            single: list[bytes | None] = await self._run(self._client.mget(keys), op)
            return single
        pipe = self._client.pipeline(transaction=False)
        for i in range(0, len(keys), MGET_CHUNK):
            pipe.mget(keys[i : i + MGET_CHUNK])
        chunks: list[list[bytes | None]] = await self._run(pipe.execute(), op)
        return [r for chunk in chunks for r in chunk]

    async def _run(self, pending: Any, op: str) -> Any:
        """Await one redis-py call, turning its failures into :class:`StoreError`."""
        try:
            return await pending
        except (RedisError, OSError) as exc:
            if self._cluster:
                await self._follow_master()
            raise StoreError(f"Redis at {self.where}: {op} failed: {describe(exc)}") from exc

    async def _follow_master(self) -> None:
        """On a cluster, after a failure: if the slot map names another master for the
        deployment's slot (a failover), talk to it from the next call on."""
        assert self._map is not None
        try:
            master = await self._map.master_of(self._p)
            if master == self._master:
                return
            client = await connect(master, "oddstream-store", StoreError, **self._timeouts)
        except (RedisError, OSError, TimeoutError, StoreError) as exc:
            log.warning("Redis Cluster at %s: no master found yet: %s", self.where, describe(exc))
            return
        old, self._client, self._master = self._client, client, master
        log.warning("Redis Cluster at %s: storage moved to %s", self.where, redact_url(master))
        with contextlib.suppress(RedisError, OSError):
            await old.aclose()


def _expiries(p: str, batch: Batch) -> list[list[Arg]]:
    """PEXPIRE of the keys of an ended event's markets and of the event: after the SETs
    of the same transaction, which would clear a TTL set before them."""
    ttl = batch.ttl_ms
    keys = [f"{p}{kind}:{m}" for m in sorted(batch.expiring_markets) for kind in _MARKET_KEYS]
    keys += [f"{p}{kind}:{e}" for e in sorted(batch.expiring_events) for kind in _EVENT_KEYS]
    return [["PEXPIRE", key, ttl] for key in keys]


_MARKET_KEYS = ("snap", "hist", "hepoch")
_EVENT_KEYS = ("event", "event-markets")


def _publish_command(prefix: str, publications: Sequence[tuple[Sequence[str], bytes]]) -> list[Arg]:
    """The EVAL of :data:`_PUBLISH_SCRIPT` that publishes ``publications`` in order, on
    their channels after ``prefix``."""
    numbers: dict[tuple[str, ...], int] = {}
    sets: list[Arg] = []
    messages: list[Arg] = []
    append = messages.append
    for channels, payload in publications:
        if type(channels) is not tuple:
            channels = tuple(channels)  # A dict key (processors pass tuples).
        number = numbers.get(channels)
        if number is None:
            number = numbers[channels] = len(numbers) + 1
            sets.append(len(channels))
            sets += [prefix + c for c in channels]
        append(number)
        append(payload)
    return ["EVAL", _PUBLISH_SCRIPT, 0, len(numbers), *sets, *messages]


_MULTI = hiredis.pack_command(("MULTI",))
_EXEC = hiredis.pack_command(("EXEC",))
# The stub types the argument as a 1-tuple; it takes a tuple of any length.
_pack: Callable[[tuple[Arg, ...]], bytes] = hiredis.pack_command  # type: ignore[assignment]


_Fence = dict[str, tuple[int, int]]
"""A batch's fence by key: fence key -> (partition, token)."""


async def _exchange(
    conn: Any, packed: bytes, count: int, sent: asyncio.Event | None, fence: _Fence | None
) -> None:
    """Send MULTI, the packed ``count`` commands and EXEC (then set ``sent``); read every
    reply. With a ``fence``, first WATCH and read the fence keys and refuse the batch
    (:class:`FencedError`) unless :func:`admit` admits it; the tokens it raises are set
    inside the transaction."""
    head = _MULTI
    if fence:
        keys = list(fence)
        await conn.send_packed_command(_pack(("WATCH", *keys)) + _pack(("MGET", *keys)))
        await conn.read_response()
        held = await conn.read_response()
        owned = list(fence.values())
        stored = {p: None if h is None else int(h) for (p, _), h in zip(owned, held, strict=True)}
        raise_to = admit(stored, dict(owned))
        if raise_to:
            sets: list[Arg] = ["MSET"]
            for key, (partition, _) in fence.items():
                if partition in raise_to:
                    sets += (key, raise_to[partition])
            head += _pack(tuple(sets))
            count += 1
    await conn.send_packed_command([head, packed])
    if sent is not None:
        sent.set()
    errors: list[ResponseError] = []
    # +OK for MULTI, then +QUEUED (or the error that refused it) per command: every
    # reply is read, so the connection stays in step whatever happens.
    for _ in range(count + 1):
        try:
            await conn.read_response()
        except ResponseError as exc:
            errors.append(exc)
    try:
        replies = await conn.read_response()
    except ResponseError as exc:  # EXECABORT (a command was refused), or one failed.
        raise (errors[0] if errors else exc) from None
    if errors:
        raise errors[0]
    if replies is None and fence:
        raise FencedError(f"partitions {sorted(p for p, _ in fence.values())} were claimed anew")
    for reply in replies or ():
        if isinstance(reply, Exception):
            raise reply
