"""RedisStore and RedisBroker against a real redis-server (``ODDSTREAM_REDIS``).

The behavioural cases run against the in-memory reference implementations too (the
``store`` and ``broker`` fixtures are parametrized), which proves the two agree. Each
test uses its own key prefix and channel names, so tests never see each other's data.
"""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import pytest
import redis.asyncio as aioredis

import protocol
from channels.broker import Broker, BrokerError, MemoryBroker, Subscription
from channels.redis_broker import RedisBroker
from channels.redis_store import RedisStore
from channels.store import Batch, MarketSummary, MemoryStore, Store, StoreError
from protocol import Delta, EventState, Selection, SelectionChange, Snapshot
from tests.integration.conftest import HISTORY

pytestmark = pytest.mark.integration

E1 = "e1"
WAIT = 10.0
"""Upper bound on any wait for a message or a resync (never reached when things work)."""


# -- builders ---------------------------------------------------------------------------------


def snapshot(
    market: str,
    seq: int = 1,
    *,
    epoch: str = E1,
    event: str = "ev1",
    sport: str = "football",
    main: bool = False,
    status: protocol.MarketStatus = "open",
) -> Snapshot:
    return Snapshot(
        market_id=market,
        event_id=event,
        seq=seq,
        epoch=epoch,
        ts=1_700_000_000_000 + seq,
        sport=sport,
        kind="1x2",
        name=f"Match result {market}",
        status=status,
        selections=(
            Selection("home", "Home", Decimal(f"{seq}.10")),
            Selection("draw", "Draw", Decimal("3.25")),
            Selection("away", "Away", None, "removed"),
        ),
        main=main,
    )


def delta(market: str, seq: int, *, epoch: str = E1, event: str = "ev1") -> Delta:
    return Delta(
        market_id=market,
        event_id=event,
        seq=seq,
        epoch=epoch,
        ts=1_700_000_000_000 + seq,
        selections=(SelectionChange("home", price=Decimal(f"{seq}.10")),),
    )


def create(
    market: str,
    seq: int = 1,
    *,
    epoch: str = E1,
    event: str = "ev1",
    sport: str = "football",
    main: bool = False,
) -> Batch:
    """A batch announcing a market (a snapshot and no delta), like a new book."""
    snap = snapshot(market, seq, epoch=epoch, event=event, sport=sport, main=main)
    return Batch(snapshots={market: snap})


def advance(
    market: str, first: int, last: int, *, epoch: str = E1, event: str = "ev1", main: bool = False
) -> Batch:
    """A batch of deltas ``first..last`` and the snapshot at ``last``."""
    snap = snapshot(market, last, epoch=epoch, event=event, main=main)
    history = [
        (market, s, protocol.encode(delta(market, s, epoch=epoch, event=event)))
        for s in range(first, last + 1)
    ]
    return Batch(snapshots={market: snap}, history=history)


def event_state(event: str, seq: int = 1, *, sport: str = "football") -> EventState:
    return EventState(
        event_id=event,
        seq=seq,
        ts=1_700_000_000_000 + seq,
        sport=sport,
        competition="League",
        name=f"{event} home v away",
        home="Home",
        away="Away",
        start_time=1_700_000_000_000,
        phase="live",
        score=(seq, 0),
        clock=protocol.Clock("1H", 60 * seq, True),
    )


def by_market(items: list[Snapshot]) -> list[Snapshot]:
    return sorted(items, key=lambda s: s.market_id)


# -- fixtures ---------------------------------------------------------------------------------


