"""Resume tokens: every market position of a stream in one short opaque string.

An SSE stream's ``id:`` (and a REST snapshot's ``X-Oddstream-Token``) is a token holding
the position (market, epoch, seq) of *every* market the client holds, so one
``Last-Event-ID`` resumes a stream over many markets exactly. Pure and synchronous.

Format (version 1), base64url without padding of::

    version=1 | varint n | flags | varint L | layout (L bytes) | zero padding | seqs

* ``layout`` holds the n market ids sorted, then their n epochs in the same order, each
  front-coded against the one before it in its column (varint shared prefix length,
  varint suffix length, suffix); deflated (raw, flag bit 0) when that is smaller.
  Market ids of one event or sport share long prefixes and epochs minted by one
  processor differ in their last characters, so the layout costs a few bytes a market.
  (Epochs are unique per market, so there is nothing to de-duplicate; the two columns
  let deflate model ids and epochs apart.)
* ``seqs`` holds, per market in layout order, varint(seq). The layout changes only
  when a market or an epoch does; the header is padded to a multiple of 3 bytes, so its
  base64 text is computed once per layout and each new token re-encodes only the seqs
  (C-level join and base64, no per-market Python work).

A token that is not version 1 but has the shape ``<seq>~<epoch>~<market_id>`` is the
older single-market token and is still accepted.

Tokens come from clients, so decoding does bounded work whatever a token claims, each
bound checked before anything proportional to the claim is allocated: at most
:data:`~protocol.types.MAX_TOKEN_CHARS` characters; at most ``max_markets`` positions and
no more than the seqs the token has bytes for; market ids and epochs of at most
:data:`~protocol.types.MAX_NAME_CHARS` characters, :data:`MAX_LAYOUT_BYTES` of them in
all once front-coding is undone (so a few KB of ids that reuse each other cannot ask for
gigabytes); seqs of at most 16 ASCII digits (legacy) or up to
:data:`~protocol.types.MAX_SEQ`. Anything else raises :class:`TokenError`.
"""

from __future__ import annotations

import base64
import binascii
import zlib
from collections.abc import Iterable

from protocol import Position
from protocol.types import MAX_NAME_CHARS, MAX_NAMES, MAX_SEQ, MAX_TOKEN_CHARS

VERSION = 1
#: A layout may not inflate beyond this many bytes, nor its market ids and epochs add up
#: to more characters once front-coding is undone (2,000 markets of 64-character ids).
MAX_LAYOUT_BYTES = 256 * 1024
#: Markets one token may hold (a gateway may allow fewer: ``max_resume_markets``).
MAX_MARKETS = MAX_NAMES
#: Digits of a legacy token's seq (MAX_SEQ has 16).
_MAX_SEQ_DIGITS = len(str(MAX_SEQ))
#: Default budget (characters) of a stream's token: beyond it a stream falls back to the
#: single-market token of the message (see :meth:`PositionTracker.token`). Header lines
#: of 8 KB are a common proxy limit; 500 markets take 3-5 KB (see docs/guarantees.md).
TOKEN_BUDGET = 6_144

_DEFLATED = 1
#: Seqs joined together in a cached group (see :class:`PositionTracker`).
_GROUP = 32


class TokenError(ValueError):
    """The token is not one this server made (or is damaged)."""


def _varint(n: int) -> bytes:
    if n < 0:
        raise ValueError(f"varint of a negative number: {n}")
    if n < 0x80:
        return bytes((n,))
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


