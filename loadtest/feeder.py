"""The synthetic match day into Kafka at a rate the benchmark can change while it runs.

The same producer as ``oddstream feed synth`` (:class:`feeds.kafka_feed.KafkaFeedProducer`,
the same topics and keys, each message stamped with the wall clock as it is sent), but
paced by the scoreboard's ``H_RATE_MILLI`` word instead of a fixed ``--rate``: the e2e
scenario first measures how many deliveries one feed message makes with its clients, then
sets the rate that gives the target deliveries per second.

    python -m loadtest.feeder --board /dev/shm/x --kafka 127.0.0.1:19092 --topic-prefix p.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import time
from pathlib import Path

import msgspec

from feeds.kafka_feed import KafkaFeedProducer, TopicNames, ensure_topics
from feeds.synthetic import MatchDay
from loadtest.board import H_PUBLISHED, H_RATE_MILLI, H_STOP, Board
from loadtest.payloads import now_ms

_IDLE_S = 0.05


async def run(board: Board, args: argparse.Namespace) -> None:
    topics = TopicNames(prefix=args.topic_prefix)
    await ensure_topics(args.kafka, args.partitions, topics=topics, timeout_s=30)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    day = iter(MatchDay(seed=args.seed, events=args.events, start_ms=now_ms()))
    sent = 0
    async with KafkaFeedProducer(args.kafka, topics=topics) as producer:
        print(f"feeder: producing to {args.kafka} under {args.topic_prefix!r}", flush=True)
        due = time.monotonic()
        while not stop.is_set() and not board.get(H_STOP):
            rate = board.get(H_RATE_MILLI) / 1000
            if rate <= 0:
                await asyncio.sleep(_IDLE_S)
                due = time.monotonic()
                continue
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(min(delay, _IDLE_S))  # Pacing, by design.
                continue
            # The feed's own timestamp is the moment it is sent: lag is measured from it.
            await producer.send(msgspec.structs.replace(next(day), ts=now_ms()))
            sent += 1
            board.set(H_PUBLISHED, sent)
            due = max(due + 1 / rate, time.monotonic() - 0.1)  # Never burst to catch up.
        await producer.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="the e2e feed of loadtest.bench")
    parser.add_argument("--board", type=Path, required=True)
    parser.add_argument("--kafka", required=True)
    parser.add_argument("--topic-prefix", default="")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--events", type=int, default=12)
    args = parser.parse_args(argv)
    board = Board.open(args.board)
    import uvloop

    uvloop.run(run(board, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
