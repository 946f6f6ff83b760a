"""The :class:`~channels.broker.Broker` over Redis pub/sub.

Publishing: :meth:`RedisBroker.publish` sends one PUBLISH per channel in one pipeline
(not a transaction: order on the connection is enough), through the client's pool.
Successive calls are ordered because each awaits the previous one's replies.

Subscribing: each gateway node opens *one* :class:`Subscription` (``Relay.start``), and
it holds one dedicated Redis connection in subscribed mode however many clients the node
serves; channels are added and removed on it as the node's clients come and go. One
owned reader task reads that connection and calls ``on_message(channel, payload)``
synchronously, in arrival order, never awaiting in between.

Why not redis-py's ``PubSub`` object: it reconnects and re-subscribes silently inside
its read call, so we could not tell the relay that messages may have been lost, and it
does per-read bookkeeping we do not need on the hot path. Here the subscription owns
its connection and its state machine:

* ``subscribe(channel)`` sends SUBSCRIBE and returns only when Redis has confirmed it (the
  confirmations come back in command order; each SUBSCRIBE queues a future per channel
  that the reader resolves), so anything published after it returns is delivered.
  Bounded by ``subscribe_timeout``; raises :class:`~channels.broker.BrokerError`.
* ``unsubscribe(channel)`` stops delivery at once (the reader drops messages of channels
  no longer wanted) and sends UNSUBSCRIBE without waiting for the reply.
* When the connection drops (Redis restarted, connection killed) or stays silent past
  two ``health_interval`` (the reader PINGs when idle, so a half-open TCP connection is
  noticed too), the reader reconnects with capped exponential backoff and jitter,
  re-subscribes every channel still wanted, waits for every confirmation, and only then
  calls ``on_resync()``: messages published meanwhile were lost (pub/sub is
  at-most-once) and the relay re-checks its books against storage. Messages arriving
  between two confirmations of the re-subscription are delivered as usual.

Back-pressure: the handler must be quick (the relay only updates books and appends to
bounded client buffers). If the reader still falls behind, Redis buffers for it and,
past ``client-output-buffer-limit pubsub``, closes the connection: that is handled like
any drop (reconnect, resync), so a stalled node never slows the publishers.

Sharded pub/sub (Redis Cluster, ``SSUBSCRIBE``) uses the same reader in
:data:`SHARDED` mode, one per shard node (:mod:`channels.redis_cluster`): channels are
subscribed one per command (each names its own slot), and a ``sunsubscribe`` Redis
pushes for a channel still wanted (its slot moved) is handled like a lost connection.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import msgspec
import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection, ConnectionPool
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from channels.broker import BrokerError, MessageHandler, ResyncHandler, Subscription
from channels.redis_conn import RedisEndpoint, connect, describe, redact_url

__all__ = ["PLAIN", "SHARDED", "RedisBroker", "SubscriptionStats", "Timings"]

log = logging.getLogger(__name__)


class SubscriptionStats(msgspec.Struct):
    delivered: int = 0
    reconnects: int = 0
    handler_errors: int = 0


class Mode(NamedTuple):
    """The commands and reply kinds of one flavour of Redis pub/sub."""

    subscribe: str
    unsubscribe: str
    message: bytes
    confirmed: bytes
    dropped: bytes | None
    """What Redis pushes when it unsubscribes a channel by itself (its slot moved)."""


PLAIN = Mode("SUBSCRIBE", "UNSUBSCRIBE", b"message", b"subscribe", None)
SHARDED = Mode("SSUBSCRIBE", "SUNSUBSCRIBE", b"smessage", b"ssubscribe", b"sunsubscribe")


@dataclass(frozen=True, slots=True)
class Timings:
    """How a subscription waits and backs off: ``subscribe_timeout`` bounds the wait for a
    SUBSCRIBE confirmation (and for the re-subscription after a reconnect);
    ``health_interval`` is how long the connection may stay silent before it is PINGed
    (and, silent for as long again, declared dead); reconnect delays grow from
    ``backoff_base`` to ``backoff_max``; ``connect_timeout`` bounds each connection."""

    connect_timeout: float = 2.0
    subscribe_timeout: float = 2.0
    health_interval: float = 5.0
    backoff_base: float = 0.05
    backoff_max: float = 5.0


class Source(Protocol):
    """Where a subscription's connections come from, and its timings."""

    where: str
    timings: Timings

    def wire(self, channel: str) -> bytes: ...

    def new_connection(self) -> AbstractConnection: ...

    def forget(self, sub: RedisSubscription) -> None: ...


