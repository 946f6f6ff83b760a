"""``oddstream gateway``: Redis snapshots, history and pub/sub in; WebSocket, SSE and
REST out. Imports nothing of the feeds or Kafka."""

from __future__ import annotations

from channels.redis_cluster import connect_broker
from channels.redis_store import RedisStore
from oddstream.options import GatewaySettings
from oddstream.tracing import traced
from server.app import build_app
from server.gateway import Gateway
from server.serve import Seat, serve


async def main(settings: GatewaySettings, seat: Seat | None = None) -> None:
    """One gateway process (``seat``: one worker of several on the port)."""
    prefix = settings.redis_prefix
    store = await RedisStore.connect(
        settings.redis, history_size=settings.server.history_size, prefix=prefix
    )
    broker = await connect_broker(settings.redis, prefix=prefix)
    node = Gateway(settings.server, broker, store)
    try:
        with traced("gateway", settings.traces):
            await serve(build_app(node), settings.server, node, seat)
    finally:
        await broker.close()
        await store.close()