def closed_port() -> int:
    """A local TCP port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


async def server_command(client: aioredis.Redis, *args: str | int) -> Any:
    """Run a raw command (CLIENT KILL, CLIENT PAUSE) through ``client``."""
    return await client.execute_command(*args)  # type: ignore[no-untyped-call]


@pytest.fixture
async def admin(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """A plain client for poking at the server behind the code under test."""
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture(params=["memory", "redis"])
def store(request: pytest.FixtureRequest) -> Store:
    if request.param == "memory":
        return MemoryStore(history_size=HISTORY)
    redis_store: RedisStore = request.getfixturevalue("redis_store")
    return redis_store


@pytest.fixture(params=["memory", "redis"])
async def broker(request: pytest.FixtureRequest) -> AsyncIterator[Broker]:
    if request.param == "memory":
        memory = MemoryBroker()
        yield memory
        await memory.close()
        return
    redis_broker = await RedisBroker.connect(request.getfixturevalue("redis_url"))
    try:
        yield redis_broker
    finally:
        await redis_broker.close()


@pytest.fixture
async def redis_broker(redis_url: str) -> AsyncIterator[RedisBroker]:
    # A short health interval, so that a silent connection is noticed quickly.
    broker = await RedisBroker.connect(redis_url, health_interval=0.1)
    try:
        yield broker
    finally:
        await broker.close()


@pytest.fixture
def channel() -> Callable[[str], str]:
    """Channel names unique to the test."""
    tag = uuid.uuid4().hex
    return lambda name: f"oddstream-test:{tag}:{name}"


# -- store: history and the resume window -----------------------------------------------------


@dataclass(frozen=True)
class HistoryCase:
    batches: list[Batch]
    market: str
    epoch: str
    after: int
    expected: list[int] | None
    """Seqs of the deltas ``history`` must return, or None."""


M = "m1"
FIRST_FIVE = [create(M), advance(M, 2, 5)]  # History holds deltas 2..5 (HISTORY = 4).

HISTORY_CASES = {
    "at-latest-is-empty": HistoryCase(FIRST_FIVE, M, E1, 5, []),
    "after-middle": HistoryCase(FIRST_FIVE, M, E1, 3, [4, 5]),
    "whole-window": HistoryCase(FIRST_FIVE, M, E1, 1, [2, 3, 4, 5]),
    "trimmed": HistoryCase([create(M), advance(M, 2, 6)], M, E1, 1, None),
    "oldest-kept": HistoryCase([create(M), advance(M, 2, 6)], M, E1, 2, [3, 4, 5, 6]),
    "trimmed-across-batches": HistoryCase(
        [create(M), advance(M, 2, 3), advance(M, 4, 5), advance(M, 6, 7)], M, E1, 2, None
    ),
    "across-batches": HistoryCase(
        [create(M), advance(M, 2, 3), advance(M, 4, 4), advance(M, 5, 6)], M, E1, 3, [4, 5, 6]
    ),
    "foreign-epoch": HistoryCase(FIRST_FIVE, M, "e0", 3, None),
    "unknown-market": HistoryCase(FIRST_FIVE, "nope", E1, 0, None),
    "ahead-of-latest": HistoryCase(FIRST_FIVE, M, E1, 9, None),
    "snapshot-only-at-latest": HistoryCase([create(M)], M, E1, 1, []),
    "snapshot-only-before": HistoryCase([create(M)], M, E1, 0, None),
    "new-epoch-at-latest": HistoryCase([*FIRST_FIVE, create(M, epoch="e2")], M, "e2", 1, []),
    "new-epoch-old-position": HistoryCase([*FIRST_FIVE, create(M, epoch="e2")], M, E1, 3, None),
    "new-epoch-own-deltas": HistoryCase(
        [*FIRST_FIVE, create(M, epoch="e2"), advance(M, 2, 3, epoch="e2")], M, "e2", 1, [2, 3]
    ),
    # The old epoch's deltas 2..5 are gone, not mixed into the new stream.
    "new-epoch-drops-old-deltas": HistoryCase(
        [*FIRST_FIVE, create(M, epoch="e2"), advance(M, 2, 3, epoch="e2")], M, "e2", 0, None
    ),
    # Reference semantics: deltas written in the very batch that changes the epoch are
    # dropped with the old history, so the caller takes a snapshot (safe, if not optimal).
    "new-epoch-deltas-in-switching-batch": HistoryCase(
        [*FIRST_FIVE, advance(M, 2, 3, epoch="e2")], M, "e2", 1, None
    ),
    "markets-independent": HistoryCase(
        [create("a"), create("b"), advance("a", 2, 3), advance("b", 2, 2)], "b", E1, 1, [2]
    ),
}


@pytest.mark.parametrize("case", HISTORY_CASES.values(), ids=HISTORY_CASES.keys())
async def test_history(store: Store, case: HistoryCase) -> None:
    for batch in case.batches:
        await store.write(batch)
    got = await store.history(case.market, case.epoch, case.after)
    if case.expected is None:
        assert got is None
        return
    assert got is not None
    deltas = [protocol.decode_server(p) for p in got]
    assert all(isinstance(d, Delta) and d.epoch == case.epoch for d in deltas)
    assert [d.seq for d in deltas if isinstance(d, Delta)] == case.expected
    # The payloads are the very bytes written (encode once, share the bytes).
    assert got == [protocol.encode(delta(case.market, s, epoch=case.epoch)) for s in case.expected]


# -- store: snapshots, indexes, events, offsets, restore ----------------------------------------


async def test_snapshot_round_trips_exactly(store: Store) -> None:
    snap = snapshot("m1", 7, main=True, status="suspended")
    await store.write(Batch(snapshots={"m1": snap}))
    assert await store.snapshot("m1") == snap
    assert await store.snapshot("unknown") is None


async def test_latest_snapshot_wins(store: Store) -> None:
    await store.write(create("m1"))
    await store.write(advance("m1", 2, 3))
    got = await store.snapshot("m1")
    assert got is not None
    assert got.seq == 3
    assert got.selections[0].price == Decimal("3.10")


async def test_snapshots_in_the_order_asked_skipping_unknown(store: Store) -> None:
    for m in ("a", "b", "c"):
        await store.write(create(m))
    got = await store.snapshots(["c", "x", "a", "b"])
    assert [s.market_id for s in got] == ["c", "a", "b"]
    assert await store.snapshots([]) == []


async def test_market_ids_and_summaries(store: Store) -> None:
    a = snapshot("a", 2, event="ev1")
    b = snapshot("b", 1, event="ev1", main=True, status="suspended")
    c = snapshot("c", 5, event="ev2", sport="tennis")
    await store.write(Batch(snapshots={"a": a, "b": b}))
    await store.write(Batch(snapshots={"c": c}))
    assert sorted(await store.market_ids("ev1")) == ["a", "b"]
    assert await store.market_ids("ev2") == ["c"]
    assert await store.market_ids("unknown") == []

    def key(s: MarketSummary) -> str:
        return s.market_id

    all_rows = sorted(await store.summaries(), key=key)
    assert all_rows == [MarketSummary.of(a), MarketSummary.of(b), MarketSummary.of(c)]
    ev1_rows = sorted(await store.summaries("ev1"), key=key)
    assert ev1_rows == [MarketSummary.of(a), MarketSummary.of(b)]
    assert await store.summaries("unknown") == []


async def test_lobby_holds_main_markets_per_sport(store: Store) -> None:
    await store.write(create("f1", event="ev1", main=True))
    await store.write(create("f2", event="ev1"))
    await store.write(create("f3", event="ev2", main=True))
    await store.write(create("t1", event="ev3", sport="tennis", main=True))
    assert sorted(await store.lobby("football")) == ["f1", "f3"]
    assert await store.lobby("tennis") == ["t1"]
    assert await store.lobby("curling") == []


async def test_events(store: Store) -> None:
    await store.write(Batch(events={"ev1": event_state("ev1"), "ev2": event_state("ev2")}))
    await store.write(Batch(events={"ev3": event_state("ev3", sport="tennis")}))
    await store.write(Batch(events={"ev1": event_state("ev1", 2)}))  # Replaces.
    assert await store.event("ev1") == event_state("ev1", 2)
    assert await store.event("unknown") is None

    def key(e: EventState) -> str:
        return e.event_id

    assert sorted(await store.events(), key=key) == [
        event_state("ev1", 2),
        event_state("ev2"),
        event_state("ev3", sport="tennis"),
    ]
    assert sorted(await store.events("football"), key=key) == [
        event_state("ev1", 2),
        event_state("ev2"),
    ]
    assert await store.events("tennis") == [event_state("ev3", sport="tennis")]
    assert await store.events("curling") == []


async def test_offsets(store: Store) -> None:
    assert await store.offsets("odds", 0) is None
    await store.write(Batch(offsets={("odds", 0): 10, ("odds", 1): 3, ("markets", 0): 7}))
    await store.write(Batch(offsets={("odds", 0): 12}))
    assert await store.offsets("odds", 0) == 12
    assert await store.offsets("odds", 1) == 3
    assert await store.offsets("markets", 0) == 7
    assert await store.offsets("markets", 1) is None


async def test_load_partition(store: Store) -> None:
    a = snapshot("a", 3, event="ev1")
    b = snapshot("b", 1, event="ev1", main=True)
    c = snapshot("c", 2, event="ev2")
    d = snapshot("d", 1, event="ev4")
    await store.write(
        Batch(
            snapshots={"a": a, "b": b, "c": c, "d": d},
            events={"ev1": event_state("ev1"), "ev2": event_state("ev2")},
            partitions={"ev1": 0, "ev2": 1, "ev3": 0, "ev4": 1},
        )
    )
    # ev4 moves to partition 0 (the topic was repartitioned): the latest mapping wins.
    await store.write(Batch(partitions={"ev4": 0}))
    snaps, events = await store.load_partition(0)
    assert by_market(snaps) == [a, b, d]
    assert events == [event_state("ev1")]
    snaps, events = await store.load_partition(1)
    assert snaps == [c]
    assert events == [event_state("ev2")]
    assert await store.load_partition(7) == ([], [])


async def test_empty_batch_changes_nothing(store: Store) -> None:
    await store.write(Batch())
    assert await store.summaries() == []
    assert await store.events() == []


# -- store: Redis specifics -------------------------------------------------------------------


async def test_a_written_batch_is_wholly_visible_to_another_client(
    redis_store: RedisStore, redis_url: str, prefix: str
) -> None:
    batch = advance("m1", 2, 3, event="ev1", main=True)
    batch.snapshots["m2"] = snapshot("m2", 1, event="ev1")
    batch.events["ev1"] = event_state("ev1")
    batch.offsets[("odds", 2)] = 41
    batch.partitions["ev1"] = 2
    await redis_store.write(create("m1", main=True))
    await redis_store.write(batch)
    reader = await RedisStore.connect(redis_url, history_size=HISTORY, prefix=prefix)
    try:
        assert await reader.snapshots(["m1", "m2"]) == [
            batch.snapshots["m1"],
            batch.snapshots["m2"],
        ]
        assert await reader.history("m1", E1, 1) == [p for _, _, p in batch.history]
        assert await reader.event("ev1") == event_state("ev1")
        assert await reader.market_ids("ev1") == ["m1", "m2"]
        assert await reader.lobby("football") == ["m1"]
        assert await reader.offsets("odds", 2) == 41
        snaps, events = await reader.load_partition(2)
        assert by_market(snaps) == [batch.snapshots["m1"], batch.snapshots["m2"]]
        assert events == [event_state("ev1")]
    finally:
        await reader.close()


async def test_readers_never_see_half_a_batch(
    redis_store: RedisStore, redis_url: str, prefix: str
) -> None:
    """Each batch moves 50 markets to the same seq; a concurrent reader on its own
    connection must always find them all at one seq."""
    markets = [f"m{i:02}" for i in range(50)]
    await redis_store.write(Batch(snapshots={m: snapshot(m, 1) for m in markets}))
    reader = await RedisStore.connect(redis_url, history_size=HISTORY, prefix=prefix)
    done = asyncio.Event()
    seen: list[set[int]] = []

    async def write_all() -> None:
        for seq in range(2, 42):
            await redis_store.write(Batch(snapshots={m: snapshot(m, seq) for m in markets}))
        done.set()

    async def read_all() -> None:
        while not done.is_set():
            seen.append({s.seq for s in await reader.snapshots(markets)})

    try:
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(write_all())
            tasks.create_task(read_all())
    finally:
        await reader.close()
    assert seen
    assert all(len(seqs) == 1 for seqs in seen)


async def test_redis_errors_are_store_errors(
    redis_store: RedisStore, admin: aioredis.Redis, prefix: str
) -> None:
    await admin.set(f"{prefix}offsets", b"not a hash")
    with pytest.raises(StoreError, match="offsets") as info:
        await redis_store.offsets("odds", 0)
    assert info.value.retriable
    assert info.value.__cause__ is not None
    with pytest.raises(StoreError, match="write"):
        await redis_store.write(Batch(offsets={("odds", 0): 1}))


async def test_store_connect_to_unreachable_url_fails_fast() -> None:
    url = f"redis://127.0.0.1:{closed_port()}/0"
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(StoreError, match=url):
        await RedisStore.connect(url, connect_timeout=1.0)
    assert loop.time() - started < 5


async def test_connect_errors_do_not_leak_the_password() -> None:
    port = closed_port()
    with pytest.raises(StoreError) as store_info:
        await RedisStore.connect(f"redis://app:s3cret@127.0.0.1:{port}/0", connect_timeout=1.0)
    with pytest.raises(BrokerError) as broker_info:
        await RedisBroker.connect(f"redis://app:s3cret@127.0.0.1:{port}/0", connect_timeout=1.0)
    for message in (str(store_info.value), str(broker_info.value)):
        assert "s3cret" not in message
        assert f"redis://app:***@127.0.0.1:{port}/0" in message


# -- broker -----------------------------------------------------------------------------------


@dataclass
class Inbox:
    """Records what a subscription delivers; tests wait on it, never sleep."""

    messages: list[tuple[str, bytes]] = field(default_factory=list)
    resyncs: int = 0
    resynced: asyncio.Event = field(default_factory=asyncio.Event)
    _arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def on_message(self, channel: str, payload: bytes) -> None:
        self.messages.append((channel, payload))
        self._arrived.set()

    def on_resync(self) -> None:
        self.resyncs += 1
        self.resynced.set()

    async def wait_for(self, count: int) -> list[tuple[str, bytes]]:
        async with asyncio.timeout(WAIT):
            while len(self.messages) < count:
                self._arrived.clear()
                await self._arrived.wait()
        return self.messages

    async def wait_for_resync(self) -> None:
        async with asyncio.timeout(WAIT):
            await self.resynced.wait()
        self.resynced.clear()


async def open_inbox(broker: Broker) -> tuple[Inbox, Subscription]:
    inbox = Inbox()
    return inbox, await broker.subscription(inbox.on_message, inbox.on_resync)


async def test_subscribe_then_publish_delivers_in_order(
    broker: Broker, channel: Callable[[str], str]
) -> None:
    a, b = channel("a"), channel("b")
    inbox, sub = await open_inbox(broker)
    await sub.subscribe(a)
    await sub.subscribe(b)
    expected = []
    for i in range(50):
        payload = b"%d" % i
        targets = (a, b) if i % 5 == 0 else (a,)
        await broker.publish(targets, payload)
        expected += [(c, payload) for c in targets]
    assert await inbox.wait_for(len(expected)) == expected
    await sub.close()


async def test_unsubscribe_stops_delivery(broker: Broker, channel: Callable[[str], str]) -> None:
    a, b = channel("a"), channel("b")
    inbox, sub = await open_inbox(broker)
    await sub.subscribe(a)
    await sub.subscribe(b)
    await sub.unsubscribe(a)
    await broker.publish([a], b"dropped")
    await broker.publish([b], b"kept")  # Sent after, so it arrives after anything on a.
    assert await inbox.wait_for(1) == [(b, b"kept")]
    await sub.close()


async def test_subscribe_again_after_unsubscribe(
    broker: Broker, channel: Callable[[str], str]
) -> None:
    a = channel("a")
    inbox, sub = await open_inbox(broker)
    await sub.subscribe(a)
    await sub.unsubscribe(a)
    await sub.subscribe(a)
    await broker.publish([a], b"once")
    await broker.publish([a], b"twice")
    assert await inbox.wait_for(2) == [(a, b"once"), (a, b"twice")]
    await sub.close()


async def test_every_node_subscription_receives(
    broker: Broker, channel: Callable[[str], str]
) -> None:
    a = channel("a")
    inbox1, sub1 = await open_inbox(broker)
    inbox2, sub2 = await open_inbox(broker)
    await sub1.subscribe(a)
    await sub2.subscribe(a)
    await broker.publish([a], b"x")
    await broker.publish([a], b"y")
    assert await inbox1.wait_for(2) == [(a, b"x"), (a, b"y")]
    assert await inbox2.wait_for(2) == [(a, b"x"), (a, b"y")]
    await sub1.close()
    await sub2.close()


async def test_reconnects_resubscribes_and_resyncs_after_the_connection_is_killed(
    redis_broker: RedisBroker, admin: aioredis.Redis, channel: Callable[[str], str]
) -> None:
    a, b = channel("a"), channel("b")
    inbox, sub = await open_inbox(redis_broker)
    await sub.subscribe(a)
    await sub.subscribe(b)
    await redis_broker.publish([a], b"before")
    await inbox.wait_for(1)
    killed = await server_command(admin, "CLIENT", "KILL", "TYPE", "pubsub")
    assert killed >= 1
    await inbox.wait_for_resync()
    await redis_broker.publish([a, b], b"after")
    assert await inbox.wait_for(3) == [(a, b"before"), (a, b"after"), (b, b"after")]
    assert inbox.resyncs == 1
    await sub.close()


async def test_subscribe_waits_through_a_reconnect(
    redis_broker: RedisBroker, admin: aioredis.Redis, channel: Callable[[str], str]
) -> None:
    a, b = channel("a"), channel("b")
    inbox, sub = await open_inbox(redis_broker)
    await sub.subscribe(a)
    await server_command(admin, "CLIENT", "KILL", "TYPE", "pubsub")
    await sub.subscribe(b)  # Returns once b is confirmed, on whichever connection.
    await redis_broker.publish([b], b"new")
    await redis_broker.publish([a], b"old")
    assert await inbox.wait_for(2) == [(b, b"new"), (a, b"old")]
    await inbox.wait_for_resync()
    await sub.close()


async def test_a_silent_connection_is_noticed_and_replaced(
    redis_broker: RedisBroker, admin: aioredis.Redis, channel: Callable[[str], str]
) -> None:
    """CLIENT PAUSE makes the server unresponsive without closing anything (as a dead
    network path would): the idle reader's PING gets no reply, so it reconnects."""
    a = channel("a")
    inbox, sub = await open_inbox(redis_broker)
    await sub.subscribe(a)
    await server_command(admin, "CLIENT", "PAUSE", 1500, "ALL")
    await inbox.wait_for_resync()
    await redis_broker.publish([a], b"back")
    assert await inbox.wait_for(1) == [(a, b"back")]
    await sub.close()


