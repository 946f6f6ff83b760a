"""A deployment of real ``oddstream`` processes for one fault scenario: the feed, book
processors and gateways on real Kafka and Redis, isolated by topic prefix, consumer group
and Redis database; and the common end of every scenario (converge, check, record)."""

from __future__ import annotations

import asyncio
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import httpx
import msgspec
import redis.asyncio as aioredis

import protocol
from feeds.kafka_feed import kafka_partition
from protocol import Snapshot
from tests.faults import report
from tests.faults.checker import (
    Expectation,
    Verdict,
    check,
    converged,
    rest_books,
    rest_events,
)
from tests.faults.client import ResilientClient, SseClient, WsClient
from tests.faults.topic import stop_consumer
from tests.harness import Space
from tests.integration.procs import Proc, start

SPORTS = ("football", "tennis")


@dataclass(frozen=True)
class Scale:
    """How big each scenario is. CI runs ``factor`` 1; ``loadtest/chaos.py --scale N``
    sets ``ODDSTREAM_FAULTS_SCALE`` for a bigger run (more events, messages, clients)."""

    factor: float = 1.0
    seed: int = 5
    rate: float = 400.0

    @classmethod
    def load(cls) -> Scale:
        raw = os.environ.get("ODDSTREAM_FAULTS_SCALE", "").strip()
        return cls(factor=float(raw)) if raw else cls()

    @property
    def events(self) -> int:
        return max(4, round(4 * self.factor))

    @property
    def limit(self) -> int:
        """Feed messages per scenario (a multiple of 1000: the feed reports progress
        every 1000)."""
        return max(3, round(3 * self.factor)) * 1000

    @property
    def feed_rate(self) -> float:
        """Feed messages per second (sqrt of the factor: a bigger run is longer, too)."""
        return self.rate * max(1.0, math.sqrt(self.factor))

    def clients(self, base: int) -> int:
        return max(base, round(base * self.factor))


