"""The :class:`~channels.broker.Broker` over a Redis Cluster's sharded pub/sub.

A route lives on the shard that owns its key slot (``docs/deployment.md``, "Scaling
Redis"), so routes spread over the masters and each master carries only its routes'
messages (plain PUBLISH goes to every node of a cluster).

Publishing: ``SPUBLISH`` through redis-py's cluster client, which sends it to the
channel's master and follows MOVED redirections. Not part of the store's transaction
(a transaction is single-slot): a crash between storing and publishing loses only
publications, which gateways heal from storage by ``seq``.

Subscribing: one :class:`~channels.redis_broker.RedisSubscription` in sharded mode per
master the node's channels live on, each with its dedicated connection and reader. When
a reader loses its connection (the master died, or Redis unsubscribed a channel whose
slot moved), the subscription refreshes the cluster's slot map and moves every channel
whose slot now has another master to that master's reader (a replica promoted after a
failover), retrying with capped backoff until every channel is subscribed on a reader
that is up; then it calls ``on_resync`` (messages published meanwhile were lost, as on
any reconnect). A reader whose node comes back by itself resyncs on its own.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Sequence

from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import AbstractConnection, ConnectionPool
from redis.exceptions import RedisError

from channels.broker import BrokerError, MessageHandler, ResyncHandler, Subscription
from channels.redis_broker import SHARDED, RedisBroker, RedisSubscription, Timings
from channels.redis_conn import (
    CLUSTER_SCHEME,
    RedisEndpoint,
    cluster_client,
    describe,
    is_cluster_url,
    redact_url,
)

__all__ = ["RedisClusterBroker"]

log = logging.getLogger(__name__)


async def connect_broker(url: str, *, prefix: str) -> RedisBroker | RedisClusterBroker:
    """The broker a URL names: sharded pub/sub on a cluster for ``redis+cluster://``,
    else pub/sub on one Redis. Raises :class:`BrokerError` or :class:`ValueError`."""
    if is_cluster_url(url):
        return await RedisClusterBroker.connect(url, prefix=prefix)
    return await RedisBroker.connect(url, prefix=prefix)


class RedisClusterBroker(RedisEndpoint):
    """Sharded pub/sub broker; build it with :meth:`connect`."""

    def __init__(self, client: RedisCluster, *, url: str, prefix: str, timings: Timings):
        self._client = client
        self.where = redact_url(url)
        self.prefix = prefix
        self.timings = timings
        self._nodes: dict[str, _Node] = {}
        self._subscriptions: set[_ClusterSubscription] = set()

    @classmethod
    async def connect(
        cls, url: str, *, socket_timeout: float = 2.0, prefix: str = "os:", **timings: float
    ) -> RedisClusterBroker:
        """A broker on a cluster whose slot map was read from the node ``url`` names
        (``redis+cluster://host:port``; ``timings``: fields of
        :class:`~channels.redis_broker.Timings`). Raises :class:`BrokerError` when no
        node answers within ``connect_timeout``; :class:`ValueError` for a URL of
        another scheme."""
        if not is_cluster_url(url):
            raise ValueError(f"not a {CLUSTER_SCHEME}:// URL: {redact_url(url)!r}")
        timing = Timings(**timings)
        deadline = timing.connect_timeout
        client = cluster_client(url, socket_timeout=socket_timeout, connect_timeout=deadline)
        try:
            async with asyncio.timeout(deadline):
                await client.initialize()
        except (RedisError, OSError, TimeoutError) as exc:
            await client.aclose()
            raise BrokerError(
                f"Redis Cluster at {redact_url(url)} is unreachable: {describe(exc)}"
            ) from exc
        return cls(client, url=url, prefix=prefix, timings=timing)

    def same_server(self, other: object) -> bool:
        # Never one transaction with a store: SPUBLISH of many slots cannot join it.
        return False

    def wire(self, channel: str) -> bytes:
        return (self.prefix + channel).encode()

    async def publish(self, channels: Sequence[str], payload: bytes) -> None:
        """SPUBLISH the payload on every channel, in order. Raises :class:`BrokerError`
        when the cluster fails (a retried publish may repeat some: subscribers drop
        repeats by ``seq``)."""
        try:
            for channel in channels:
                await self._client.spublish(self.wire(channel), payload)
        except (RedisError, OSError) as exc:
            why = describe(exc)
            raise BrokerError(f"Redis Cluster at {self.where}: publish failed: {why}") from exc

    async def subscription(
        self, on_message: MessageHandler, on_resync: ResyncHandler
    ) -> Subscription:
        sub = _ClusterSubscription(self, on_message, on_resync)
        self._subscriptions.add(sub)
        return sub

    async def close(self) -> None:
        for sub in tuple(self._subscriptions):
            await sub.close()
        for node in self._nodes.values():
            await node.pool.disconnect()
        await self._client.aclose()

    def owner(self, channel: str) -> str:
        """``host:port`` of the master that owns the channel's slot, as last known."""
        node = self._client.get_node_from_key(self.prefix + channel)
        if node is None:  # A slot no master covers: the cluster is down.
            raise BrokerError(f"Redis Cluster at {self.where}: no master for {channel!r}")
        return str(node.name)

    async def refresh(self) -> None:
        """Read the slot map again (after a failover)."""
        async with asyncio.timeout(self.timings.connect_timeout):
            await self._client.nodes_manager.initialize()

    def node(self, name: str) -> _Node:
        node = self._nodes.get(name)
        if node is None:
            node = self._nodes[name] = _Node(self, name)
        return node

    def _forget(self, sub: _ClusterSubscription) -> None:
        self._subscriptions.discard(sub)


