"""Admission: the step every connection passes, whatever it becomes.

:class:`Admission` is asked once per accepted socket (:meth:`Admission.admit`, the total
and per-address caps) and once per request that opens a stream or reaches the app from a
browser (:meth:`Admission.origin_allowed`, the Origin allowlist; :meth:`Admission.cors`,
the CORS headers of an answer). Authentication and tracing hook in here too, so that a
WebSocket, an SSE stream and a REST request meet the same checks. Every refusal is
counted; :mod:`server.metrics` surfaces the counters and the limits.
"""

from __future__ import annotations

import asyncio
import resource
from collections import Counter

import msgspec

from server.settings import Settings

#: File descriptors kept free when ``max_connections`` is derived from the open-files
#: limit: listeners, Redis, logs, and the sockets being refused.
FD_RESERVE = 64


class EdgeStats(msgspec.Struct):
    """Counters of the edge, in ``/metrics`` as ``oddstream_edge_<name>_total``."""

    accepted: int = 0
    refused_per_ip: int = 0
    """Connections refused because their address already held ``max_connections_per_ip``."""
    refused_capacity: int = 0
    """Connections refused because the node held ``max_connections``."""
    refused_origin: int = 0
    """WebSocket handshakes and SSE requests refused for their ``Origin``."""
    header_timeouts: int = 0
    """Connections closed because a request head took longer than ``header_timeout_s``."""
    idle_timeouts: int = 0
    """Connections closed after ``idle_timeout_s`` without a request or a first command."""
    bad_requests: int = 0
    """Requests answered 400, 413, 431 or 505."""


class Ticket:
    """One admitted connection; :meth:`release` (idempotent) when it is gone."""

    __slots__ = ("_admission", "peer")

    def __init__(self, admission: Admission, peer: str):
        self._admission: Admission | None = admission
        self.peer = peer

    def release(self) -> None:
        admission, self._admission = self._admission, None
        if admission is not None:
            admission.release(self.peer)


def default_max_connections() -> int:
    """The open-files limit less :data:`FD_RESERVE`: past it, ``accept`` would fail."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 1_000_000
    return max(1, soft - FD_RESERVE)


class Admission:
    """Connection caps, the Origin allowlist and the CORS policy of one listener."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.max_connections = settings.max_connections or default_max_connections()
        self.stats = EdgeStats()
        self.connections = 0
        self._per_ip: Counter[str] = Counter()
        self._origins = frozenset(o.strip() for o in settings.allowed_origins.split(",")) - {""}
        self._idle = asyncio.Event()
        self._idle.set()

    # -- connections ------------------------------------------------------------------------

    def admit(self, peer: str) -> Ticket | None:
        """A ticket for a new connection from ``peer``, or None (counted) when the node or
        the address is full: the caller answers 503 and closes."""
        if self.connections >= self.max_connections:
            self.stats.refused_capacity += 1
            return None
        per_ip = self.settings.max_connections_per_ip
        if per_ip and self._per_ip[peer] >= per_ip:
            self.stats.refused_per_ip += 1
            return None
        self.stats.accepted += 1
        self.connections += 1
        self._per_ip[peer] += 1
        self._idle.clear()
        return Ticket(self, peer)

    def release(self, peer: str) -> None:
        self.connections -= 1
        left = self._per_ip[peer] - 1
        if left:
            self._per_ip[peer] = left
        else:
            del self._per_ip[peer]  # An address with no connection holds no memory.
        if not self.connections:
            self._idle.set()

    async def wait_idle(self) -> None:
        """Return when no admitted connection is left."""
        await self._idle.wait()

    # -- browsers ---------------------------------------------------------------------------

    def origin_allowed(self, origin: str | None, host: str | None) -> bool:
        """Whether a stream may be opened from a page of ``origin`` (the request's
        ``Origin`` header; ``host``: its ``Host``). No Origin (not a browser): allowed.
        Same origin as the host: allowed. Otherwise only a listed origin, or any with an
        explicit ``*``; ``null`` and ``file://`` only when listed verbatim."""
        if origin is None:
            return True
        if origin in self._origins:
            return True
        if origin == "null" or not origin.startswith(("http://", "https://")):
            return False
        if "*" in self._origins:
            return True
        return host is not None and origin.split("://", 1)[1] == host

    def refuse_origin(self) -> None:
        self.stats.refused_origin += 1

    def cors(self, origin: str | None, host: str | None) -> list[tuple[bytes, bytes]]:
        """CORS headers for an answer to a request from ``origin``: the origin echoed when
        it is allowed and not the page's own, nothing otherwise (the browser then keeps
        the answer from the page)."""
        if origin is None or not self.origin_allowed(origin, host):
            return []
        if host is not None and origin.split("://", 1)[-1] == host:
            return []
        return [
            (b"access-control-allow-origin", origin.encode("latin-1")),
            (b"access-control-expose-headers", b"X-Oddstream-Token"),
            (b"vary", b"Origin"),
        ]
