"""Fault scenarios of processor ownership: a zombie processor (paused past the session
timeout while another took its partitions over, then woken) must not write a single step
more. Besides the clients' books, the scenario reads the ``deltas`` topic
(:mod:`tests.faults.topic`) and every market's Redis history for seqs given out twice.
"""

from __future__ import annotations

import asyncio
import random
import signal

import pytest
import redis.asyncio as aioredis

from tests.faults.checker import Expectation
from tests.faults.deploy import Deployment, assert_passed, assigned, feed_done, owner
from tests.faults.test_scenarios import BOUND_S, all_connected, at_message, spread
from tests.faults.topic import check_topic, read_topic
from tests.integration.procs import start

pytestmark = [pytest.mark.integration, pytest.mark.timeout(BOUND_S)]

#: Feed rate of the zombie scenario: slow enough that the feed still runs when the
#: paused processor wakes (a session timeout and a rebalance after the pause began).
ZOMBIE_RATE = 150.0


async def reused_in_history(redis_url: str) -> list[str]:
    """Markets whose Redis history holds two deltas at one seq (two owners wrote it)."""
    client = aioredis.from_url(redis_url)
    reused = []
    try:
        async for key in client.scan_iter(match="os:hist:*", count=1000):
            scores = [s for _, s in await client.zrange(key, 0, -1, withscores=True)]
            if len(set(scores)) != len(scores):
                reused.append(key.decode())
    finally:
        await client.aclose()
    return reused


async def test_zombie_processor(deployment: Deployment) -> None:
    """SIGSTOP the owner of the busiest event while the feed runs, until the other
    processor has taken every partition over and moved on; then SIGCONT it. Its next
    write is refused (fenced) and it exits; no seq is given out twice, in Redis, on the
    ``deltas`` topic or to a client, and every book is right."""
    dep = deployment
    s = dep.scale
    limit = s.limit + 1000
    expectation = asyncio.create_task(
        asyncio.to_thread(Expectation.synthetic, s.seed, s.events, limit)
    )
    books, (_, urls) = await asyncio.gather(dep.books(2), dep.gateways(2))
    await dep.settled(books)
    args = dep.feed_args(seed=s.seed, events=s.events, rate=ZOMBIE_RATE, limit=limit)
    feed = await start(dep.procs, "feed", args)
    events = await dep.events(urls[0])
    clients = dep.clients(spread(urls, s.clients(4)), events, sse=1, dead_after_s=3)
    await all_connected(clients)
    await at_message(feed, 1000)
    zombie = owner(books, events[0])
    survivor = next(b for b in books if b is not zombie)
    zombie.proc.send_signal(signal.SIGSTOP)
    try:
        # The group expires the paused member (session timeout) and the survivor takes
        # every partition: it logs the assignment.
        async with asyncio.timeout(40):
            while assigned(survivor) != {0, 1, 2, 3}:
                await survivor.next_line()
        taken_over = len(feed.lines)
        # The survivor moves the books on (the feed reports every 1000 messages).
        await feed.next_line(timeout=30)
        assert len(feed.lines) > taken_over
    finally:
        zombie.proc.send_signal(signal.SIGCONT)
    try:
        code: int | None = await asyncio.wait_for(zombie.proc.wait(), 30)
    except TimeoutError:
        code = None
    await feed_done(feed)
    verdict = await dep.finish("zombie books SIGSTOP", clients, urls, await expectation)
    verdict.topic = check_topic(
        await read_topic(dep.kafka, f"{dep.prefix}deltas", read_committed=True)
    )
    verdict.details += verdict.topic.details
    reused = await reused_in_history(dep.redis)
    fenced = [line for line in zombie.lines if "fenced:" in line]
    verdict.notes.append(
        f"the zombie {'exited ' + str(code) if code is not None else 'kept running'} after "
        f"SIGCONT; fenced: {fenced[0].strip() if fenced else 'never'}; Redis histories with "
        f"a seq stored twice: {len(reused)}; {verdict.topic.messages} messages of "
        f"{verdict.topic.markets} markets on the deltas topic"
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
EXACTLY_ONCE = {"ODDSTREAM_DELTAS_DELIVERY": "exactly-once"}


async def test_random_kills(deployment: Deployment) -> None:
    """Book processors with exactly-once ``deltas`` SIGKILLed at seeded random moments
    while the feed runs (each replaced by a new one): a ``read_committed`` reader of
    ``deltas`` finds every market's seq gapless and never repeated within its epoch, and
    every client's book is right."""
    dep = deployment
    s = dep.scale
    limit = s.limit + 2000
    expectation = asyncio.create_task(
        asyncio.to_thread(Expectation.synthetic, s.seed, s.events, limit)
    )
    books, (_, urls) = await asyncio.gather(dep.books(2, env=EXACTLY_ONCE), dep.gateways(2))
    await dep.settled(books)
    args = dep.feed_args(seed=s.seed, events=s.events, rate=KILLS_RATE, limit=limit)
    feed = await start(dep.procs, "feed", args)
    events = await dep.events(urls[0])
    clients = dep.clients(spread(urls, s.clients(4)), events, sse=1, dead_after_s=3)
    await all_connected(clients)
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
    await feed_done(feed)
    verdict = await dep.finish("random kills (exactly-once)", clients, urls, await expectation)
    verdict.topic = check_topic(
        await read_topic(dep.kafka, f"{dep.prefix}deltas", read_committed=True)
    )
    verdict.details += verdict.topic.details
    reproduced = [line.strip() for p in dep.procs for line in p.lines if "produced them" in line]
    verdict.notes.append(
        f"killed {', '.join(killed)}; {verdict.topic.messages} messages of "
        f"{verdict.topic.markets} markets on the deltas topic; outbox re-productions: "
        f"{len(reproduced)}"
    )
    print(verdict.notes[-1], *reproduced, sep="\n")
    assert_passed(verdict)