class RedisBroker(RedisEndpoint):
    """Redis pub/sub broker; build it with :meth:`connect`. ``timings``: see
    :class:`Timings`. ``prefix`` (the deployment's, ``--redis-prefix``) starts every
    channel's name on Redis; callers and handlers see names without it.
    """

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        url: str,
        timings: Timings = Timings(),
        prefix: str = "os:",
    ):
        self._client = client
        self.prefix = prefix
        self.where = redact_url(url)
        self.timings = timings
        # Only a factory of subscription connections (it pools nothing). RESP2: replies
        # in subscribed mode are plain arrays, with no push-message machinery per read.
        # No socket timeout: the reader bounds each read itself (and an idle subscribed
        # connection is normal); with one, redis-py would also run every send in a
        # separate task (wait_for), racing with the reader's disconnect.
        self._factory = ConnectionPool.from_url(
            url,
            protocol=2,
            socket_timeout=None,
            socket_connect_timeout=timings.connect_timeout,
            client_name="oddstream-sub",
        )
        self._subscriptions: set[RedisSubscription] = set()

    @classmethod
    async def connect(
        cls, url: str, *, socket_timeout: float = 2.0, prefix: str = "os:", **timings: float
    ) -> RedisBroker:
        """A broker publishing through a client that answered a PING
        (:func:`channels.redis_conn.connect`; ``timings``: fields of :class:`Timings`;
        raises :class:`BrokerError` or :class:`ValueError`)."""
        timing = Timings(**timings)
        client = await connect(
            url,
            "oddstream-broker",
            BrokerError,
            socket_timeout=socket_timeout,
            connect_timeout=timing.connect_timeout,
        )
        return cls(client, url=url, timings=timing, prefix=prefix)

    async def publish(self, channels: Sequence[str], payload: bytes) -> None:
        """Publish the same payload on every channel, in order. Raises
        :class:`BrokerError` when Redis fails (some channels may have been published;
        a retried publish may repeat some: subscribers drop repeats by ``seq``)."""
        if not channels:
            return
        pipe = self._client.pipeline(transaction=False)
        for channel in channels:
            pipe.publish(self.prefix + channel, payload)
        try:
            await pipe.execute()
        except (RedisError, OSError) as exc:
            raise BrokerError(f"Redis at {self.where}: publish failed: {describe(exc)}") from exc

    async def subscription(
        self, on_message: MessageHandler, on_resync: ResyncHandler
    ) -> Subscription:
        """Open a node's subscription connection. Raises :class:`BrokerError` when
        Redis cannot be reached within ``connect_timeout``."""
        sub = RedisSubscription(self, on_message, on_resync)
        await sub.start()
        self._subscriptions.add(sub)
        return sub

    async def close(self) -> None:
        for sub in tuple(self._subscriptions):
            await sub.close()
        await self._client.aclose()
        await self._factory.disconnect()

    def wire(self, channel: str) -> bytes:
        """The name ``channel`` has on Redis: after the deployment's prefix."""
        return (self.prefix + channel).encode()

    def new_connection(self) -> AbstractConnection:
        """A connection outside any pool, owned by one subscription."""
        factory = self._factory
        return factory.connection_class(**factory.connection_kwargs)

    def forget(self, sub: RedisSubscription) -> None:
        self._subscriptions.discard(sub)


