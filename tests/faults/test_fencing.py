"""Fault scenarios of processor ownership: a zombie processor (paused past the session
timeout while another took its partitions over, then woken) must not write a single step
more; processors killed at random moments must leave the exactly-once ``deltas`` topic
whole. Besides the clients' books, both read the ``deltas`` topic (:mod:`tests.faults.topic`);
the zombie scenario also every market's Redis history, for seqs given out twice.
"""

from __future__ import annotations

import asyncio
import random
import signal
from dataclasses import dataclass
from typing import Any

import pytest
import redis.asyncio as aioredis

from tests.faults.checker import Expectation, Verdict
from tests.faults.client import ResilientClient
from tests.faults.deploy import Deployment, assert_passed, assigned, feed_done, owner
from tests.faults.test_scenarios import BOUND_S, all_connected, at_message, spread
from tests.faults.topic import TopicVerdict, check_topic, read_topic
from tests.integration.procs import Proc, start

pytestmark = [pytest.mark.integration, pytest.mark.timeout(BOUND_S)]

#: Feed rate of the zombie scenario: slow enough that the feed still runs when the
#: paused processor wakes (a session timeout and a rebalance after the pause began).
ZOMBIE_RATE = 200.0
#: Book processors with the exactly-once ``deltas`` topic: a step the zombie stored and
#: had not produced when it was paused is on the topic once (the survivor produces it).
EXACTLY_ONCE = {"ODDSTREAM_DELTAS_DELIVERY": "exactly-once"}


async def reused_in_history(redis_url: str) -> list[str]:
    """Markets whose Redis history holds two deltas at one seq (two owners wrote it)."""
    client = aioredis.from_url(redis_url)
    reused = []
    try:
        async for key in client.scan_iter(match="os:hist:*", count=1000):
            members: Any = await client.zrange(key, 0, -1, withscores=True)
            scores = [score for _, score in members]
            if len(set(scores)) != len(scores):
                reused.append(key.decode())
    finally:
        await client.aclose()
    return reused


@dataclass
class Run:
    books: list[Proc]
    urls: list[str]
    feed: Proc
    events: list[str]
    clients: list[ResilientClient]
    expectation: asyncio.Task[Expectation]


async def run(dep: Deployment, *, extra: int, rate: float, env: dict[str, str]) -> Run:
    """Two book processors (``env``), two gateways, the feed (``extra`` messages more
    than the scale's, at ``rate``) and connected clients."""
    s = dep.scale
    limit = s.limit + extra
    expectation = asyncio.create_task(
        asyncio.to_thread(Expectation.synthetic, s.seed, s.events, limit)
    )
    books, (_, urls) = await asyncio.gather(dep.books(2, env=env), dep.gateways(2))
    await dep.settled(books)
    args = dep.feed_args(seed=s.seed, events=s.events, rate=rate, limit=limit)
    feed = await start(dep.procs, "feed", args)
    events = await dep.events(urls[0])
    clients = dep.clients(spread(urls, s.clients(4)), events, sse=1, dead_after_s=3)
    await all_connected(clients)
    return Run(books, urls, feed, events, clients, expectation)


async def finish(dep: Deployment, r: Run, scenario: str) -> tuple[Verdict, TopicVerdict]:
    """The common end, with the check of the ``deltas`` topic (``read_committed``)."""
    await feed_done(r.feed)
    verdict = await dep.finish(scenario, r.clients, r.urls, await r.expectation)
    name = f"{dep.prefix}deltas"
    topic = verdict.topic = check_topic(await read_topic(dep.kafka, name, read_committed=True))
    verdict.details += topic.details
    return verdict, topic


async def test_zombie_processor(deployment: Deployment) -> None:
    """SIGSTOP the owner of the busiest event while the feed runs, until the other
    processor has taken every partition over and moved on; then SIGCONT it. Its next
    write is refused (fenced) and it exits; no seq is given out twice, in Redis, on the
    ``deltas`` topic or to a client, and every book is right."""
    dep = deployment
    r = await run(dep, extra=1000, rate=ZOMBIE_RATE, env=EXACTLY_ONCE)
    books, feed = r.books, r.feed
    await at_message(feed, 1000)
    zombie = owner(books, r.events[0])
    survivor = next(b for b in books if b is not zombie)
    zombie.proc.send_signal(signal.SIGSTOP)
    try:
        # The group expires the paused member (session timeout) and the survivor takes
        # every partition: it logs the assignment.
        # It claimed every partition before it logged them: the zombie is fenced from
        # here on.
        async with asyncio.timeout(40):
            while assigned(survivor) != {0, 1, 2, 3}:
                await survivor.next_line()
        assert feed.proc.returncode is None, "the feed ended before the takeover"
    finally:
        zombie.proc.send_signal(signal.SIGCONT)
    try:
        code: int | None = await asyncio.wait_for(zombie.proc.wait(), 30)
    except TimeoutError:
        code = None
    verdict, topic = await finish(dep, r, "zombie books SIGSTOP")
    reused = await reused_in_history(dep.redis)
    fenced = [line for line in zombie.lines if "fenced:" in line]
    verdict.notes.append(
        f"the zombie {'exited ' + str(code) if code is not None else 'kept running'} after "
        f"SIGCONT; fenced: {fenced[0].strip() if fenced else 'never'}; Redis histories with "
        f"a seq stored twice: {len(reused)}; {topic.messages} messages of "
        f"{topic.markets} markets on the deltas topic"
    )
    print(verdict.notes[-1])
    assert_passed(verdict)
    assert not reused, reused[:10]
    assert fenced, zombie.output()
    assert code not in (None, 0), code


#: The random_kills scenario: its seed, how many processors it kills, and the feed.
KILLS_SEED = 16
KILLS = 3
KILLS_RATE = 1000.0


async def test_random_kills(deployment: Deployment) -> None:
    """Book processors with exactly-once ``deltas`` SIGKILLed at seeded random moments
    while the feed runs (each replaced by a new one): a ``read_committed`` reader of
    ``deltas`` finds every market's seq gapless and never repeated within its epoch, and
    every client's book is right."""
    dep = deployment
    r = await run(dep, extra=2000, rate=KILLS_RATE, env=EXACTLY_ONCE)
    rng = random.Random(KILLS_SEED)
    killed = []
    for _ in range(KILLS):
        # The fault schedule (seeded), not synchronisation.
        await asyncio.sleep(rng.uniform(0.2, 1.5))
        live = [b for b in dep.procs if b.name.startswith("books") and b.proc.returncode is None]
        victim = rng.choice(live)
        victim.kill()
        killed.append(victim.name)
        await dep.books(1, env=EXACTLY_ONCE)
    verdict, topic = await finish(dep, r, "random kills (exactly-once)")
    reproduced = [line.strip() for p in dep.procs for line in p.lines if "produced them" in line]
    verdict.notes.append(
        f"killed {', '.join(killed)}; {topic.messages} messages of "
        f"{topic.markets} markets on the deltas topic; outbox re-productions: "
        f"{len(reproduced)}"
    )
    print(verdict.notes[-1], *reproduced, sep="\n")
    assert_passed(verdict)
