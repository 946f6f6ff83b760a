"""Resume tokens (server.resume_token): round trips, sizes, incremental updates, and
refusal of anything malformed."""

from __future__ import annotations

import base64
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from feeds.embedded import epoch_minter
from protocol import Position
from server.resume_token import (
    MAX_TOKEN_CHARS,
    PositionTracker,
    TokenError,
    decode_token,
    encode_positions,
    legacy_token,
)


def lobby(n: int, seed: int = 1) -> list[Position]:
    """n main markets of n events, with epochs minted by one processor in random order
    and seqs of a busy match day."""
    rng = random.Random(seed)
    ids = [f"fb-{i:04d}:1x2" for i in range(1, n + 1)]
    mint = epoch_minter(lambda: 1_767_364_200_000)
    order = ids[:]
    rng.shuffle(order)
    epochs = {m: mint(m) for m in order}
    return [Position(market_id=m, epoch=epochs[m], seq=rng.randrange(1, 5000)) for m in ids]


def _b36(n: int) -> str:
    return "".join("0123456789abcdefghijklmnopqrstuvwxyz"[n // 36**i % 36] for i in range(9))


def betfair(n: int, seed: int = 2, random_epochs: bool = False) -> list[Position]:
    """Exchange market ids, minted by two processors (or, worst case, random epochs)."""
    rng = random.Random(seed)
    ids = sorted({f"1.{197_931_750 + rng.randrange(300_000)}" for _ in range(n)})
    mints = [epoch_minter(lambda: 1_767_364_200_000), epoch_minter(lambda: 1_767_390_000_000)]
    return [
        Position(
            market_id=m,
            epoch=_b36(rng.randrange(36**9)) if random_epochs else rng.choice(mints)(m),
            seq=rng.randrange(1, 60_000),
        )
        for m in ids
    ]


@pytest.mark.parametrize(
    "positions", [lobby(1), lobby(50), lobby(500), betfair(500), betfair(500, random_epochs=True)]
)
def test_round_trip(positions: list[Position]) -> None:
    assert decode_token(encode_positions(positions)) == sorted(positions, key=lambda p: p.market_id)


@pytest.mark.parametrize(
    ("positions", "limit"),
    [
        (lobby(50), 500),
        (lobby(500), 4_000),
        (betfair(500), 5_000),
        # Worst case: epochs with nothing in common. Over the default budget (6144), so
        # such a stream falls back to single-market tokens (see PositionTracker.token).
        (betfair(500, random_epochs=True), 9_000),
        (betfair(50, random_epochs=True), 1_000),
    ],
)
def test_tokens_stay_small(positions: list[Position], limit: int) -> None:
    token = encode_positions(positions)
    assert len(token) < limit
    assert token.isascii() and all(c.isalnum() or c in "-_" for c in token)


@given(
    st.dictionaries(
        st.text(min_size=1, max_size=40),
        st.tuples(st.text(min_size=1, max_size=20), st.integers(0, 2**40)),
        max_size=30,
    )
)
def test_any_positions_round_trip(raw: dict[str, tuple[str, int]]) -> None:
    positions = [Position(market_id=m, epoch=e, seq=s) for m, (e, s) in sorted(raw.items())]
    token = encode_positions(positions)
    if "~" in token:  # pragma: no cover - base64url has no "~"
        pytest.fail("token clashes with the legacy form")
    assert decode_token(token) == positions


def test_the_tracker_matches_a_fresh_encoding_after_every_update() -> None:
    rng = random.Random(3)
    positions = {p.market_id: p for p in lobby(120)}
    tracker = PositionTracker()
    for p in positions.values():
        tracker.update(p.market_id, p.epoch, p.seq)
    for step in range(400):
        m = rng.choice(list(positions))
        p = positions[m]
        if step % 50 == 49:
            p = Position(market_id=m, epoch=p.epoch + "x", seq=1)  # A new epoch.
        elif step % 70 == 69:
            m = f"new-{step}"
            p = Position(market_id=m, epoch="e", seq=1)  # A new market.
        else:
            p = Position(market_id=m, epoch=p.epoch, seq=p.seq + rng.randrange(1, 300))
        positions[m] = p
        tracker.update(p.market_id, p.epoch, p.seq)
        token = tracker.token()
        assert token == encode_positions(positions.values())
        assert decode_token(token) == sorted(positions.values(), key=lambda q: q.market_id)
    assert tracker.positions() == sorted(positions.values(), key=lambda q: q.market_id)


def test_a_tracker_over_budget_gives_no_token() -> None:
    tracker = PositionTracker(budget=100)
    for p in lobby(50):
        tracker.update(p.market_id, p.epoch, p.seq)
    assert tracker.token() is None
    assert len(tracker) == 50


def test_the_legacy_single_market_token_is_still_read() -> None:
    token = legacy_token("fb-0001:1x2", "mjwz0gg01", 42)
    assert token == "42~mjwz0gg01~fb-0001:1x2"
    assert decode_token(token) == [Position(market_id="fb-0001:1x2", epoch="mjwz0gg01", seq=42)]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@pytest.mark.parametrize(
    "token",
    [
        "",
        "~~",
        "x~e~m",
        "!!!",
        "A" * (MAX_TOKEN_CHARS + 1),
        _b64(b"\x02\x00\x00\x00"),  # unknown version
        _b64(b"\x01\x05\x00\x00"),  # five markets, empty layout
        _b64(b"\x01\x01\x00\x09abc"),  # layout shorter than announced
        _b64(b"\x01\x01\x01\x02\xff\xff"),  # not deflate
        _b64(b"\x01\x01\x00\x06\x05\x01a\x00\x01e"),  # prefix longer than the previous id
        _b64(b"\x01\xff\xff\xff\xff\x7f"),  # too many markets
        encode_positions(lobby(3)) + "AAAA",  # trailing bytes
    ],
)
def test_malformed_tokens_are_refused(token: str) -> None:
    with pytest.raises(TokenError):
        decode_token(token)


def test_a_deflate_bomb_is_refused() -> None:
    import zlib

    bomb = zlib.compress(b"\x00" * (4 << 20), 9, wbits=-15)
    head = b"\x01\x01\x01"
    n = len(bomb)
    varint = bytearray()
    while n >= 0x80:
        varint.append((n & 0x7F) | 0x80)
        n >>= 7
    varint.append(n)
    with pytest.raises(TokenError):
        decode_token(_b64(head + bytes(varint) + bomb))


def test_token_cache_gives_every_stream_the_tokens_it_would_make() -> None:
    """Streams sharing a TokenCache write byte for byte what they write alone, and a
    lobby's streams (same positions, same messages) make each token once."""
    from channels.frame import Frame
    from protocol import Delta
    from server.resume_token import TokenCache
    from server.sse import sse_chunk

    markets = [f"fb-{i}:1x2" for i in range(12)]
    frames = [
        Frame(Delta(market_id=markets[n % 12], event_id="fb", seq=2 + n // 12, epoch="e1", ts=n))
        for n in range(240)
    ]
    chunks = [frames[i : i + 7] for i in range(0, len(frames), 7)]

    def stream(cache: TokenCache | None, start: int) -> list[bytes]:
        tracker = PositionTracker()
        for i, m in enumerate(markets):
            tracker.update(m, "e1", 1 if i != 3 else start)
        tracker.token()
        return [sse_chunk(c, tracker, cache) for c in chunks]

    cache = TokenCache()
    alone = [stream(None, 1), stream(None, 0)]
    shared = [stream(cache, 1) for _ in range(3)] + [stream(cache, 0)]
    assert shared[:3] == [alone[0]] * 3
    assert shared[3] == alone[1]
    # Four streams, two position histories until market 3's first delta (the 4th
    # message) makes them equal: one token per message, plus the 4 of the other history.
    assert len(cache._entries) == len(frames) + 4
