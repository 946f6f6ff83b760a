"""What the Redis store (:mod:`channels.redis_store`) and broker
(:mod:`channels.redis_broker`) share: clients bounded by timeouts and verified at
connection, URLs fit for logs, errors worth reading, and which server a client talks to."""

from __future__ import annotations

import asyncio
from urllib.parse import urlparse, urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import RedisClusterException, RedisError

CLUSTER_SCHEME = "redis+cluster"
"""The URL scheme that selects a Redis Cluster: ``redis+cluster://host:port`` (any node)."""


def is_cluster_url(url: str) -> bool:
    return url.startswith(f"{CLUSTER_SCHEME}://")


def cluster_client(url: str, *, socket_timeout: float, connect_timeout: float) -> RedisCluster:
    """A cluster client (not yet initialised) for a ``redis+cluster://`` URL."""
    return RedisCluster.from_url(
        "redis" + url.removeprefix(CLUSTER_SCHEME),
        socket_timeout=socket_timeout,
        socket_connect_timeout=connect_timeout,
    )


class ClusterMap:
    """Which master owns a key's slot, from a cluster's slot map, read again on every
    :meth:`master_of` from any node seen so far (so a dead first node does not matter)."""

    def __init__(self, url: str, *, deadline: float):
        self._client = cluster_client(url, socket_timeout=deadline, connect_timeout=deadline)
        self._deadline = deadline
        self._read = False

    async def master_of(self, key: str) -> str:
        """``redis://host:port`` of the master owning ``key``'s slot now, read within the
        deadline. Raises what redis-py raises, or TimeoutError."""
        async with asyncio.timeout(self._deadline):
            if self._read:
                await self._client.nodes_manager.initialize()
            else:
                await self._client.initialize()
                self._read = True
        node = self._client.get_node_from_key(key)
        if node is None:
            raise RedisClusterException(f"no master serves the slot of {key!r}")
        return f"redis://{node.name}"

    async def close(self) -> None:
        await self._client.aclose()


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***``, fit for logs and error messages."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        user = parts.username or ""
        host = parts.hostname or ""
        if parts.port is not None:
            host = f"{host}:{parts.port}"
        return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))
    except ValueError:
        return "<unparsable Redis URL>"


def redis_client(
    url: str, *, socket_timeout: float, connect_timeout: float, client_name: str
) -> aioredis.Redis:
    """A bytes-mode client whose every socket operation is bounded by a timeout.

    redis-py retries a command twice, quickly, after a connection error or timeout, so
    the first command after a Redis restart finds a fresh connection instead of failing;
    our writes and publishes tolerate a repeat (idempotent, or deduplicated by ``seq``).
    Raises :class:`ValueError` naming the URL when it cannot be parsed.
    """
    try:
        return aioredis.Redis.from_url(
            url,
            decode_responses=False,
            socket_timeout=socket_timeout,
            socket_connect_timeout=connect_timeout,
            retry=Retry(ExponentialBackoff(cap=0.2, base=0.02), retries=2),
            client_name=client_name,
        )
    except ValueError as exc:
        raise ValueError(f"invalid Redis URL {redact_url(url)!r}: {exc}") from exc


def describe(exc: BaseException) -> str:
    """``Type: message`` (redis-py's own repr of its errors hides the message)."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


async def ping(client: aioredis.Redis, deadline: float) -> None:
    """PING within ``deadline`` seconds; raises what redis-py raises, or TimeoutError."""
    async with asyncio.timeout(deadline):
        await client.ping()


def _server_of(where: str) -> str:
    """``host:port`` of a (redacted) Redis URL, without the database number."""
    url = urlparse(where)
    return f"{url.hostname}:{url.port or 6379}"


async def connect(
    url: str,
    client_name: str,
    error: type[Exception],
    *,
    socket_timeout: float,
    connect_timeout: float,
) -> aioredis.Redis:
    """A client (:func:`redis_client`) that answered a PING within ``connect_timeout``.
    Raises ``error`` naming the URL (password redacted) when Redis does not answer;
    :class:`ValueError` when the URL cannot be parsed."""
    client = redis_client(
        url, socket_timeout=socket_timeout, connect_timeout=connect_timeout, client_name=client_name
    )
    try:
        await ping(client, connect_timeout)
    except (RedisError, OSError, TimeoutError) as exc:
        await client.aclose()
        raise error(f"Redis at {redact_url(url)} is unreachable: {describe(exc)}") from exc
    return client


class RedisEndpoint:
    """Something holding a Redis client: ``where`` is its (redacted) URL, ``prefix``
    starts every key and channel name it uses (the deployment's)."""

    where: str
    prefix: str

    def same_server(self, other: object) -> bool:
        """True when ``other`` talks to the same Redis server (pub/sub ignores the
        database number, so a store and a broker on two databases of one server can
        still share a transaction)."""
        return isinstance(other, RedisEndpoint) and _server_of(other.where) == _server_of(
            self.where
        )