class _Node:
    """One master, as a :class:`~channels.redis_broker.Source` of subscription
    connections."""

    def __init__(self, broker: RedisClusterBroker, name: str):
        self.where = f"redis://{name}"
        self.timings = broker.timings
        self.wire = broker.wire
        # As RedisBroker's factory: RESP2, no socket timeout (the reader bounds reads).
        self.pool = ConnectionPool.from_url(
            self.where,
            protocol=2,
            socket_timeout=None,
            socket_connect_timeout=broker.timings.connect_timeout,
            client_name="oddstream-sub",
        )

    def new_connection(self) -> AbstractConnection:
        return self.pool.connection_class(**self.pool.connection_kwargs)

    def forget(self, sub: RedisSubscription) -> None:
        pass  # The cluster subscription keeps track of its readers.


class _ClusterSubscription:
    """A node's channels over the cluster: one sharded reader per master they live on."""

    def __init__(
        self, broker: RedisClusterBroker, on_message: MessageHandler, on_resync: ResyncHandler
    ):
        self._broker = broker
        self._on_message = on_message
        self._on_resync = on_resync
        self._readers: dict[str, RedisSubscription] = {}
        self._where: dict[str, str] = {}
        """Per channel: the master whose reader holds it."""
        self._lock = asyncio.Lock()
        self._rehoming: asyncio.Task[None] | None = None
        self._closed = False

    async def subscribe(self, channel: str) -> None:
        """Subscribe on the reader of the channel's master; raises :class:`BrokerError`
        when that master does not confirm in time."""
        async with self._lock:
            await self._place(channel, self._broker.owner(channel))

    async def unsubscribe(self, channel: str) -> None:
        async with self._lock:
            name = self._where.pop(channel, None)
            reader = self._readers.get(name) if name is not None else None
            if reader is not None:
                await reader.unsubscribe(channel)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._broker._forget(self)
        if self._rehoming is not None:
            self._rehoming.cancel()
            await asyncio.gather(self._rehoming, return_exceptions=True)
        for reader in self._readers.values():
            await reader.close()
        self._readers.clear()

    @property
    def readers(self) -> dict[str, RedisSubscription]:
        """Per master ``host:port``: its reader (for tests and metrics)."""
        return dict(self._readers)

    async def _place(self, channel: str, name: str) -> None:
        reader = self._readers.get(name)
        if reader is None:
            reader = RedisSubscription(
                self._broker.node(name),
                self._on_message,
                self._on_resync,
                mode=SHARDED,
                on_lost=self._lost,
            )
            await reader.start()
            self._readers[name] = reader
        await reader.subscribe(channel)
        self._where[channel] = name

    def _lost(self, reader: RedisSubscription) -> None:
        if not self._closed and (self._rehoming is None or self._rehoming.done()):
            self._rehoming = asyncio.get_running_loop().create_task(
                self._rehome(), name=f"redis-cluster rehome {self._broker.where}"
            )

    async def _rehome(self) -> None:
        """Move channels to their masters as the slot map now says, until each is on a
        reader that is up; then resync if any moved."""
        b = self._broker
        moved = 0
        attempt = 0
        while not self._closed:
            try:
                await b.refresh()
                async with self._lock:
                    for channel, name in list(self._where.items()):
                        owner = b.owner(channel)
                        if owner != name:
                            await self._readers[name].unsubscribe(channel)
                            del self._where[channel]
                            await self._place(channel, owner)
                            moved += 1
                    await self._drop_idle()
                    if all(self._readers[n].ready for n in set(self._where.values())):
                        break
            except (RedisError, OSError, BrokerError) as exc:  # OSError includes TimeoutError.
                log.warning("Redis Cluster at %s: moving failed: %s", b.where, describe(exc))
            attempt += 1
            delay = min(b.timings.backoff_max, b.timings.backoff_base * 2 ** (attempt - 1))
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
        if moved and not self._closed:
            log.info("Redis Cluster at %s: %d channel(s) moved to new masters", b.where, moved)
            try:
                self._on_resync()
            except Exception:
                log.exception("resync handler failed")

    async def _drop_idle(self) -> None:
        used = set(self._where.values())
        for name in [n for n in self._readers if n not in used]:
            await self._readers.pop(name).close()
