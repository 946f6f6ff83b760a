"""The oddstream wire protocol (``oddstream.v1``): message types, codecs and book rebuilding.

Pure: imports nothing else from the project, does no I/O.
"""

from protocol import types
from protocol.book import apply, apply_selection_changes, as_reset, verify
from protocol.checksum import checksum
from protocol.codec import (
    decode_command,
    decode_server,
    decode_server_batch,
    decode_server_batch_msgpack,
    decode_server_msgpack,
    encode,
    encode_msgpack,
)
from protocol.errors import MESSAGE_TOO_BIG, ApplyError, CloseCode, ErrorCode, ProtocolError
from protocol.types import *  # noqa: F403 - all of protocol.types is exported (see __all__)

#: WebSocket subprotocol of this version of the protocol (JSON text frames).
SUBPROTOCOL_JSON = "oddstream.v1.json"
#: WebSocket subprotocol for MessagePack binary frames.
SUBPROTOCOL_MSGPACK = "oddstream.v1.msgpack"

__all__ = [
    "MESSAGE_TOO_BIG",
    "SUBPROTOCOL_JSON",
    "SUBPROTOCOL_MSGPACK",
    "ApplyError",
    "CloseCode",
    "ErrorCode",
    "ProtocolError",
    "apply",
    "apply_selection_changes",
    "as_reset",
    "checksum",
    "decode_command",
    "decode_server",
    "decode_server_batch",
    "decode_server_batch_msgpack",
    "decode_server_msgpack",
    "encode",
    "encode_msgpack",
    "verify",
]
__all__ += types.__all__
