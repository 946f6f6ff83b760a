"""Just enough RFC 6455 framing for the lean benchmark client and the ceiling server: no
extensions, no fragmentation on send, unmasked server frames, masked client frames."""

from __future__ import annotations

import base64
import hashlib
import os
import struct

OP_CONT = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def accept_key(key: bytes) -> bytes:
    """``Sec-WebSocket-Accept`` for a client's ``Sec-WebSocket-Key``."""
    return base64.b64encode(hashlib.sha1(key.strip() + _GUID).digest())  # noqa: S324 - RFC 6455


def new_key() -> bytes:
    return base64.b64encode(os.urandom(16))


def header(length: int, opcode: int = OP_TEXT, *, mask: bool = False) -> bytes:
    first = 0x80 | opcode
    bit = 0x80 if mask else 0
    if length < 126:
        return struct.pack("!BB", first, bit | length)
    if length < 65536:
        return struct.pack("!BBH", first, bit | 126, length)
    return struct.pack("!BBQ", first, bit | 127, length)


def server_frame(payload: bytes, opcode: int = OP_TEXT) -> bytes:
    """A complete unmasked frame, as a server sends it."""
    return header(len(payload), opcode) + payload


def client_frame(payload: bytes, opcode: int = OP_TEXT) -> bytes:
    """A complete masked frame, as a client must send it."""
    mask = os.urandom(4)
    n = len(payload)
    repeated = (mask * (n // 4 + 1))[:n]
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")).to_bytes(n, "big")
    return header(n, opcode, mask=True) + mask + masked


def unmask(data: bytes, mask: bytes) -> bytes:
    n = len(data)
    repeated = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "big") ^ int.from_bytes(repeated, "big")).to_bytes(n, "big")


def close_frame(code: int = 1000) -> bytes:
    return client_frame(struct.pack("!H", code), OP_CLOSE)
