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
        _check(self.command_rate, "command_rate", self.command_rate > 0, "> 0")
        _check(self.command_burst, "command_burst", self.command_burst >= 1, ">= 1")
        _check(
            self.rate_limit_close_after,
            "rate_limit_close_after",
            self.rate_limit_close_after >= 1,
            ">= 1",
        )
        _check(
            self.max_resume_markets,
            "max_resume_markets",
            1 <= self.max_resume_markets <= 5_000,
            "1-5000",
        )
        _check(self.auth, "auth", self.auth in {"none", "jwt"}, "none or jwt")
        _check(
            self.jwt_key,
            "jwt_key",
            self.auth != "jwt" or bool(self.jwt_key or self.jwks_url),
            "an HS256 secret or a PEM public key file (or set --jwks-url) with --auth jwt",
        )
        if self.auth == "jwt" and self.jwt_key:
            from server.auth import load_key

            load_key(self.jwt_key)  # Raises SettingsError naming --jwt-key.
        _check(
            self.jwks_url,
            "jwks_url",
            not self.jwks_url or urlparse(self.jwks_url).scheme in {"http", "https"},
            "an http(s) URL",
        )
        _check(self.jwks_refetch_s, "jwks_refetch_s", self.jwks_refetch_s >= 0, ">= 0")
        _check(self.ticket_ttl_s, "ticket_ttl_s", 0 < self.ticket_ttl_s <= 300, "0-300 s")
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
        cls,
        flags: Mapping[str, Any] | None = None,
        env: Mapping[str, str] | None = None,
        defaults: Mapping[str, Any] | None = None,
    ) -> Settings:
        """Settings from ``ODDSTREAM_<NAME>`` variables overridden by non-None flags;
        ``defaults`` (a command's own, e.g. ``auth=jwt`` for a gateway) replace the
        class defaults.

        Raises :class:`SettingsError` naming the setting when a value does not parse or is
        out of range."""
        env = os.environ if env is None else env
        flags = flags or {}
        defaults = defaults or {}
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw: Any = flags.get(f.name)
            source = f"--{f.name.replace('_', '-')}"
            if raw is None:
                raw = env.get(env_name(f.name))
                source = env_name(f.name)
            if raw is None:
                raw = defaults.get(f.name)
                source = f"default {f.name}"
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


def env_name(name: str) -> str:
    return f"ODDSTREAM_{name.upper()}"


def _check(value: object, name: str, ok: bool, expected: str) -> None:
    if not ok:
        flag = "--" + name.replace("_", "-")
        raise SettingsError(
            f"invalid setting {name} ({flag} / {env_name(name)}) = {value!r}: expected {expected}"
        )
