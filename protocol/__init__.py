"""The oddstream wire protocol (``oddstream.v1``): message types, codecs and book rebuilding.

Pure: imports nothing else from the project, does no I/O.
"""

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
from protocol.types import (
    FINAL_MARKET_STATES,
    UNSET,
    Ack,
    ClientCommand,
    Clock,
    Delta,
    Error,
    EventPhase,
    EventState,
    Heartbeat,
    MarketMessage,
    MarketStatus,
    Ping,
    Position,
    Reconnect,
    Resume,
    Selection,
    SelectionChange,
    SelectionStatus,
    ServerMessage,
    Snapshot,
    Subscribe,
    UnsetType,
    Unsubscribe,
)

#: WebSocket subprotocol of this version of the protocol (JSON text frames).
SUBPROTOCOL_JSON = "oddstream.v1.json"
#: WebSocket subprotocol for MessagePack binary frames.
SUBPROTOCOL_MSGPACK = "oddstream.v1.msgpack"

__all__ = [
    "FINAL_MARKET_STATES",
    "MESSAGE_TOO_BIG",
    "SUBPROTOCOL_JSON",
    "SUBPROTOCOL_MSGPACK",
    "UNSET",
    "Ack",
    "ApplyError",
    "ClientCommand",
    "Clock",
    "CloseCode",
    "Delta",
    "Error",
    "ErrorCode",
    "EventPhase",
    "EventState",
    "Heartbeat",
    "MarketMessage",
    "MarketStatus",
    "Ping",
    "Position",
    "ProtocolError",
    "Reconnect",
    "Resume",
    "Selection",
    "SelectionChange",
    "SelectionStatus",
    "ServerMessage",
    "Snapshot",
    "Subscribe",
    "UnsetType",
    "Unsubscribe",
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
