"""Encoders and decoders, built once at import and shared by every caller.

Servers encode each message once per wire format and hand the same bytes to every
subscriber; clients and tests decode with :func:`decode_server`.
"""

from __future__ import annotations

from typing import Any

import msgspec

from protocol.errors import ErrorCode, ProtocolError
from protocol.types import ClientCommand, ServerMessage

_json_encoder = msgspec.json.Encoder(decimal_format="string")
_server_decoder: msgspec.json.Decoder[ServerMessage] = msgspec.json.Decoder(ServerMessage)
_client_decoder: msgspec.json.Decoder[ClientCommand] = msgspec.json.Decoder(ClientCommand)
_raw_decoder = msgspec.json.Decoder()
_msgpack_encoder = msgspec.msgpack.Encoder(decimal_format="string")
_msgpack_server_decoder: msgspec.msgpack.Decoder[ServerMessage] = msgspec.msgpack.Decoder(
    ServerMessage
)
_batch_decoder: msgspec.json.Decoder[list[ServerMessage]] = msgspec.json.Decoder(
    list[ServerMessage]
)
_msgpack_batch_decoder: msgspec.msgpack.Decoder[list[ServerMessage]] = msgspec.msgpack.Decoder(
    list[ServerMessage]
)

COMMAND_TYPES: frozenset[str] = frozenset(
    {"subscribe", "unsubscribe", "resume", "ping", "auth", "refresh"}
)

#: Deepest nesting of arrays and objects a command may have (a resume position is at 3).
MAX_DEPTH = 8
_BRACKETS = b"[]{}"
_NOT_BRACKETS = bytes(b for b in range(256) if b not in _BRACKETS)
_OPENING = frozenset(b"[{")


def too_deep(data: bytes, limit: int = MAX_DEPTH) -> bool:
    """Whether ``data`` (JSON) nests arrays and objects deeper than ``limit``; brackets
    inside strings do not count.

    msgspec decodes recursively, so a frame of 10,000 ``[`` would exhaust the stack: this
    looks first, in time linear in the frame, without recursion, and stops at the first
    bracket past the limit. Escaped backslashes, then escaped quotes, are dropped; what
    lies between the remaining quotes is strings."""
    if data.count(b"[") + data.count(b"{") <= limit:
        return False
    unescaped = data.replace(b"\\\\", b"").replace(b'\\"', b"")
    outside = b"".join(unescaped.split(b'"')[::2]).translate(None, _NOT_BRACKETS)
    depth = 0
    for byte in outside:
        if byte in _OPENING:
            depth += 1
            if depth > limit:
                return True
        else:
            depth -= 1
    return False


def encode(message: msgspec.Struct) -> bytes:
    """Encode any protocol message as compact JSON bytes."""
    return _json_encoder.encode(message)


def encode_msgpack(message: msgspec.Struct) -> bytes:
    """Encode any protocol message as MessagePack (the binary option)."""
    return _msgpack_encoder.encode(message)


def decode_server(data: bytes | str) -> ServerMessage:
    """Decode one server-to-client JSON message. Raises :class:`msgspec.DecodeError`."""
    try:
        return _server_decoder.decode(data)
    except UnicodeDecodeError as exc:  # Invalid UTF-8 inside a string: malformed too.
        raise msgspec.DecodeError(f"invalid UTF-8: {exc}") from None


def decode_server_msgpack(data: bytes) -> ServerMessage:
    """Decode one server-to-client MessagePack message."""
    return _msgpack_server_decoder.decode(data)


def decode_server_batch(data: bytes | str) -> list[ServerMessage]:
    """Decode one WebSocket message of a ``?batch=1`` connection: a JSON array of server
    messages (a lone object is accepted too). Raises :class:`msgspec.DecodeError`."""
    head = data.lstrip()[:1]
    if head not in (b"[", "["):
        return [decode_server(data)]
    try:
        return _batch_decoder.decode(data)
    except UnicodeDecodeError as exc:
        raise msgspec.DecodeError(f"invalid UTF-8: {exc}") from None


def decode_server_batch_msgpack(data: bytes) -> list[ServerMessage]:
    """The MessagePack form of :func:`decode_server_batch`."""
    if data[:1] and (data[0] & 0xF0 == 0x90 or data[0] in (0xDC, 0xDD)):
        return _msgpack_batch_decoder.decode(data)
    return [decode_server_msgpack(data)]


def decode_command(data: bytes | str) -> ClientCommand:
    """Decode one client command, or raise :class:`ProtocolError` with the precise code.

    The command's ``id`` is carried on the error whenever it could be read, so the
    client can match the error to its request. Nesting deeper than :data:`MAX_DEPTH` is
    refused (``too_deep``) before anything is decoded; the sizes of names and lists are
    bounded by the command types (``invalid``).
    """
    raw_bytes = data.encode() if isinstance(data, str) else data
    if too_deep(raw_bytes):
        raise ProtocolError(ErrorCode.TOO_DEEP, f"nested deeper than {MAX_DEPTH} levels")
    try:
        return _client_decoder.decode(data)
    except (msgspec.DecodeError, UnicodeDecodeError):
        pass  # Fall through to find out precisely what is wrong, for the error frame.
    try:
        raw: Any = _raw_decoder.decode(data)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        # msgspec reports invalid UTF-8 inside a JSON string as UnicodeDecodeError.
        raise ProtocolError(ErrorCode.BAD_JSON, f"not valid JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise ProtocolError(ErrorCode.BAD_JSON, "a command must be a JSON object")
    raw_id = raw.get("id")
    command_id = raw_id if isinstance(raw_id, str | int) and not isinstance(raw_id, bool) else None
    kind = raw.get("type")
    if not isinstance(kind, str) or kind not in COMMAND_TYPES:
        raise ProtocolError(
            ErrorCode.UNKNOWN_TYPE,
            f"unknown command type {kind!r}; expected one of {sorted(COMMAND_TYPES)}",
            command_id,
        )
    try:
        command: ClientCommand = msgspec.convert(raw, ClientCommand)
        return command
    except msgspec.ValidationError as exc:
        raise ProtocolError(ErrorCode.INVALID, f"invalid {kind}: {exc}", command_id) from None
