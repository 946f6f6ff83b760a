"""The gateway's settings: one frozen object, built once at start-up and passed
explicitly.

The composition root builds it from flags and ``ODDSTREAM_*`` variables and checks every
value (``oddstream/options.py``, whose table also writes ``docs/configuration.md``); the
defaults are the ones here. Nothing in ``server/`` reads the environment.
"""

from __future__ import annotations

from dataclasses import dataclass


class SettingsError(ValueError):
    """A setting is invalid; the message names it (flag and environment variable). Raised
    by the checks that build settings, including gateway code a check calls."""


@dataclass(frozen=True, slots=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8000
    # Limits per connection.
    max_frame_bytes: int = 65_536
    max_subscriptions: int = 500
    queue_frames: int = 4_096
    send_buffer_bytes: int = 131_072
    conflate_after_frames: int = 0
    heartbeat_s: float = 15.0
    send_timeout_s: float = 30.0
    close_timeout_s: float = 2.0
    coalesce_ms: float = 0.0
    drain_s: float = 10.0
    # The edge: connection-level limits applied to every connection, whatever it becomes
    # (server/admission.py, server/listener.py; docs/protocol.md#limits, docs/security.md).
    # A request head must be complete this long after the connection opened or after its
    # first byte (slowloris); a keep-alive connection with no request, a request body, and
    # a WebSocket before its first command get ``idle_timeout_s``.
    header_timeout_s: float = 10.0
    idle_timeout_s: float = 60.0
    max_head_bytes: int = 16_384  # Request line and headers; past it: 431.
    max_body_bytes: int = 65_536  # A request body; past it: 413.
    max_connections: int = 0  # 0: the open-files limit less a reserve; past it: 503.
    max_connections_per_ip: int = 256  # 0: no limit; past it: 503.
    allowed_origins: str = ""  # Comma-separated; "" the gateway's own origin only; "*": any.
    ops_host: str = "127.0.0.1"  # /metrics, /healthz, /readyz for operators.
    ops_port: int = 9100  # 0: no operator listener.
    metrics: str = "on"  # "off": no per-message observations (docs/observability.md).
    # Storage.
    history_size: int = 256
    # A partition no owner beat named for this long has its open markets suspended
    # (``feed_stale``) for this gateway's clients until a beat names it again; 0: never
    # (server/liveness.py).
    owner_silent_ms: int = 1_000
    # Session-level security (docs/protocol.md#limits, docs/auth.md). Commands per second
    # a connection may send (token bucket refilled at ``command_rate``, holding at most
    # ``command_burst``); past it a command is refused with ``rate_limited``, and after
    # ``rate_limit_close_after`` refusals in a row the connection is closed with 4103.
    command_rate: float = 20.0
    command_burst: int = 40
    rate_limit_close_after: int = 20
    # Markets one ``resume`` (positions plus token) or one SSE resume token may name.
    max_resume_markets: int = 2_000
    # ``none``: everyone may follow everything; ``jwt``: channels need a token (docs/auth.md).
    # ``oddstream gateway`` defaults to ``jwt``, ``oddstream dev`` to ``none``.
    auth: str = "none"
    # Channel patterns a client without a token may follow (``lobby:*,event:fb-*``).
    anonymous: str = ""
    # HS256 shared secret, or the path of a PEM public key file (RS256/ES256).
    jwt_key: str = ""
    # JWKS URL of the token issuer's keys (RS256/ES256, rotation by ``kid``).
    jwks_url: str = ""
    jwt_audience: str = ""
    jwt_issuer: str = ""
    # Least seconds between two JWKS fetches (a token naming an unknown ``kid`` refetches).
    jwks_refetch_s: float = 30.0
    # Seconds an SSE ticket (``POST /v1/tickets``) stays usable, once.
    ticket_ttl_s: float = 30.0
    # The archive's read side (server/history.py): off without a MySQL URL.
    mysql: str = ""
    mysql_pool: int = 4
    # GraphQL at /graphql (server/graphql.py, docs/graphql.md): a document's length
    # (checked before parsing), depth and fields (checked before execution); a file of
    # persisted documents and whether only those run; the wait for ``connection_init``.
    graphql_max_chars: int = 8_192
    graphql_max_depth: int = 8
    graphql_max_fields: int = 250
    graphql_persisted: str = ""
    graphql_accept: str = "any"
    graphql_init_timeout_s: float = 10.0