async def test_a_late_confirmation_of_a_timed_out_subscribe_is_not_mistaken(
    redis_url: str, admin: aioredis.Redis, channel: Callable[[str], str]
) -> None:
    """SUBSCRIBE confirmations are matched to requests in order: the confirmation of a
    request that timed out must not be taken for the next request's."""
    a = channel("a")
    broker = await RedisBroker.connect(redis_url, subscribe_timeout=0.2, health_interval=30)
    try:
        inbox, sub = await open_inbox(broker)
        await server_command(admin, "CLIENT", "PAUSE", 600, "ALL")
        with pytest.raises(BrokerError, match="did not confirm SUBSCRIBE"):
            await sub.subscribe(a)  # The server is paused: no confirmation in time.
        broker.timings = dataclasses.replace(broker.timings, subscribe_timeout=WAIT)
        await sub.subscribe(a)  # Confirmed once the pause ends, after the late one.
        await broker.publish([a], b"x")
        assert await inbox.wait_for(1) == [(a, b"x")]
        assert sub.stats.reconnects == 0  # type: ignore[attr-defined]
    finally:
        await broker.close()


async def test_a_failing_handler_does_not_stop_delivery(
    redis_broker: RedisBroker, channel: Callable[[str], str], caplog: pytest.LogCaptureFixture
) -> None:
    a = channel("a")
    inbox = Inbox()

    def on_message(ch: str, payload: bytes) -> None:
        if payload == b"bad":
            raise ValueError("handler bug")
        inbox.on_message(ch, payload)

    sub = await redis_broker.subscription(on_message, inbox.on_resync)
    await sub.subscribe(a)
    await redis_broker.publish([a], b"bad")
    await redis_broker.publish([a], b"good")
    assert await inbox.wait_for(1) == [(a, b"good")]
    assert "message handler failed" in caplog.text
    await sub.close()


async def test_a_closed_subscription_refuses_to_subscribe(
    redis_broker: RedisBroker, channel: Callable[[str], str]
) -> None:
    _, sub = await open_inbox(redis_broker)
    await sub.close()
    await sub.close()  # Idempotent.
    with pytest.raises(BrokerError, match="closed"):
        await sub.subscribe(channel("a"))


async def test_broker_connect_to_unreachable_url_fails_fast() -> None:
    url = f"redis://127.0.0.1:{closed_port()}/0"
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(BrokerError, match=url):
        await RedisBroker.connect(url, connect_timeout=1.0)
    assert loop.time() - started < 5
