"""The first request of each connection picks who serves it.

``GET /sse`` as a connection's first request is the hot path of mobile clients: it is
served straight on the socket by :class:`server.sse.SseConnection` (coalesced writes,
no ASGI, no task per stream). Everything else — REST, the web shell, WebSocket upgrades
(which uvicorn hands to :mod:`server.ws`), and a stream requested on a keep-alive
connection that already served something — goes to uvicorn's own HTTP protocol and the
starlette app, untouched. Only the request head is looked at, never a body: a request
that is not a plain ``GET /sse`` is handed over with every byte received so far.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.config import HTTP_PROTOCOLS
from uvicorn.importer import import_from_string

from server.sse import SseConnection
from server.streams import Streams

#: A longer request head is not an SSE request of ours: uvicorn answers it.
_MAX_HEAD = 16_384
_SSE = (b"GET /sse?", b"GET /sse ")


def http_protocol(streams: Streams) -> Any:
    """The ``http`` protocol class to give uvicorn (a factory: it only calls it with
    keywords)."""
    inner: Any = import_from_string(HTTP_PROTOCOLS["auto"])

    def build(
        config: Any = None, server_state: Any = None, app_state: Any = None, _loop: Any = None
    ) -> Front:
        return Front(streams, lambda: inner(config, server_state, app_state, _loop), server_state)

    return build


def parse_head(head: bytes) -> tuple[str, dict[str, str]] | None:
    """(target, headers with lower-case names) of a plain ``GET /sse`` request head
    (without its final blank line); None when it is anything else or malformed."""
    if not head.startswith(_SSE):
        return None
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or parts[2] not in (b"HTTP/1.1", b"HTTP/1.0"):
        return None
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep or not name or name != name.strip():
            return None
        try:
            headers[name.decode("ascii").lower()] = value.strip().decode("latin-1")
        except UnicodeDecodeError:
            return None
    if "upgrade" in headers or "content-length" in headers or "transfer-encoding" in headers:
        return None
    try:
        return parts[1].decode("ascii"), headers
    except UnicodeDecodeError:
        return None


class Front(asyncio.Protocol):
    """Reads a connection's first request head, then hands the connection over."""

    def __init__(self, streams: Streams, inner: Any, server_state: Any):
        self._streams = streams
        self._inner = inner
        self._server_state = server_state
        self._transport: asyncio.Transport | None = None
        self._buffer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buffer) > _MAX_HEAD:
                self._hand_over(self._inner())
            return
        parsed = parse_head(self._buffer[:end])
        if parsed is None:
            self._hand_over(self._inner())
            return
        target, headers = parsed
        self._hand_over(SseConnection(self._streams, self._server_state, target, headers), b"")

    def eof_received(self) -> bool | None:
        return None

    def _hand_over(self, protocol: asyncio.Protocol, data: bytes | None = None) -> None:
        transport = self._transport
        assert transport is not None
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        pending = self._buffer if data is None else data
        self._buffer = b""
        if pending:
            protocol.data_received(pending)