class RedisSubscription:
    """One node's channel set on one dedicated connection; see the module docstring.

    ``mode`` is :data:`PLAIN` or :data:`SHARDED`; ``on_lost``, when given, is called by
    the reader each time its connection is lost, before it reconnects (a cluster
    subscription then checks whether the node still owns the channels).

    State: ``_wanted`` is what the owner asked for (the truth re-subscribed after a
    reconnect); ``_pending`` holds, per channel, one future per SUBSCRIBE sent on the
    current connection, resolved True by its confirmation or False if the connection
    is lost first; ``_ready`` is set while a connection is up with every wanted channel
    subscribed, and only then may ``subscribe`` send on it.

    Only the reader task reads the connection. Other tasks write to it (SUBSCRIBE,
    UNSUBSCRIBE) through :meth:`_send`, which never lets redis-py reconnect it behind
    the reader's back; only the reader disconnects it (and redis-py, on a failed send).
    """

    def __init__(
        self,
        broker: Source,
        on_message: MessageHandler,
        on_resync: ResyncHandler,
        *,
        mode: Mode = PLAIN,
        on_lost: Callable[[RedisSubscription], None] | None = None,
    ):
        self._broker = broker
        self._mode = mode
        self._on_lost = on_lost
        self._on_message = on_message
        self._on_resync = on_resync
        self._wanted: dict[bytes, str] = {}
        self._pending: dict[bytes, deque[asyncio.Future[bool]]] = {}
        self._conn: AbstractConnection | None = None
        self._ready = asyncio.Event()
        self._closed = False
        self._task: asyncio.Task[None] | None = None
        self.stats = SubscriptionStats()

    async def start(self) -> None:
        try:
            conn = await self._open()
        except (RedisError, OSError, TimeoutError) as exc:
            raise BrokerError(
                f"Redis at {self._broker.where} is unreachable for pub/sub: {describe(exc)}"
            ) from exc
        self._conn = conn
        self._ready.set()
        self._task = asyncio.get_running_loop().create_task(
            self._run(conn), name=f"redis-subscription {self._broker.where}"
        )
        self._task.add_done_callback(self._reader_done)

    # -- the owner's side ----------------------------------------------------------------------

    async def subscribe(self, channel: str) -> None:
        """Start receiving ``channel``; returns once Redis confirmed the subscription, so
        messages published after this returns are delivered. Waits through a reconnect
        in progress. Raises :class:`BrokerError` after ``subscribe_timeout``."""
        if self._closed:
            raise BrokerError("the subscription is closed")
        key = self._broker.wire(channel)
        added = key not in self._wanted
        self._wanted[key] = channel
        timeout = self._broker.timings.subscribe_timeout
        try:
            async with asyncio.timeout(timeout):
                while not await self._request(key, channel):
                    pass  # That connection was lost first; try again on the next one.
        except TimeoutError:
            if added:
                await self._abandon(key)
            raise BrokerError(
                f"Redis at {self._broker.where} did not confirm SUBSCRIBE {channel!r} "
                f"within {timeout}s"
            ) from None

    async def unsubscribe(self, channel: str) -> None:
        """Stop receiving ``channel``; takes effect at once (nothing more is delivered)."""
        await self._abandon(self._broker.wire(channel))

    async def close(self) -> None:
        """Stop the reader and close the connection; idempotent."""
        if self._closed:
            return
        self._closed = True
        self._broker.forget(self)
        task = self._task
        if task is not None:
            # Library code can swallow a cancellation (Python 3.11's wait_for, for one);
            # the reader also checks ``_closed``, so asking again soon enough ends it.
            while not task.done():
                task.cancel()
                await asyncio.wait([task], timeout=1.0)
        self._fail_pending()
        self._ready.set()  # Wake waiting subscribe() calls: they raise BrokerError.
        if self._conn is not None:
            await self._conn.disconnect(nowait=True)
            self._conn = None

    async def _request(self, key: bytes, channel: str) -> bool:
        """Send one SUBSCRIBE on the current connection; True once confirmed, False if
        that connection was lost first."""
        await self._ready.wait()
        if self._closed:
            raise BrokerError("the subscription is closed")
        future = self._expect(key)
        conn = self._conn
        if conn is not None:
            try:
                await self._send(conn, self._mode.subscribe, key)
            except (RedisError, OSError) as exc:
                # The connection is broken: the reader notices, reconnects (subscribing
                # every wanted channel) and resolves ``future`` with False.
                log.debug("SUBSCRIBE %s not sent: %s", channel, describe(exc))
        return await future

    async def _abandon(self, key: bytes) -> None:
        channel = self._wanted.pop(key, None)
        if channel is None or not self._ready.is_set() or self._conn is None:
            return  # A reconnect in progress unsubscribes it once done.
        try:
            async with asyncio.timeout(self._broker.timings.subscribe_timeout):
                await self._send(self._conn, self._mode.unsubscribe, key)
        except (RedisError, OSError) as exc:  # OSError includes TimeoutError.
            # The connection is broken, and the next one will not subscribe it.
            log.debug("UNSUBSCRIBE %s not sent: %s", channel, describe(exc))

    @staticmethod
    async def _send(conn: AbstractConnection, *args: str | bytes) -> None:
        # Checked in the same step as redis-py's own check (no await in between), which
        # would otherwise silently reconnect a closed connection, unsubscribed.
        if not conn.is_connected:
            raise RedisConnectionError("connection closed")
        await conn.send_command(*args, check_health=False)

    # -- the reader ----------------------------------------------------------------------------

    async def _run(self, conn: AbstractConnection) -> None:
        while not self._closed:
            try:
                await self._pump(conn)
            except (RedisError, OSError) as exc:  # OSError includes TimeoutError.
                log.warning(
                    "Redis pub/sub at %s lost (%s); reconnecting", self._broker.where, describe(exc)
                )
            await self._drop(conn)
            if self._on_lost is not None:
                self._on_lost(self)
            reconnected = await self._reconnect()
            if reconnected is None:
                return
            conn = reconnected
            self.stats.reconnects += 1
            try:
                self._on_resync()
            except Exception:
                log.exception("resync handler failed")

    async def _pump(self, conn: AbstractConnection) -> None:
        """Read and dispatch until the connection fails (raises) or the subscription
        is closed (returns)."""
        interval = self._broker.timings.health_interval
        probing = False
        while not self._closed:
            reply = await conn.read_response(
                timeout=interval, disconnect_on_error=False, push_request=True
            )
            if reply is None:  # Silent for a whole interval.
                if probing:
                    raise RedisConnectionError(f"no reply to PING within {interval}s")
                async with asyncio.timeout(interval):
                    await self._send(conn, "PING")
                probing = True
                continue
            probing = False
            self._handle(reply)

    def _handle(self, reply: Any) -> None:
        kind = reply[0]
        if kind == self._mode.message:
            channel = self._wanted.get(reply[1])
            if channel is None:
                return  # Unsubscribed, or an UNSUBSCRIBE still in flight.
            self.stats.delivered += 1
            try:
                self._on_message(channel, reply[2])
            except Exception:
                self.stats.handler_errors += 1
                log.exception("message handler failed on %s", channel)
        elif kind == self._mode.confirmed:
            key = reply[1]
            queue = self._pending.get(key)
            if queue:
                future = queue.popleft()
                if not queue:
                    del self._pending[key]
                if not future.done():  # Its subscribe() may have timed out.
                    future.set_result(True)
        elif kind == self._mode.dropped and reply[1] in self._wanted:
            raise RedisConnectionError(f"Redis unsubscribed {reply[1]!r} (its slot moved)")
        # "unsubscribe" confirmations and PING replies ("pong") need nothing.

    async def _drop(self, conn: AbstractConnection) -> None:
        self._ready.clear()
        self._conn = None
        self._fail_pending()
        await conn.disconnect(nowait=True)

    def _fail_pending(self) -> None:
        for queue in self._pending.values():
            for future in queue:
                if not future.done():
                    future.set_result(False)
        self._pending.clear()

    async def _reconnect(self) -> AbstractConnection | None:
        """Connect and re-subscribe every wanted channel, retrying with capped
        exponential backoff until it works; None once the subscription is closed."""
        b = self._broker
        attempt = 0
        while not self._closed:
            if attempt:
                delay = min(b.timings.backoff_max, b.timings.backoff_base * 2 ** (attempt - 1))
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            attempt += 1
            conn: AbstractConnection | None = None
            try:
                conn = await self._open()
                await self._resubscribe(conn)
            except (RedisError, OSError) as exc:  # OSError includes TimeoutError.
                log.warning(
                    "Redis pub/sub at %s: reconnect attempt %d failed (%s)",
                    b.where,
                    attempt,
                    describe(exc),
                )
                if conn is not None:
                    await self._drop(conn)
                continue
            except BaseException:  # Cancelled by close(): do not leave it connected.
                if conn is not None:
                    await conn.disconnect(nowait=True)
                raise
            log.info("Redis pub/sub at %s: reconnected", b.where)
            return conn
        return None

    async def _resubscribe(self, conn: AbstractConnection) -> None:
        """Subscribe every wanted channel on a fresh connection and wait for all the
        confirmations (dispatching any message that arrives in between); then let
        ``subscribe`` use the connection."""
        channels = list(self._wanted)
        if channels:
            futures = [self._expect(key) for key in channels]
            confirmed = 0
            async with asyncio.timeout(self._broker.timings.subscribe_timeout):
                await self._send_each(conn, self._mode.subscribe, channels)
                while confirmed < len(futures):
                    reply = await conn.read_response(
                        timeout=math.inf, disconnect_on_error=False, push_request=True
                    )
                    self._handle(reply)
                    while confirmed < len(futures) and futures[confirmed].done():
                        confirmed += 1
                # Unsubscribed while we were re-subscribing: undo those.
                stale = [key for key in channels if key not in self._wanted]
                if stale:
                    await self._send_each(conn, self._mode.unsubscribe, stale)
        self._conn = conn
        self._ready.set()

    async def _send_each(self, conn: AbstractConnection, command: str, keys: list[bytes]) -> None:
        """One command for every channel; one per channel in sharded mode (a sharded
        command may only name channels of one slot)."""
        if self._mode is SHARDED:
            for key in keys:
                await self._send(conn, command, key)
        else:
            await self._send(conn, command, *keys)

    @property
    def ready(self) -> bool:
        """Connected, with every wanted channel subscribed."""
        return self._ready.is_set() and not self._closed

    def channels(self) -> list[str]:
        """The channels wanted (subscribed, or to be on the next connection)."""
        return list(self._wanted.values())

    def _expect(self, key: bytes) -> asyncio.Future[bool]:
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._pending.setdefault(key, deque()).append(future)
        return future

    async def _open(self) -> AbstractConnection:
        conn = self._broker.new_connection()
        try:
            # Bounds the TCP connect and the handshake (AUTH, SELECT, CLIENT SETNAME).
            async with asyncio.timeout(self._broker.timings.connect_timeout):
                await conn.connect()  # type: ignore[no-untyped-call]  # redis-py leaves it bare
        except BaseException:
            await conn.disconnect(nowait=True)
            raise
        return conn

    def _reader_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error(
                "Redis pub/sub reader for %s died; no more messages will be delivered",
                self._broker.where,
                exc_info=task.exception(),
            )
