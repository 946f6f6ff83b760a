"""One frozen settings object, built once at start-up from flags and ``ODDSTREAM_*``
environment variables (flags win), validated, and passed explicitly. Nothing else in the
code reads the environment.

Every limit has a name, a default and a line in ``docs/configuration.md``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any
from urllib.parse import urlparse


class SettingsError(ValueError):
    """A setting is invalid; the message names it (flag and environment variable)."""


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
    # Book processors (and the embedded pipeline).
    stale_after_s: float = 10.0
    # Embedded (dev) feed.
    seed: int = 1
    events: int = 12
    rate: float = 200.0
    feed: str = "synth"
    web: str = "auto"
    speed: float = 1.0
    # Distributed mode.
    kafka: str = ""
    redis: str = ""
    partitions: int = 6
    group: str = "oddstream-books"
    topic_prefix: str = ""
    log_level: str = "info"

    def __post_init__(self) -> None:
        _check(self.port, "port", 0 <= self.port <= 65535, "must be 0-65535")
        _check(self.max_frame_bytes, "max_frame_bytes", self.max_frame_bytes >= 256, ">= 256")
        _check(self.max_subscriptions, "max_subscriptions", self.max_subscriptions >= 1, ">= 1")
        _check(
            self.send_buffer_bytes, "send_buffer_bytes", self.send_buffer_bytes >= 4096, ">= 4096"
        )
        _check(self.queue_frames, "queue_frames", self.queue_frames >= 16, ">= 16")
        _check(
            self.conflate_after_frames,
            "conflate_after_frames",
            0 <= self.conflate_after_frames < self.queue_frames,
            "0 (a quarter of queue_frames) up to queue_frames - 1",
        )
        _check(self.heartbeat_s, "heartbeat_s", self.heartbeat_s > 0, "> 0")
        _check(self.send_timeout_s, "send_timeout_s", self.send_timeout_s > 0, "> 0")
        _check(self.stale_after_s, "stale_after_s", self.stale_after_s >= 0, ">= 0 (0: never)")
        _check(self.close_timeout_s, "close_timeout_s", self.close_timeout_s > 0, "> 0")
        _check(
            self.coalesce_ms,
            "coalesce_ms",
            0 <= self.coalesce_ms <= 50,
            "0-50 (0: write once per event-loop turn)",
        )
        _check(self.drain_s, "drain_s", self.drain_s > 0, "> 0")
        _check(self.header_timeout_s, "header_timeout_s", self.header_timeout_s > 0, "> 0")
        _check(self.idle_timeout_s, "idle_timeout_s", self.idle_timeout_s > 0, "> 0")
        _check(self.max_head_bytes, "max_head_bytes", self.max_head_bytes >= 1024, ">= 1024")
        _check(self.max_body_bytes, "max_body_bytes", self.max_body_bytes >= 0, ">= 0")
        _check(self.max_connections, "max_connections", self.max_connections >= 0, ">= 0")
        _check(
            self.max_connections_per_ip,
            "max_connections_per_ip",
            self.max_connections_per_ip >= 0,
            ">= 0 (0: no limit)",
        )
        _check(
            self.allowed_origins,
            "allowed_origins",
            all(_origin_ok(o.strip()) for o in self.allowed_origins.split(",") if o.strip()),
            "comma-separated origins (scheme://host[:port], null, file://) or *",
        )
        _check(self.ops_port, "ops_port", 0 <= self.ops_port <= 65535, "0-65535 (0: off)")
        _check(self.history_size, "history_size", self.history_size >= 1, ">= 1")
        _check(self.events, "events", self.events >= 1, ">= 1")
        _check(self.rate, "rate", self.rate > 0, "> 0")
        _check(self.speed, "speed", self.speed >= 0, ">= 0 (0: as fast as possible)")
        _check(self.feed, "feed", _feed_ok(self.feed), "synth or FORMAT:PATH (jsonl, ...)")
        _check(self.web, "web", self.web in {"auto", "off"}, "auto or off")
        _check(self.partitions, "partitions", self.partitions >= 1, ">= 1")
        _check(
            self.log_level,
            "log_level",
            self.log_level in {"debug", "info", "warning", "error"},
            "one of debug, info, warning, error",
        )
        if self.kafka:
            for server in self.kafka.split(","):
                host, _, port = server.strip().rpartition(":")
                _check(self.kafka, "kafka", bool(host) and port.isdigit(), "host:port[,host:port]")
        if self.redis:
            url = urlparse(self.redis)
            _check(
                self.redis,
                "redis",
                url.scheme in {"redis", "rediss", "unix"} and bool(url.hostname or url.path),
                "a redis://host:port/db URL",
            )

    @classmethod
    def load(
        cls, flags: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None
    ) -> Settings:
        """Settings from ``ODDSTREAM_<NAME>`` variables overridden by non-None flags.

        Raises :class:`SettingsError` naming the setting when a value does not parse or is
        out of range."""
        env = os.environ if env is None else env
        flags = flags or {}
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw: Any = flags.get(f.name)
            source = f"--{f.name.replace('_', '-')}"
            if raw is None:
                raw = env.get(env_name(f.name))
                source = env_name(f.name)
            if raw is None:
                continue
            kind: type[Any] = type(f.default)
            try:
                values[f.name] = raw if isinstance(raw, kind) else kind(raw)
            except (TypeError, ValueError):
                raise SettingsError(f"invalid {source}={raw!r}: expected {kind.__name__}") from None
        return cls(**values)


def _feed_ok(spec: str) -> bool:
    from feeds.sources import SourceError, check_spec

    try:
        check_spec(spec)
    except SourceError:
        return False
    return True


def _origin_ok(origin: str) -> bool:
    if origin in {"*", "null", "file://"}:
        return True
    url = urlparse(origin)
    return url.scheme in {"http", "https"} and bool(url.hostname) and url.path == ""


def env_name(name: str) -> str:
    return f"ODDSTREAM_{name.upper()}"


def _check(value: object, name: str, ok: bool, expected: str) -> None:
    if not ok:
        flag = "--" + name.replace("_", "-")
        raise SettingsError(
            f"invalid setting {name} ({flag} / {env_name(name)}) = {value!r}: expected {expected}"
        )
