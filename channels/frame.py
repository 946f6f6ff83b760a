"""Frames: one message, encoded once per wire format, shared by every subscriber."""

from __future__ import annotations

from functools import cached_property

import protocol
from protocol import ServerMessage


class Frame:
    """An encoded server message. The JSON bytes are made once (or arrive ready-made from
    the broker); the text and MessagePack forms are derived on first use and cached, so
    every subscriber of a given format shares the same object."""

    __slots__ = ("__dict__", "json", "message")

    def __init__(self, message: ServerMessage, json: bytes | None = None):
        self.message = message
        self.json = protocol.encode(message) if json is None else json

    @cached_property
    def text(self) -> str:
        """The JSON as ``str``, for WebSocket text frames."""
        return self.json.decode()

    @cached_property
    def msgpack(self) -> bytes:
        return protocol.encode_msgpack(self.message)

    @cached_property
    def sse(self) -> bytes:
        """``event:`` and ``data:`` lines of an SSE event (the ``id:`` line is per client)."""
        kind = self.json[9 : self.json.index(b'"', 9)]  # Every message starts {"type":"...
        return b"event: " + kind + b"\ndata: " + self.json + b"\n\n"
