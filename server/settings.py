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
    # Storage.
    history_size: int = 256
    # The archive's read side (server/history.py): off without a MySQL URL.
    mysql: str = ""
    mysql_pool: int = 4