class _Reader:
    __slots__ = ("budget", "data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0
        self.budget = MAX_LAYOUT_BYTES  # Characters the columns may still expand to.

    def varint(self) -> int:
        shift = result = 0
        while True:
            if self.pos >= len(self.data) or shift > 63:
                raise TokenError("truncated or oversized number")
            byte = self.data[self.pos]
            self.pos += 1
            result |= (byte & 0x7F) << shift
            if byte < 0x80:
                return result
            shift += 7

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise TokenError("truncated")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def column(self, n: int) -> list[str]:
        """n front-coded strings, each of 1 to MAX_NAME_CHARS characters, within the
        budget of expanded characters (checked before each string is made)."""
        out: list[str] = []
        prev = ""
        for _ in range(n):
            k = self.varint()
            length = self.varint()
            if k > len(prev):
                raise TokenError("bad prefix")
            if not 0 < k + length <= MAX_NAME_CHARS:
                raise TokenError("market id or epoch empty or too long")
            self.budget -= k + length
            if self.budget < 0:
                raise TokenError("market ids and epochs too long in all")
            try:
                prev = prev[:k] + self.take(length).decode()
            except UnicodeDecodeError:
                raise TokenError("bad text") from None
            out.append(prev)
        return out


def _shared(a: str, b: str) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def _layout(entries: list[tuple[str, str]]) -> bytes:
    out = bytearray()
    for column in (0, 1):
        prev = ""
        for entry in entries:
            text = entry[column]
            k = _shared(text, prev)
            suffix = text[k:].encode()
            out += _varint(k) + _varint(len(suffix)) + suffix
            prev = text
    return bytes(out)


def _header(entries: list[tuple[str, str]]) -> bytes:
    raw = _layout(entries)
    packed = zlib.compress(raw, 9, wbits=-15) if raw else raw
    flags, layout = (_DEFLATED, packed) if len(packed) < len(raw) else (0, raw)
    head = bytes((VERSION,)) + _varint(len(entries)) + bytes((flags,))
    head += _varint(len(layout)) + layout
    return head + b"\0" * (-len(head) % 3)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def encode_positions(positions: Iterable[Position]) -> str:
    """The token of a set of positions (one per market; the last one of a market wins).
    Raises :class:`TokenError` past :data:`MAX_TOKEN_CHARS`."""
    tracker = PositionTracker(budget=MAX_TOKEN_CHARS)
    for p in positions:
        tracker.update(p.market_id, p.epoch, p.seq)
    token = tracker.token()
    if token is None:
        raise TokenError(f"{len(tracker)} positions do not fit in a token")
    return token


def decode_token(token: str, max_markets: int = MAX_MARKETS) -> list[Position]:
    """The positions a token holds (at most ``max_markets``), sorted by market id.
    Raises :class:`TokenError`, in time and memory bounded by the limits of the module
    doc whatever the token claims."""
    if not token or len(token) > MAX_TOKEN_CHARS:
        raise TokenError("empty or oversized token")
    if "~" in token:
        legacy = _legacy(token)
        if legacy is None:
            raise TokenError("not a resume token")
        return [legacy]
    try:
        data = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (binascii.Error, ValueError):
        raise TokenError("not base64url") from None
    reader = _Reader(data)
    if reader.take(1)[0] != VERSION:
        raise TokenError("unknown token version")
    n = reader.varint()
    if n > max_markets:
        raise TokenError(f"more than {max_markets} markets")
    flags = reader.take(1)[0]
    layout = reader.take(reader.varint())
    reader.take(-reader.pos % 3)
    if n > len(data) - reader.pos:  # Each seq takes at least one byte.
        raise TokenError("fewer seqs than markets")
    if flags & _DEFLATED:
        inflater = zlib.decompressobj(wbits=-15)
        try:
            layout = inflater.decompress(layout, MAX_LAYOUT_BYTES)
        except zlib.error:
            raise TokenError("damaged layout") from None
        if inflater.unconsumed_tail:
            raise TokenError("layout too large")
    entries = _Reader(layout)
    market_ids = entries.column(n)
    epochs = entries.column(n)
    if entries.pos != len(layout):
        raise TokenError("trailing layout bytes")
    out = [
        Position(market_id=m, epoch=e, seq=reader.varint())
        for m, e in zip(market_ids, epochs, strict=True)
    ]
    if reader.pos != len(data):
        raise TokenError("trailing bytes")
    if any(p.seq > MAX_SEQ for p in out):
        raise TokenError("seq out of range")
    return out


def _legacy(token: str) -> Position | None:
    """``<seq>~<epoch>~<market_id>``: a seq of 1-16 ASCII digits (``int`` also reads
    ``²`` or thousands of digits, slowly or not at all), names of a bounded length."""
    seq, _, rest = token.partition("~")
    epoch, _, market_id = rest.partition("~")
    if not (0 < len(seq) <= _MAX_SEQ_DIGITS and seq.isascii() and seq.isdigit()):
        return None
    if not (0 < len(epoch) <= MAX_NAME_CHARS and 0 < len(market_id) <= MAX_NAME_CHARS):
        return None
    value = int(seq)
    return Position(market_id=market_id, epoch=epoch, seq=value) if value <= MAX_SEQ else None


def legacy_token(market_id: str, epoch: str, seq: int) -> str:
    """The single-market token ``<seq>~<epoch>~<market_id>`` (the fallback beyond the
    budget, and what older clients hold)."""
    return f"{seq}~{epoch}~{market_id}"


class PositionTracker:
    """The positions of one stream's markets and their token, kept current.

    :meth:`update` is O(1); :meth:`token` re-joins the group of :data:`_GROUP` seqs that
    changed and base64-encodes the seqs (C-level, O(markets) bytes), unless a market or an
    epoch changed since the last token, which rebuilds the layout (O(markets log
    markets), rare). Measured: 2-4 us per token for 50-500 markets.
    """

    __slots__ = (
        "_budget",
        "_dirty",
        "_epochs",
        "_groups",
        "_head",
        "_index",
        "_parts",
        "_seqs",
        "_token",
    )

    def __init__(self, budget: int = TOKEN_BUDGET) -> None:
        self._budget = budget
        self._epochs: dict[str, str] = {}
        self._seqs: dict[str, int] = {}
        self._index: dict[str, int] = {}
        self._parts: list[bytes] = []
        self._groups: list[bytes] = []
        self._dirty: set[int] = set()
        self._head: str | None = None
        self._token: str | None = None

    def update(self, market_id: str, epoch: str, seq: int) -> None:
        self._token = None
        self._seqs[market_id] = seq
        if self._epochs.get(market_id) != epoch:
            self._epochs[market_id] = epoch
            self._head = None  # New market or new epoch: a new layout.
            return
        if self._head is not None:
            i = self._index[market_id]
            self._parts[i] = _varint(seq)
            self._dirty.add(i // _GROUP)

    def positions(self) -> list[Position]:
        return [
            Position(market_id=m, epoch=e, seq=self._seqs[m])
            for m, e in sorted(self._epochs.items())
        ]

    def token(self) -> str | None:
        """The token of every position, or None when it would pass the budget."""
        if self._token is None:
            if self._head is None:
                self._relayout()
            assert self._head is not None
            groups, parts = self._groups, self._parts
            for g in self._dirty:
                groups[g] = b"".join(parts[g * _GROUP : (g + 1) * _GROUP])
            self._dirty.clear()
            self._token = self._head + _b64(b"".join(groups))
        return self._token if len(self._token) <= self._budget else None

    def current(self) -> str | None:
        """The token last made or adopted, unless a position moved since (then None)."""
        return self._token

    def adopt(self, token: str) -> None:
        """Take ``token`` as the token of the current positions: one made by another
        tracker holding the same positions (tokens are canonical: the same positions
        always give the same token)."""
        self._token = token

    def _relayout(self) -> None:
        order = sorted(self._epochs)
        self._index = {m: i for i, m in enumerate(order)}
        self._parts = [_varint(self._seqs[m]) for m in order]
        self._groups = [b""] * -(-len(order) // _GROUP)
        self._dirty = set(range(len(self._groups)))
        self._head = _b64(_header([(m, self._epochs[m]) for m in order]))

    def __len__(self) -> int:
        return len(self._epochs)


class TokenCache:
    """Tokens shared between streams. A stream's next token depends only on its previous
    token (which holds all its positions) and the message it sends, so streams that follow
    the same markets through the same messages — a lobby's thousands of clients — make
    each token once: ``(previous token, frame) -> (token, its id: line)``. Bounded; a miss
    only costs making the token."""

    __slots__ = ("_entries", "_size")

    def __init__(self, size: int = 8_192) -> None:
        self._entries: dict[tuple[str, object], tuple[str, bytes]] = {}
        self._size = size

    def get(self, previous: str, frame: object) -> tuple[str, bytes] | None:
        return self._entries.get((previous, frame))

    def put(self, previous: str, frame: object, token: str, line: bytes) -> None:
        if len(self._entries) >= self._size:
            self._entries.clear()
        self._entries[(previous, frame)] = (token, line)
