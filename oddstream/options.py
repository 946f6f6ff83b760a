"""Every setting of every process role, declared once: :data:`OPTIONS`.

A row names the setting; its flag (``--name-with-dashes``) and variable
(``ODDSTREAM_NAME``) follow from the name. It says which roles take it, its default, what
a valid value is, and the line that documents it. From this one table come the
``oddstream`` flags of each role, the loading of each role's frozen settings type (flags
win over the environment; nothing else reads the environment), the start-up error that
names a wrong setting, and ``docs/configuration.md``::

    python -m oddstream.options            # write docs/configuration.md
    python -m oddstream.options --check    # exit 1 if it is not what the table generates

The gateway's own settings type is :class:`server.settings.Settings` (``server`` cannot
import this package): a row without a ``default`` is one of its fields and takes the
field's default, so a gateway default is written once, on the type. Adding a setting is
one row here (and, for a gateway setting, its field on ``Settings``); a unit test fails
naming any ``Settings`` field without a row.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import urlparse

from channels.liveness import OWNER_BEAT_MS, OWNER_EVICT_MS
from feeds.eviction import FINISHED_TTL_S, RETENTION_S
from feeds.staleness import STALE_AFTER_S
from server.settings import Settings, SettingsError

Role = Literal["dev", "gateway", "books", "archive", "feed"]
ROLES: tuple[Role, ...] = ("dev", "gateway", "books", "archive", "feed")
_SERVING: frozenset[Role] = frozenset({"dev", "gateway"})
_DISTRIBUTED_IN: frozenset[Role] = frozenset({"books", "archive", "feed"})
_SYNTH: frozenset[Role] = frozenset({"dev", "feed"})
_ALL: frozenset[Role] = frozenset(ROLES)

DOC = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"


@dataclass(frozen=True, slots=True)
class Check:
    """What a valid value is: ``ok(value)`` and the words that say so in an error."""

    ok: Callable[[Any], bool]
    expected: str


def at_least(low: float, note: str = "") -> Check:
    return Check(lambda v: v >= low, f">= {low:g}{note}")


def above(low: float) -> Check:
    return Check(lambda v: v > low, f"> {low:g}")


def between(low: float, high: float, note: str = "") -> Check:
    return Check(lambda v: low <= v <= high, f"{low:g}-{high:g}{note}")


def one_of(*choices: str) -> Check:
    return Check(lambda v: v in choices, "one of " + ", ".join(choices))


def _kafka_ok(value: str) -> bool:
    servers = [s.strip().rpartition(":") for s in value.split(",")]
    return all(host and port.isdigit() for host, _, port in servers)


def _redis_ok(value: str) -> bool:
    url = urlparse(value)
    return url.scheme in {"redis", "rediss", "unix", "redis+cluster"} and bool(
        url.hostname or url.path
    )


def _origins_ok(value: str) -> bool:
    def ok(origin: str) -> bool:
        if origin in {"*", "null", "file://"}:
            return True
        url = urlparse(origin)
        return url.scheme in {"http", "https"} and bool(url.hostname) and url.path == ""

    return all(ok(o.strip()) for o in value.split(",") if o.strip())


def _anonymous_ok(value: str) -> bool:
    from server.auth import Grant

    try:
        Grant.of([p.strip() for p in value.split(",") if p.strip()])
    except ValueError:
        return False
    return True


def _jwt_key_ok(value: str) -> bool:
    from server.auth import load_key

    try:
        load_key(value) if value else None
    except SettingsError:
        return False
    return True


def _mysql_ok(value: str) -> bool:
    from archive.db import mysql_ok

    return value == "" or mysql_ok(value)


def _persisted_ok(value: str) -> bool:
    from server.graphql import load_persisted

    try:
        load_persisted(value)
    except SettingsError:
        return False
    return True


def _feed_ok(spec: str) -> bool:
    from feeds.sources import SourceError, check_spec

    try:
        check_spec(spec)
    except SourceError:
        return False
    return True


def _prefix_ok(value: str) -> bool:
    # Braces would make a Redis Cluster hash tag of the prefix.
    return len(value) <= 64 and value.isprintable() and not any(c in value for c in " {}")


#: Required settings have no default and must name something.
KAFKA = Check(_kafka_ok, "host:port[,host:port] (required)")
REDIS = Check(_redis_ok, "a redis://host:port/db or redis+cluster://host:port URL (required)")
MYSQL = Check(_mysql_ok, "a mysql://user:password@host:port/database URL (archive: required)")


@dataclass(frozen=True, slots=True)
class Option:
    """One setting. ``default`` None: a field of :class:`server.settings.Settings`,
    whose default it takes."""

    name: str
    doc: str
    roles: frozenset[Role]
    check: Check | None = None
    default: Any = None
    role_defaults: Mapping[Role, Any] = dataclasses.field(default_factory=dict)
    """Defaults of some roles that differ from ``default``."""

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def variable(self) -> str:
        return f"ODDSTREAM_{self.name.upper()}"

    @property
    def value(self) -> Any:
        """The default."""
        if self.default is not None:
            return self.default
        return _GATEWAY_DEFAULTS[self.name]

    def default_of(self, role: Role) -> Any:
        return self.role_defaults.get(role, self.value)


@dataclass(frozen=True, slots=True)
class Rule:
    """A check across settings, blamed on setting ``name``: ``ok(values)`` over every
    setting of the role being loaded."""

    name: str
    ok: Callable[[Mapping[str, Any]], bool]
    expected: str


_GATEWAY_DEFAULTS: dict[str, Any] = {f.name: f.default for f in dataclasses.fields(Settings)}

#: The table. Order is the order of ``--help`` and of ``docs/configuration.md``.
OPTIONS: tuple[Option, ...] = (
    Option("host", "listen address of the gateway", _SERVING),
    Option(
        "port",
        "listen port (`0` picks a free one; the URL is printed)",
        _SERVING,
        between(0, 65535),
    ),
    Option(
        "max_frame_bytes",
        "largest client frame; a larger one closes the WebSocket with 1009",
        _SERVING,
        at_least(256),
    ),
    Option(
        "max_subscriptions",
        "markets + events + lobbies one connection may hold; past it `too_many_subscriptions`",
        _SERVING,
        at_least(1),
    ),
    Option(
        "queue_frames",
        "per-client outbox bound; past it the client is closed with 4001 (reconnect and resume)",
        _SERVING,
        at_least(16),
    ),
    Option(
        "conflate_after_frames",
        "queued messages from which a client's updates are conflated (latest book per "
        "market, state changes kept; `docs/guarantees.md`); `0`: a quarter of `queue_frames`",
        _SERVING,
        at_least(0, " and < queue_frames"),
    ),
    Option(
        "send_timeout_s",
        "a client whose write stays blocked this long is dropped (WebSocket 4002; the SSE "
        "stream ends)",
        _SERVING,
        above(0),
    ),
    Option(
        "send_buffer_bytes",
        "kernel send buffer per client socket (Linux doubles it): bounds what a client that "
        "stopped reading can hold before its outbox sees back-pressure",
        _SERVING,
        at_least(4096),
    ),
    Option(
        "heartbeat_s",
        "a client that was sent nothing for this long gets a `heartbeat` (WebSocket: checked "
        "every interval, so silence lasts at most twice this)",
        _SERVING,
        above(0),
    ),
    Option(
        "coalesce_ms",
        "WebSocket writes: frames queued for a client are written together once per "
        "event-loop turn (0) or after this many ms; larger windows mean fewer system calls "
        "and later frames",
        _SERVING,
        between(0, 50, " (0: write once per event-loop turn)"),
    ),
    Option(
        "close_timeout_s",
        "how long a close frame to a stuck client may take before the connection is dropped",
        _SERVING,
        above(0),
    ),
    Option(
        "drain_s",
        "on SIGTERM, the deadline to `reconnect` every client and close (batches spread over "
        "half of it)",
        _SERVING,
        above(0),
    ),
    # The edge (server/admission.py, server/listener.py; docs/protocol.md#limits).
    Option(
        "header_timeout_s",
        "a request head must be complete this long after the connection opened or after "
        "its first byte (slowloris); then 408 or a close",
        _SERVING,
        above(0),
    ),
    Option(
        "idle_timeout_s",
        "a keep-alive connection with no request, a request body, and a WebSocket before "
        "its first command may idle this long (WebSocket: closed with 1008)",
        _SERVING,
        above(0),
    ),
    Option("max_head_bytes", "request line and headers; past it 431", _SERVING, at_least(1024)),
    Option("max_body_bytes", "a request body; past it 413", _SERVING, at_least(0)),
    Option(
        "max_connections",
        "connections one gateway process holds; past it 503 with `Retry-After` (`0`: the "
        "open-files limit less a reserve)",
        _SERVING,
        at_least(0),
    ),
    Option(
        "max_connections_per_ip",
        "connections from one address; past it 503 with `Retry-After` (`0`: no limit; "
        "behind a load balancer every client shares its address: raise it or set `0`)",
        _SERVING,
        at_least(0, " (0: no limit)"),
    ),
    Option(
        "allowed_origins",
        "browser origins allowed on `/ws` and `/sse` and by CORS, comma-separated; empty: "
        "the gateway's own origin only; `*`: any http(s) origin; `null` and `file://` only "
        "when listed",
        _SERVING,
        Check(_origins_ok, "comma-separated origins (scheme://host[:port], null, file://) or *"),
    ),
    # The operator listener of every role and what it observes (docs/observability.md).
    Option("ops_host", "listen address of the operator listener", _ALL),
    Option(
        "ops_port",
        "operator listener (`/metrics`, `/healthz`, `/readyz`), never the public port; `0`: none",
        _ALL,
        between(0, 65535, " (0: off)"),
        role_defaults={"dev": 0, "books": 9101, "feed": 9102, "archive": 9103},
    ),
    Option(
        "metrics",
        "`off`: no per-message observations (stage, step and fan-out histograms); "
        "`/metrics` keeps the counters and gauges",
        _ALL,
        one_of("on", "off"),
    ),
    Option(
        "traces",
        "`otlp`: export OpenTelemetry traces with OTLP, configured by the standard "
        "`OTEL_EXPORTER_OTLP_*` variables (needs `oddstream[otlp]`); `off`: none",
        frozenset({"gateway", "books", "feed"}),
        one_of("off", "otlp"),
        "off",
    ),
    Option(
        "trace_sample",
        "share of feed messages traced end to end (the feed decides; books and gateways follow)",
        frozenset({"feed"}),
        between(0, 1),
        0.001,
    ),
    # Session-level security (server/session.py, server/auth.py; docs/auth.md).
    Option(
        "command_rate",
        "commands per second one connection may send (a token bucket); past it `rate_limited`",
        _SERVING,
        above(0),
    ),
    Option("command_burst", "commands a connection may send at once", _SERVING, at_least(1)),
    Option(
        "rate_limit_close_after",
        "`rate_limited` refusals in a row before the connection is closed with 4103",
        _SERVING,
        at_least(1),
    ),
    Option(
        "max_resume_markets",
        "markets one `resume` or one SSE resume token may name; past it `invalid`",
        _SERVING,
        between(1, 5000),
    ),
    Option(
        "auth",
        "`none`: anyone may follow everything; `jwt`: channels need a token (`docs/auth.md`)",
        _SERVING,
        one_of("none", "jwt"),
        role_defaults={"gateway": "jwt"},
    ),
    Option(
        "anonymous",
        "with `--auth jwt`, channel patterns a client without a token may follow "
        "(`lobby:*,event:fb-*`)",
        _SERVING,
        Check(_anonymous_ok, "comma-separated channel patterns (market:, event:, lobby:)"),
    ),
    Option(
        "jwt_key",
        "HS256 shared secret (32+ characters), or the path of a PEM public key file (RS256/ES256)",
        _SERVING,
        Check(_jwt_key_ok, "an HS256 secret of 32+ characters or a readable PEM public key"),
    ),
    Option(
        "jwks_url",
        "the token issuer's JWKS (RS256/ES256, rotation by `kid`)",
        _SERVING,
        Check(lambda v: not v or urlparse(v).scheme in {"http", "https"}, "an http(s) URL"),
    ),
    Option("jwt_audience", "required `aud` of tokens (empty: not checked)", _SERVING),
    Option("jwt_issuer", "required `iss` of tokens (empty: not checked)", _SERVING),
    Option(
        "jwks_refetch_s",
        "least seconds between two JWKS fetches (an unknown `kid` refetches)",
        _SERVING,
        at_least(0),
    ),
    Option(
        "ticket_ttl_s",
        "seconds an SSE ticket (`POST /v1/tickets`) stays usable, once",
        _SERVING,
        Check(lambda v: 0 < v <= 300, "0-300"),
    ),
    Option(
        "history_size",
        "deltas kept per market for resume and gap healing",
        frozenset({"dev", "gateway", "books"}),
        at_least(1),
    ),
    Option(
        "stale_after_s",
        "an event's open markets are suspended with reason `feed_stale` after its feed is "
        "silent this long, and reopen when it speaks again (`0`: never)",
        frozenset({"dev", "books"}),
        at_least(0, " (0: never)"),
        STALE_AFTER_S,
    ),
    Option(
        "deltas_delivery",
        "the `deltas` topic: `at-most-once` (a step stored but not yet produced is lost "
        "there by a crash) or `exactly-once` (Kafka transactions per feed partition and an "
        "outbox the next owner re-produces; consumers read `read_committed`)",
        frozenset({"books"}),
        one_of("at-most-once", "exactly-once"),
        "at-most-once",
    ),
    Option(
        "retention_s",
        "a settled or voided market, and an ended event with its markets, is forgotten by its "
        "processor this long after (restored from Redis if the feed speaks of it again; "
        "`0`: never)",
        frozenset({"books"}),
        at_least(0, " (0: never)"),
        RETENTION_S,
    ),
    Option(
        "finished_ttl_s",
        "the Redis keys of an ended event (its state, its markets' snapshots and histories) "
        "expire this long after its last write (`0`: never)",
        frozenset({"books"}),
        at_least(0, " (0: never)"),
        FINISHED_TTL_S,
    ),
    Option(
        "owner_beat_ms",
        "a book processor publishes its owner beat (its member id and partitions) on Redis "
        "this often",
        frozenset({"books"}),
        between(10, 10_000),
        OWNER_BEAT_MS,
    ),
    Option(
        "owner_evict_ms",
        "a member of the processors' group whose owner beat is silent this long is removed "
        "from the group at once (its partitions move without waiting for its Kafka session "
        "to expire; `0`: never)",
        frozenset({"books"}),
        at_least(0, " (0: never)"),
        OWNER_EVICT_MS,
    ),
    Option(
        "kafka_heartbeat_ms",
        "Kafka consumer-group heartbeat interval of a book processor: how soon it notices a "
        "rebalance",
        frozenset({"books"}),
        between(50, 3_000),
        250,
    ),
    Option(
        "owner_silent_ms",
        "a gateway suspends (`feed_stale`) the open markets of a partition no owner beat has "
        "named for this long, until a beat names it again (`0`: never)",
        _SERVING,
        at_least(0, " (0: never)"),
    ),
    Option("seed", "synthetic feed seed", _SYNTH, None, 1),
    Option("events", "concurrent synthetic events", _SYNTH, at_least(1), 12),
    Option("rate", "synthetic feed messages per second", _SYNTH, above(0), 200.0),
    Option(
        "feed",
        "`synth`, or `FORMAT:PATH` to replay a recording (`jsonl`, and the adapters' formats)",
        frozenset({"dev"}),
        Check(_feed_ok, "synth or FORMAT:PATH (jsonl, betfair, uof)"),
        "synth",
    ),
    Option(
        "speed",
        "replay speed, x the recording's own pace; `0` = as fast as possible",
        _SYNTH,
        at_least(0, " (0: as fast as possible)"),
        1.0,
    ),
    Option(
        "web",
        "`auto`: build and serve the web shell at `/`; `off`: the plain demo page",
        frozenset({"dev"}),
        one_of("auto", "off"),
        "auto",
    ),
    Option("kafka", "Kafka bootstrap servers `host:port[,host:port]`", _DISTRIBUTED_IN, KAFKA, ""),
    Option(
        "redis",
        "Redis URL `redis://host:port/db`, or `redis+cluster://host:port` (any node) for a "
        "Redis Cluster: sharded pub/sub over its masters, storage in one hash slot",
        frozenset({"gateway", "books"}),
        REDIS,
        "",
    ),
    Option(
        "redis_prefix",
        "prefix of every Redis key and pub/sub route of this deployment: two deployments "
        "sharing a Redis need two prefixes; every role of one deployment uses the same",
        frozenset({"gateway", "books"}),
        Check(_prefix_ok, "up to 64 printable characters, no spaces or braces"),
        "os:",
    ),
    Option(
        "mysql",
        "the archive's MySQL (or MariaDB) `mysql://user:password@host:port/database`; on a "
        "gateway it enables the history API (`docs/data.md`), empty: off",
        frozenset({"gateway", "archive"}),
        MYSQL,
    ),
    Option(
        "mysql_pool",
        "connections the gateway's history API may hold to MySQL at most",
        frozenset({"gateway"}),
        between(1, 64),
    ),
    Option(
        "graphql_max_chars",
        "longest GraphQL document (characters), refused before it is parsed (`docs/graphql.md`)",
        _SERVING,
        between(64, 1_000_000),
    ),
    Option(
        "graphql_max_depth",
        "deepest field nesting of a GraphQL operation; past it `too_deep`",
        _SERVING,
        between(2, 64),
    ),
    Option(
        "graphql_max_fields",
        "fields and fragment spreads of a GraphQL document, fragments expanded and aliases "
        "counted; past it `too_complex`",
        _SERVING,
        between(10, 100_000),
    ),
    Option(
        "graphql_persisted",
        "file of persisted GraphQL documents, a JSON object `sha256 hex -> document`; empty: none",
        _SERVING,
        Check(_persisted_ok, "a readable JSON object of SHA-256 -> document"),
    ),
    Option(
        "graphql_accept",
        "`any`: GraphQL documents and persisted hashes; `persisted`: persisted hashes only",
        _SERVING,
        one_of("any", "persisted"),
    ),
    Option(
        "graphql_init_timeout_s",
        "seconds a `graphql-transport-ws` connection has to send `connection_init` (else 4408)",
        _SERVING,
        above(0),
    ),
    Option(
        "partitions",
        "partitions of the topics when `oddstream feed`, `books` or `archive` creates them "
        "(`books` and `archive` keep the count of topics that exist)",
        _DISTRIBUTED_IN,
        at_least(1),
        6,
    ),
    Option(
        "workers",
        "gateway processes serving the port together (`SO_REUSEPORT`), each with its own Redis "
        "relay, drained together on SIGTERM; worker `i`'s operator listener is `--ops-port` + "
        "`i`; `0`: one per core this process may use",
        frozenset({"gateway"}),
        between(0, 256, " (0: one per core)"),
        0,
    ),
    Option(
        "group",
        "consumer group of the book processors (of the archive writers, for `archive`)",
        frozenset({"books", "archive"}),
        None,
        "oddstream-books",
        {"archive": "oddstream-archive"},
    ),
    Option(
        "archive_batch",
        "records the archive reads per fetch and writes per MySQL transaction",
        frozenset({"archive"}),
        at_least(1),
        5_000,
    ),
    Option(
        "prune_before",
        "instead of consuming: delete the archive's `market_messages` and `prices` rows older "
        "than this feed time (epoch ms) that no later instant needs, then exit (`docs/data.md`); "
        "0: consume",
        frozenset({"archive"}),
        at_least(0),
        0,
    ),
    Option(
        "mysql_wait_s",
        "how long the archive waits for an unreachable MySQL (retrying its batch) before it "
        "stops with status 1",
        frozenset({"archive"}),
        above(0),
        300.0,
    ),
    Option(
        "topic_prefix",
        "prefix of every topic name (`markets`, `odds`, `results`, `deltas`, `deadletter`)",
        _DISTRIBUTED_IN,
        None,
        "",
    ),
    Option("log_level", "log level", _ALL, one_of("debug", "info", "warning", "error"), "info"),
    Option(
        "log_format",
        "`json`: one JSON object per line on stderr, for a log collector; `text`: for a "
        "terminal (`docs/observability.md#logs`)",
        _ALL,
        one_of("json", "text"),
        "json",
        {"dev": "text"},
    ),
)


#: Checks across settings, applied to each role that takes the setting blamed.
RULES: tuple[Rule, ...] = (
    Rule(
        "jwt_key",
        lambda v: v["auth"] != "jwt" or bool(v["jwt_key"] or v["jwks_url"]),
        "an HS256 secret or a PEM public key file (or --jwks-url) with --auth jwt",
    ),
    Rule(
        "conflate_after_frames",
        lambda v: v["conflate_after_frames"] < v["queue_frames"],
        "< queue_frames",
    ),
)


# -- the role settings types -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GatewaySettings:
    """``oddstream gateway``: Redis in; WebSocket, SSE and REST out."""

    server: Settings
    redis: str
    workers: int
    traces: str
    redis_prefix: str
    log_level: str
    log_format: str


@dataclass(frozen=True, slots=True)
class DevSettings:
    """``oddstream dev``: everything in one process."""

    server: Settings
    stale_after_s: float
    seed: int
    events: int
    rate: float
    feed: str
    speed: float
    web: str
    log_level: str
    log_format: str


@dataclass(frozen=True, slots=True)
class BooksSettings:
    """``oddstream books``: a book processor, Kafka in; Redis and Kafka out."""

    history_size: int
    stale_after_s: float
    deltas_delivery: str
    retention_s: float
    finished_ttl_s: float
    owner_beat_ms: int
    owner_evict_ms: int
    kafka_heartbeat_ms: int
    kafka: str
    redis: str
    redis_prefix: str
    partitions: int
    group: str
    topic_prefix: str
    ops_host: str
    ops_port: int
    metrics: str
    traces: str
    log_level: str
    log_format: str


@dataclass(frozen=True, slots=True)
class ArchiveSettings:
    """``oddstream archive``: the ``deltas`` topic in; MySQL history out."""

    kafka: str
    mysql: str
    partitions: int
    group: str
    archive_batch: int
    prune_before: int
    mysql_wait_s: float
    topic_prefix: str
    ops_host: str
    ops_port: int
    metrics: str
    log_level: str
    log_format: str


@dataclass(frozen=True, slots=True)
class FeedSettings:
    """``oddstream feed ...``: produce a feed to Kafka, or record one from it."""

    seed: int
    events: int
    rate: float
    speed: float
    kafka: str
    partitions: int
    topic_prefix: str
    ops_host: str
    ops_port: int
    metrics: str
    traces: str
    trace_sample: float
    log_level: str
    log_format: str


_BY_NAME = {o.name: o for o in OPTIONS}

RoleSettings = GatewaySettings | DevSettings | BooksSettings | ArchiveSettings | FeedSettings
TYPES: dict[Role, type[RoleSettings]] = {
    "dev": DevSettings,
    "gateway": GatewaySettings,
    "books": BooksSettings,
    "archive": ArchiveSettings,
    "feed": FeedSettings,
}
R = TypeVar("R", GatewaySettings, DevSettings, BooksSettings, ArchiveSettings, FeedSettings)


def of(role: Role) -> tuple[Option, ...]:
    return tuple(o for o in OPTIONS if role in o.roles)


def add_flags(parser: argparse.ArgumentParser, role: Role) -> None:
    """``role``'s flags; values stay text until :func:`load` parses and checks them."""
    for o in of(role):
        parser.add_argument(o.flag, dest=o.name, metavar=o.name.upper(), help=o.doc)


