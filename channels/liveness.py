"""Owner beats (sans-I/O): the message a book processor publishes to say it is alive and
which partitions it holds, and the bookkeeping that tells when something went silent.

Every ``owner_beat_ms`` each processor publishes an :class:`OwnerBeat` on
:func:`channels.names.owner_beat_channel`. Processors of the same group evict a member whose
beats stopped (:mod:`feeds.liveness`); gateways suspend the open markets of a partition no
beat names any more (:mod:`server.liveness`). Both keep a :class:`Silence` of what they heard.
See docs/guarantees.md, "Owner liveness and failover".
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from typing import Generic, TypeVar

import msgspec

#: Default interval (ms) between two owner beats of a processor.
OWNER_BEAT_MS = 250
#: Default silence (ms) of a member's beats after which its group evicts it.
OWNER_EVICT_MS = 1_500
#: The longest beat accepted (bytes): a member id and a few hundred partition numbers.
MAX_BEAT_BYTES = 8_192


class OwnerBeat(msgspec.Struct, frozen=True, forbid_unknown_fields=False):
    """One beat: ``member`` (its Kafka member id) of consumer group ``group`` is alive and
    holds the books of ``partitions`` now (none during a rebalance); ``ts`` epoch ms."""

    group: str
    member: str
    partitions: tuple[int, ...]
    ts: int


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(OwnerBeat)


def encode_beat(beat: OwnerBeat) -> bytes:
    return _encoder.encode(beat)


def decode_beat(payload: bytes) -> OwnerBeat | None:
    """The beat in ``payload``, or None when it is not one (too long, malformed)."""
    if len(payload) > MAX_BEAT_BYTES:
        return None
    try:
        return _decoder.decode(payload)
    except msgspec.DecodeError:
        return None


K = TypeVar("K", bound=Hashable)


class Silence(Generic[K]):
    """When each key (a partition, a member) was last heard, on a monotonic clock in
    seconds. Only keys heard at least once are judged; each silence is reported once."""

    __slots__ = ("_after", "_heard", "_silent")

    def __init__(self, after_s: float):
        if after_s <= 0:
            raise ValueError(f"the silence bound must be > 0, got {after_s}")
        self._after = after_s
        self._heard: dict[K, float] = {}
        self._silent: set[K] = set()

    @property
    def after_s(self) -> float:
        return self._after

    @property
    def silent(self) -> frozenset[K]:
        """Keys reported silent by :meth:`due` and not heard since."""
        return frozenset(self._silent)

    def heard(self, keys: Iterable[K], now: float) -> list[K]:
        """``keys`` were heard ``now``; returns those that were silent (they are back)."""
        back = []
        for key in keys:
            self._heard[key] = now
            if key in self._silent:
                self._silent.discard(key)
                back.append(key)
        return back

    def due(self, now: float) -> list[K]:
        """Keys not heard for longer than the bound, not reported before."""
        out = [k for k, t in self._heard.items() if now - t > self._after and k not in self._silent]
        self._silent.update(out)
        return out

    def restart(self, now: float) -> None:
        """Every key counts as heard ``now`` (what was said meanwhile could not be heard:
        a reconnect); silent keys stay silent until heard."""
        for key in self._heard:
            self._heard[key] = now

    def retry(self, key: K) -> None:
        """Report ``key`` again at the next :meth:`due` if it is still silent then (acting
        on its silence failed)."""
        self._silent.discard(key)

    def forget(self, key: K) -> None:
        self._heard.pop(key, None)
        self._silent.discard(key)