@dataclass
class Deployment(Space):
    procs: list[Proc] = field(default_factory=list)
    scale: Scale = field(default_factory=Scale)
    started: float = field(default_factory=time.monotonic)

    # -- processes -------------------------------------------------------------------------

    async def feed(self) -> Proc:
        """``oddstream feed synth``: the seeded match day, paced, then exits 0."""
        s = self.scale
        args = self.feed_args(seed=s.seed, events=s.events, rate=s.feed_rate, limit=s.limit)
        return await start(self.procs, "feed", args)

    async def books(self, n: int = 2, *extra: str, env: dict[str, str] | None = None) -> list[Proc]:
        """``n`` book processors of one group, once each has joined it."""
        out = []
        for _ in range(n):
            name = f"books-{sum(p.name.startswith('books') for p in self.procs) + 1}"
            args = self.books_args(*extra, log_level="info")
            out.append(await start(self.procs, name, args, env))
        for p in out:
            await p.wait_line("books in group")
        return out

    async def settled(
        self, books: Sequence[Proc], partitions: int = 4, timeout: float = 30
    ) -> None:
        """Until the live processors' latest assignments split every partition between
        them, so the group is not rebalancing when the fault comes. Their logs are the
        only signal: polled."""
        async with asyncio.timeout(timeout):
            while True:
                live = [p for p in books if p.proc.returncode is None]
                owned = [assigned(p) for p in live]
                sets = [o for o in owned if o is not None]
                union = set().union(*sets) if sets else set()
                if (
                    len(sets) == len(live)
                    and union == set(range(partitions))
                    and sum(map(len, sets)) == partitions
                ):
                    return
                await asyncio.sleep(0.1)

    async def gateways(self, n: int = 2, *extra: str) -> tuple[list[Proc], list[str]]:
        """``n`` gateways (heartbeat 1 s, drain deadline 3 s) and their URLs."""
        out = []
        for _ in range(n):
            name = f"gateway-{sum(p.name.startswith('gateway') for p in self.procs) + 1}"
            args = self.gateway_args("--heartbeat-s", "1", "--drain-s", "3", *extra)
            out.append(await start(self.procs, name, args))
        return out, [await g.url() for g in out]

    # -- the feed's first events -------------------------------------------------------------

    async def events(self, url: str, timeout: float = 60) -> list[str]:
        """The ids of every event of the feed, once each has markets and every sport a
        lobby. Another process's progress: polled."""
        want = self.scale.events
        async with httpx.AsyncClient(base_url=url, timeout=10) as http, asyncio.timeout(timeout):
            while True:
                events = (await http.get("/v1/events")).json()
                markets = (await http.get("/v1/markets")).json()
                with_markets = {m["event_id"] for m in markets}
                sports = {m["sport"] for m in markets if m.get("main")}
                ids = sorted(e["event_id"] for e in events)
                if len(ids) >= want and with_markets >= set(ids) and sports >= set(SPORTS):
                    return ids
                await asyncio.sleep(0.1)

    def clients(
        self,
        url_lists: Sequence[Sequence[str]],
        events: Sequence[str],
        *,
        sse: int = 0,
        prefix: str = "c",
        **kwargs: object,
    ) -> list[ResilientClient]:
        """One client per URL list (the first ``sse`` of them SSE, the rest WebSocket).
        Subscriptions alternate: every event; or the sports' lobbies and the first event."""
        out: list[ResilientClient] = []
        for i, urls in enumerate(url_lists):
            if i % 2 == 0:
                subs: dict[str, tuple[str, ...]] = {"events": tuple(events)}
            else:
                subs = {"events": (events[0],), "lobbies": SPORTS}
            cls = SseClient if i < sse else WsClient
            name = f"{prefix}{i}-{cls.transport}"
            out.append(cls(name, urls, **subs, **kwargs).start())  # type: ignore[arg-type]
        return out

    # -- the end of a scenario -------------------------------------------------------------

    async def diagnostics(self, urls: Sequence[str]) -> str:
        """What the gateways and storage say, for a failure message."""
        out = [await _metrics(u) for u in urls]
        store = aioredis.from_url(self.redis)
        try:
            keys = sorted(
                k.decode() if isinstance(k, bytes) else str(k)
                for k in await store.keys(f"{self.prefix}snap:*")
            )
            for key in keys:
                raw = await store.get(key)
                if raw is not None:
                    snap = protocol.decode_server(raw)
                    if isinstance(snap, Snapshot):
                        out.append(f"redis {key}: {snap.epoch}/{snap.seq} {snap.status}")
        except (aioredis.RedisError, OSError, msgspec.DecodeError) as exc:
            out.append(f"redis: {exc!r}")
        finally:
            await store.aclose()
        for p in self.procs:
            out.append(f"{p.name}: exit {p.proc.returncode}")
        reasons = await dead_letter_reasons(self.kafka, self.prefix)
        if reasons:
            out.append(f"dead letters by reason: {reasons}")
        return "\n".join(out)

    async def finish(
        self,
        scenario: str,
        clients: Sequence[ResilientClient],
        urls: Sequence[str],
        expectation: Expectation,
        *,
        timeout: float = 60,
    ) -> Verdict:
        """Wait until the live gateways serve the books the pure processor made and every
        client holds exactly what they serve, then check and record the verdict
        (``report.ROWS``). The books may still move after the feed ended (the staleness
        guard suspends markets of a silent feed): then the clients follow, and the wait
        starts over from the newer books."""
        try:
            authority = await converged(urls[0], expectation, timeout=timeout)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{await self.diagnostics(urls)}") from None
        notes: list[str] = []
        lagging: list[str] = []
        for _ in range(10):
            lagging = []
            moved = False
            for client in clients:
                want = {m: (s.epoch, s.seq) for m, s in authority.items() if client.covers(s)}
                try:
                    moved |= not await client.wait_books(want, timeout=15)
                except TimeoutError:
                    lagging.append(client.name)
            again = await rest_books(urls[0])
            if again == authority and not lagging and not moved:
                break
            if again == authority:
                await asyncio.sleep(0.2)  # REST lags what was fanned out: polled.
            authority = again
        notes += [f"{name} never caught up with REST" for name in lagging]
        events = await rest_events(urls[0])
        for client in clients:

            def same_events(c: ResilientClient = client) -> bool:
                return all(c.event_states.get(e) == events.get(e) for e in c.events)

            try:
                await client.wait_until(same_events, timeout=10)
            except TimeoutError:
                notes.append(f"{client.name}: events never matched REST")
        disagree = 0
        for other in urls[1:]:
            try:
                async with asyncio.timeout(10):
                    while True:
                        if await rest_books(other) == authority:
                            break
                        await asyncio.sleep(0.25)  # Another process's state: polled.
            except TimeoutError:
                disagree += 1
                notes.append(f"gateways disagree: {urls[0]} vs {other}")
        for client in clients:
            await client.close()
        verdict = check(scenario, clients, authority, expectation, authority_events=events)
        verdict.details += notes
        verdict.divergences += disagree
        if verdict.failures():
            verdict.details.append(await self.diagnostics(urls))
        verdict.seconds = time.monotonic() - self.started
        if verdict.gaps or verdict.epoch_breaks or verdict.duplicates:
            verdict.notes.append(
                f"the gateways passed on {verdict.gaps} gaps, {verdict.epoch_breaks} foreign "
                f"epochs and {verdict.duplicates} duplicates (the clients healed them)"
            )
        if verdict.conflated:
            verdict.notes.append(f"{verdict.conflated} conflated snapshots (slow readers)")
        if verdict.needless_resets:
            back = sum(1 for d in verdict.reset_distances if d < 0)
            verdict.notes.append(
                f"{verdict.needless_resets} reset snapshots answered positions still within "
                f"the history window (seq distances {sorted(verdict.reset_distances)}; "
                f"{back} older than the client's own book)"
            )
        if verdict.stale_steps:
            verdict.notes.append(
                f"{verdict.stale_steps} feed_stale steps (suspend or reopen) seen by clients"
            )
        report.record(verdict)
        return verdict