def load(
    kind: type[R], flags: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None
) -> R:
    """The settings of a role from its flags (non-None values) over ``ODDSTREAM_*``
    variables over the defaults.

    Raises :class:`SettingsError` naming the flag and the variable when a value does not
    parse or is not valid."""
    role = next(r for r, t in TYPES.items() if t is kind)
    return kind(**_values(role, flags or {}, os.environ if env is None else env))


def load_role(role: Role, flags: Mapping[str, Any]) -> RoleSettings:
    """:func:`load` for a role named on the command line."""
    return TYPES[role](**_values(role, flags, os.environ))


def _values(role: Role, flags: Mapping[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    values = {o.name: _value(o, role, flags, env) for o in of(role)}
    for rule in RULES:
        if rule.name in values and not rule.ok(values):
            raise _invalid(_BY_NAME[rule.name], values[rule.name], rule.expected)
    gateway = {k: values.pop(k) for k in _GATEWAY_DEFAULTS.keys() & values.keys()}
    if "server" in {f.name for f in dataclasses.fields(TYPES[role])}:
        values["server"] = Settings(**gateway)
    else:
        values.update(gateway)
    return values


def _value(option: Option, role: Role, flags: Mapping[str, Any], env: Mapping[str, str]) -> Any:
    default = option.default_of(role)
    raw = flags.get(option.name)
    if raw is None:
        raw = env.get(option.variable)
    if raw is None:
        value = default
    else:
        kind: type[Any] = type(default)
        try:
            value = raw if isinstance(raw, kind) else kind(raw)
        except (TypeError, ValueError):
            raise _invalid(option, raw, f"a number ({kind.__name__})") from None
    if option.check is not None and not option.check.ok(value):
        raise _invalid(option, value, option.check.expected)
    return value


def _invalid(option: Option, value: Any, expected: str) -> SettingsError:
    return SettingsError(
        f"invalid setting {option.name} ({option.flag} / {option.variable}) = {value!r}: "
        f"expected {expected}"
    )


# -- docs/configuration.md ------------------------------------------------------------

_HEAD = """\
# Configuration

<!-- Generated by `python -m oddstream.options` from the table in oddstream/options.py;
edit the table, not this file (`scripts/test.sh` checks they agree). -->

Every setting is a flag of the `oddstream` command and an `ODDSTREAM_<NAME>` environment
variable (flags win). Each process role reads the settings it takes once at start-up
into one frozen settings type (the gateway's is `server.settings.Settings`); a value that
does not parse or is out of range stops start-up with exit status 2 and a message naming
the flag and the variable, e.g.

```
oddstream: invalid setting port (--port / ODDSTREAM_PORT) = 70000: expected 0-65535
```

| setting | flag | variable | default | roles | valid | meaning |
|---|---|---|---|---|---|---|
"""


def render() -> str:
    rows = []
    for o in OPTIONS:
        roles = ", ".join(r for r in ROLES if r in o.roles)
        default = _show(o.value) + "".join(
            f" ({r}: {_show(v)})" for r, v in o.role_defaults.items()
        )
        valid = o.check.expected if o.check else ""
        rows.append(
            f"| {o.name} | `{o.flag}` | `{o.variable}` | {default} | {roles} | {valid} | {o.doc} |"
        )
    return _HEAD + "\n".join(rows) + "\n"


def _show(value: Any) -> str:
    shown = f"{value:g}" if isinstance(value, float) else str(value)
    return f"`{shown}`" if shown else ""


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m oddstream.options", description=f"Write or check {DOC.name}."
    )
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if stale")
    args = parser.parse_args(argv)
    text = render()
    current = DOC.read_text(encoding="utf-8") if DOC.is_file() else ""
    if args.check:
        if current != text:
            print(f"{DOC} is stale; regenerate it: python -m oddstream.options", file=sys.stderr)
            return 1
        print(f"{DOC}: current ({len(OPTIONS)} settings)")
        return 0
    if current != text:
        DOC.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
