"""The gateway's settings: one frozen object, built once at start-up and passed
explicitly.

The composition root builds it from flags and ``ODDSTREAM_*`` variables and checks every
value (``oddstream/options.py``, whose table also writes ``docs/configuration.md``); the
defaults are the ones here. Nothing in ``server/`` reads the environment.
"""

from __future__ import annotations

from dataclasses import dataclass


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
    # Storage.
    history_size: int = 256
