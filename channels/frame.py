"""Frames: one message, encoded once per wire format, shared by every subscriber."""

from __future__ import annotations

import struct
from functools import cached_property

import protocol
from protocol import ServerMessage


class Frame:
    """An encoded server message. The JSON bytes are made once (or arrive ready-made from
    the broker); the text and MessagePack forms are derived on first use and cached, so
    every subscriber of a given format shares the same object. ``received`` is when the
    gateway received it from the broker (monotonic seconds; 0: not stamped), for the
    queueing-delay metric."""

    __slots__ = ("__dict__", "json", "message", "received")

    def __init__(self, message: ServerMessage, json: bytes | None = None, received: float = 0.0):
        self.message = message
        self.json = protocol.encode(message) if json is None else json
        self.received = received

    @cached_property
    def text(self) -> str:
        """The JSON as ``str``, for WebSocket text frames."""
        return self.json.decode()

    @cached_property
    def msgpack(self) -> bytes:
        return protocol.encode_msgpack(self.message)

    @cached_property
    def ws_text(self) -> bytes:
        """The whole WebSocket text frame (header and JSON), as a server sends it."""
        return ws_frame(OP_TEXT, self.json)

    @cached_property
    def ws_binary(self) -> bytes:
        """The whole WebSocket binary frame of the MessagePack form."""
        return ws_frame(OP_BINARY, self.msgpack)

    @cached_property
    def sse(self) -> bytes:
        """``event:`` and ``data:`` lines of an SSE event (the ``id:`` line is per client)."""
        kind = self.json[9 : self.json.index(b'"', 9)]  # Every message starts {"type":"...
        return b"event: " + kind + b"\ndata: " + self.json + b"\n\n"


OP_TEXT = 0x1
OP_BINARY = 0x2


def ws_frame(opcode: int, payload: bytes) -> bytes:
    """One final, unmasked, uncompressed WebSocket frame (RFC 6455 section 5.2), the form
    every server-to-client frame takes here: made once per message, written to each
    client as it is."""
    n = len(payload)
    first = 0x80 | opcode
    if n < 126:
        return bytes((first, n)) + payload
    if n < 65_536:
        return struct.pack("!BBH", first, 126, n) + payload
    return struct.pack("!BBQ", first, 127, n) + payload
