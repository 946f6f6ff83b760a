"""Error and close codes of the wire protocol, and the protocol package's exceptions.

Close codes come in two ranges (see ``docs/protocol.md``):

* ``4000-4099``: transient; the client should reconnect (to any gateway) and ``resume``.
* ``4100-4199``: permanent; the client must not retry with the same request.
"""

from __future__ import annotations

from enum import IntEnum, StrEnum


class ErrorCode(StrEnum):
    """Machine-readable ``code`` of an ``error`` message."""

    BAD_JSON = "bad_json"
    """The frame is not a JSON object."""
    UNKNOWN_TYPE = "unknown_type"
    """``type`` is missing or names no command."""
    INVALID = "invalid"
    """A field is missing, of the wrong type, or out of range."""
    UNKNOWN_MARKET = "unknown_market"
    UNKNOWN_EVENT = "unknown_event"
    UNKNOWN_LOBBY = "unknown_lobby"
    TOO_MANY_SUBSCRIPTIONS = "too_many_subscriptions"
    UNAVAILABLE = "unavailable"
    """The server cannot serve the request now (storage unreachable); retry later."""
    TOO_DEEP = "too_deep"
    """The frame nests arrays or objects deeper than the protocol allows."""
    RATE_LIMITED = "rate_limited"
    """The connection sends commands faster than its rate limit; the command was not run."""
    UNAUTHORIZED = "unauthorized"
    """The command needs an access token and the connection has none (``auth`` first)."""
    TOKEN_INVALID = "token_invalid"  # noqa: S105 - an error code, not a secret
    """The access token is malformed, forged, for another audience or issuer, or signed
    by an unknown key."""
    TOKEN_EXPIRED = "token_expired"  # noqa: S105 - an error code, not a secret
    """The access token has expired: get a new one (``refresh``, or reconnect with it)."""
    FORBIDDEN = "forbidden"
    """The access token does not grant a channel the command names."""


class CloseCode(IntEnum):
    """WebSocket close codes used by oddstream, beyond the standard 1000-1015."""

    # Reconnect and resume.
    GOING_AWAY = 4000
    """The gateway is draining; reconnect elsewhere and resume."""
    SLOW_CONSUMER = 4001
    """The client fell too far behind; reconnect and resume."""
    NOT_READING = 4002
    """A write to the client stayed blocked past the send timeout; reconnect and resume."""
    TOKEN_EXPIRED = 4003
    """The access token expired without a ``refresh``: reconnect with a new token and
    resume (the ``reconnect`` message before the close holds the positions)."""
    # Do not retry.
    PROTOCOL_VIOLATION = 4100
    UNSUPPORTED_SUBPROTOCOL = 4101
    UNAUTHORIZED = 4102
    """The ``auth`` token was refused: do not retry without new credentials."""
    RATE_LIMITED = 4103
    """The client kept sending commands past its rate limit: do not retry at that pace."""

    @property
    def retriable(self) -> bool:
        """True when the client should reconnect and resume."""
        return 4000 <= self.value < 4100


#: Standard close code sent when a frame exceeds the size limit (RFC 6455).
MESSAGE_TOO_BIG = 1009


class ProtocolError(Exception):
    """A client command could not be accepted; maps to an ``error`` message."""

    def __init__(self, code: ErrorCode, message: str, command_id: str | int | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.command_id = command_id


class ApplyError(Exception):
    """A delta cannot be applied to a book; the client must take a fresh snapshot.

    ``reason`` is one of ``gap`` (deltas are missing), ``stale`` (already applied),
    ``epoch`` (the stream was restarted), ``market`` (the delta is for another market) or
    ``checksum`` (the book after it does not have the delta's ``crc``: the book is wrong).
    """

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason
