"""The benchmark harness's own arithmetic (``loadtest``): what a client counts per frame,
the publisher's window, percentiles, ratios and the spread over repeats. These are the
figures docs/performance.md is built from, so they must not drift silently."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterator
from pathlib import Path

import pytest

from loadtest import bench, wsframe
from loadtest.board import (
    BUCKETS,
    H_MODE,
    H_PUBLISHED,
    H_STOP,
    H_SUBS,
    H_WINDOW,
    MODE_WINDOW,
    S_CLOSED,
    S_DELTAS,
    S_FRAMES,
    Board,
    bucket_micros,
    bucket_of,
    percentiles,
)
from loadtest.client import CentrifugoConn, Counters, SSEConn, WSConn
from loadtest.payloads import DeltaSource, market_ids
from loadtest.publisher import Flight, drive


@pytest.fixture
def board(tmp_path: Path) -> Iterator[Board]:
    b = Board(tmp_path / "board", 2, create=True)
    yield b
    b.close()


def _opened(kind: type[WSConn], board: Board) -> WSConn:
    async def make() -> WSConn:
        conn = kind(Counters(board, 0), b"", None, False)
        conn.head = False
        return conn

    return asyncio.run(make())


# -- counting -------------------------------------------------------------------------------


def test_a_websocket_client_counts_every_delta_of_a_packed_frame(board: Board) -> None:
    source = DeltaSource(market_ids(3))
    frames = [
        wsframe.server_frame(source.next()),
        wsframe.server_frame(source.packed(3)),
        wsframe.server_frame(b'{"type":"heartbeat"}'),
        wsframe.server_frame(source.packed(64)),  # A 16-bit length.
    ]
    stream = b"".join(frames)
    conn = _opened(WSConn, board)
    cut = len(frames[0]) + 5  # The second frame arrives in two pieces.
    rest = conn.parse(stream[:cut])
    assert rest == stream[len(frames[0]) : cut]
    assert conn.parse(rest + stream[cut:]) == b""
    assert board.total(S_FRAMES) == 4
    assert board.total(S_DELTAS) == 1 + 3 + 64


def test_an_sse_client_keeps_an_incomplete_event_whole(board: Board) -> None:
    event = b'event: delta\ndata: {"type":"delta","ts":1}\n\n'
    conn = _opened(SSEConn, board)
    conn.parse(event[:20])
    assert conn.body == event[:20]
    conn.parse(event[20:] + event)
    assert (board.total(S_FRAMES), board.total(S_DELTAS)) == (2, 2)
    crlf = event.replace(b"\n", b"\r\n")
    conn.parse(crlf)
    assert (board.total(S_FRAMES), board.total(S_DELTAS)) == (3, 3)


# -- the publisher's window -----------------------------------------------------------------


def test_in_flight_is_published_times_subscribers_minus_received() -> None:
    flight = Flight(published=100, received=5_000, live=10)
    assert flight.count(105, 5_020, 10, 1) == 5 * 10 - 20
    assert flight.count(105, 5_020, 10, 4) == 5 * 10 * 4 - 20


def test_a_dropped_client_returns_its_share_of_the_window() -> None:
    flight = Flight(published=0, received=0, live=10)
    assert flight.count(5, 20, 10, 1) == 30
    # One client is closed: 9 live clients keep 9/10 of what was in flight.
    assert flight.count(5, 20, 9, 1) == 27
    assert flight.count(6, 20, 9, 1) == 27 + 9
    assert flight.count(6, 56, 9, 1) == 0


def test_the_publisher_keeps_publishing_when_a_client_is_dropped(board: Board) -> None:
    """Two subscribers, a window of 8: one client takes everything, the other is closed
    by the server. Its share must come back, or the publisher stalls at the window."""
    board.set(H_SUBS, 2)
    board.set(H_WINDOW, 8)
    board.words[board.base(1) + S_CLOSED] = 1
    board.set(H_MODE, MODE_WINDOW)

    async def scenario() -> None:
        async def publish(n: int) -> None:
            board.words[board.base(0) + S_DELTAS] += n  # The live client takes it at once.
            if board.get(H_PUBLISHED) + n >= 200:
                board.set(H_STOP, 1)

        async with asyncio.timeout(5):
            await drive(board, publish)

    asyncio.run(scenario())
    assert board.get(H_PUBLISHED) >= 200


# -- percentiles ----------------------------------------------------------------------------


def test_buckets_are_two_percent_wide() -> None:
    for micros in (1.0, 7.3, 950.0, 12_345.0, 4_000_000.0):
        middle = bucket_micros(bucket_of(micros))
        assert abs(middle - micros) / micros < 0.011
    assert bucket_of(-5.0) == 0
    assert bucket_of(1e12) == BUCKETS - 1


def test_percentiles_take_the_nearest_rank() -> None:
    hist = [0] * BUCKETS
    for ms in range(1, 101):  # 1 .. 100 ms, once each.
        hist[bucket_of(ms * 1000)] += 1
    got = percentiles(hist, (50, 99, 100))
    assert got[50] == pytest.approx(50, rel=0.011)
    assert got[99] == pytest.approx(99, rel=0.011)
    assert got[100] == pytest.approx(100, rel=0.011)
    assert percentiles([0] * BUCKETS, (50,)) == {50: None}


# -- ratios and repeats ---------------------------------------------------------------------


def test_ratio_is_none_only_when_a_side_was_not_measured() -> None:
    assert bench._ratio(0, 100) == 0.0
    assert bench._ratio(458_543, 139_304) == 3.292
    assert bench._ratio(None, 100) is None
    assert bench._ratio(5, None) is None
    assert bench._ratio(5, 0) is None


def _run(rate: float | None, p99: float, available: bool = True) -> bench.Run:
    run = bench.Run("x", "ws", 10, available=available)
    run.values.update(delivered_per_s=rate, p99_ms=p99)
    return run


def test_repeats_report_the_median_run_and_the_spread() -> None:
    chosen = bench.combine([_run(100, 9.0), _run(300, 7.0), _run(200, 8.0), _run(None, 1, False)])
    assert chosen.values["delivered_per_s"] == 200
    spread = chosen.values["spread"]
    assert spread["delivered_per_s"] == {"min": 100, "median": 200, "max": 300, "n": 3}
    assert spread["p99_ms"] == {"min": 7.0, "median": 8.0, "max": 9.0, "n": 3}
    assert spread["cpu_cores"] is None
    first = _run(400, 1.0)
    first.values["latency_at"] = {"5000": {"p99_ms": 3.0}}
    two = bench.combine([first, _run(100, 2.0)])
    assert two.values["latency_at"] == {"5000": {"p99_ms": 3.0}}  # From the first round.
    assert two.values["delivered_per_s"] == 100  # The lower middle, never the best.
    assert math.isclose(two.values["spread"]["delivered_per_s"]["median"], 250)


def test_a_run_that_lost_clients_reports_no_throughput() -> None:
    assert bench.refusal(1_000, 1_000, 0) == ""
    reason = bench.refusal(1_000, 893, 111)
    assert "107 of 1000 clients could not connect" in reason
    assert "closed 111 of 893" in reason
    values = {"delivered_per_s": 15_055, "deltas_per_s": 15_055, "p99_ms": 102.2, "cpu": 1}
    bench.withhold(values, reason)
    assert values["refused"] == reason
    assert "delivered_per_s" not in values and values["withheld"]["p99_ms"] == 102.2
    run = bench.Run("pushpin", "ws", 1_000)
    run.values = values
    result = bench.summarize("ws_1k", "ws", 1_000, {"pushpin": run}, ("pushpin",))
    assert result["peers"]["pushpin"]["reason"] == reason
    assert result["ratio_to_peer"]["pushpin"] is None


def test_ratios_are_against_the_joining_ceiling_in_deltas() -> None:
    runs = {}
    for system, frames, deltas in (
        ("oddstream", 400, 400),
        (bench.CEILING, 500, 500),
        ("ceiling", 200, 200),
        ("centrifugo", 50, 100),  # Two publications per WebSocket message.
    ):
        runs[system] = bench.Run(system, "ws", 10)
        runs[system].values.update(delivered_per_s=frames, deltas_per_s=deltas)
    result = bench.summarize("ws_5k", "ws", 10, runs, tuple(runs))
    assert result["ratio_to_ceiling"] == 0.8
    assert result["ratio_to_per_frame_ceiling"] == 2.0
    assert result["ratio_to_peer"]["centrifugo"] == 4.0


def test_the_packed_ceiling_uses_the_batched_runs_own_batch_size() -> None:
    assert bench.batch_size({"delivered_per_s": 5_301, "deltas_per_s": 240_733}) == 45
    assert bench.batch_size({"delivered_per_s": 5_301, "deltas_per_s": 240_733}, exact=True) == (
        45.41
    )
    assert bench.batch_size({"delivered_per_s": 0, "deltas_per_s": 0}) is None


def test_a_centrifugo_client_answers_pings_even_inside_joined_replies(board: Board) -> None:
    sent: list[bytes] = []

    class Transport:
        def write(self, data: bytes) -> None:
            sent.append(data)

    conn = _opened(CentrifugoConn, board)
    conn.transport = Transport()  # type: ignore[assignment]
    push = b'{"push":{"channel":"m","pub":{"data":{"type":"delta","ts":1}}}}'
    for message in (b"{}", b"{}\n" + push, push + b"\n{}", push + b"\n{}\n" + push, push):
        conn.parse(wsframe.server_frame(message))
    assert len(sent) == 4
    assert board.total(S_FRAMES) == 4  # The ping alone is not a message.
    assert board.total(S_DELTAS) == 5


def test_the_joining_ceiling_writes_like_the_gateway() -> None:
    """One write per dirty client per flush, at most a batch of frames joined, the rest at
    the next flush; nothing while the socket's buffer is full."""
    from loadtest.ceiling import Fanout, _Peer
    from server.outbox import BATCH

    class Transport:
        def __init__(self) -> None:
            self.writes: list[bytes] = []

        def write(self, data: bytes) -> None:
            self.writes.append(data)

        def is_closing(self) -> bool:
            return False

    async def scenario() -> tuple[list[bytes], list[bytes]]:
        fanout = Fanout(join=True)
        fast, full = _Peer(fanout), _Peer(fanout)
        for peer in (fast, full):
            peer.transport = Transport()  # type: ignore[assignment]
        full.pause_writing()
        clients = {fast, full}
        for i in range(BATCH + 6):
            fanout.send(clients, b"%d," % i)
        await asyncio.sleep(0)  # The first flush.
        assert fast.transport.writes == [b"".join(b"%d," % i for i in range(BATCH))]  # type: ignore[union-attr]
        await asyncio.sleep(0)  # The rest, at the next flush.
        assert full.transport.writes == []  # type: ignore[union-attr]
        full.resume_writing()
        await asyncio.sleep(0)
        return list(fast.transport.writes), list(full.transport.writes)  # type: ignore[union-attr]

    fast, full = asyncio.run(scenario())
    assert fast[1] == b"".join(b"%d," % i for i in range(BATCH, BATCH + 6))
    assert full == [b"".join(b"%d," % i for i in range(BATCH))]