async def _metrics(url: str) -> str:
    try:
        async with httpx.AsyncClient(base_url=url, timeout=5) as http:
            text = (await http.get("/metrics")).text
    except httpx.HTTPError as exc:
        return f"{url}: {exc!r}"
    lines = [x for x in text.splitlines() if x and not x.startswith("#")]
    return f"{url}: " + ", ".join(x.removeprefix("oddstream_") for x in lines)


def assigned(books: Proc) -> set[int] | None:
    """The partitions a ``books`` process last logged as assigned to it."""
    for line in reversed(books.lines):
        if "assigned partitions [" in line:
            inside = line.split("assigned partitions [", 1)[1].split("]", 1)[0]
            return {int(x) for x in inside.split(",") if x.strip()}
    return None


def owner(books: Sequence[Proc], event_id: str, partitions: int = 4) -> Proc:
    """The processor that owns an event's partition now."""
    partition = kafka_partition(event_id.encode(), partitions)
    for p in books:
        if partition in (assigned(p) or ()):
            return p
    raise AssertionError(f"no processor owns partition {partition} of {event_id}")


async def dead_letter_reasons(kafka: str, prefix: str, timeout: float = 10) -> dict[str, int]:
    """How many records the processors dead-lettered, by reason (its first words)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.errors import KafkaError

    counts: dict[str, int] = {}
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka, enable_auto_commit=False)
    try:
        async with asyncio.timeout(timeout):
            await consumer.start()
            try:
                topic = prefix + "deadletter"
                parts = [
                    TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()
                ]
                if not parts:
                    return counts
                consumer.assign(parts)
                await consumer.seek_to_beginning(*parts)
                while True:
                    batch = await consumer.getmany(timeout_ms=1000)
                    if not batch:
                        break
                    for records in batch.values():
                        for rec in records:
                            reason = dict(rec.headers).get("reason", b"?").decode(errors="replace")
                            key = " ".join(reason.split()[:6])
                            counts[key] = counts.get(key, 0) + 1
            finally:
                await stop_consumer(consumer)
    except (KafkaError, OSError, TimeoutError):
        pass
    return counts


def assert_passed(verdict: Verdict) -> None:
    failures = verdict.failures()
    assert not failures, f"{verdict.scenario}: {failures}\n" + "\n".join(
        [*verdict.details[:30], *verdict.details[-1:]]
    )


async def feed_done(feed: Proc, timeout: float = 120) -> None:
    """The feed process produced everything and exited 0."""
    code = await asyncio.wait_for(feed.proc.wait(), timeout)
    assert code == 0, f"feed exited {code}:\n{feed.output()}"
