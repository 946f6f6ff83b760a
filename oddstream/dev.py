"""``oddstream dev``: the embedded default, in one process: a synthetic match day (or a
recording) -> in-memory bus -> books -> a gateway, with the web UI, and the history API
over an archive in memory (:mod:`archive.memory`)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

from archive.memory import MemoryHistory
from channels.broker import MemoryBroker
from channels.store import MemoryStore
from feeds.embedded import EmbeddedPipeline
from feeds.sources import SourceError, open_source
from oddstream.options import DevSettings
from oddstream.process import Failed
from oddstream.webui import ensure_built
from server.app import build_app
from server.gateway import Gateway
from server.serve import serve

WEB_DIR = Path(__file__).resolve().parent.parent / "web"


class _Archiving:
    """The pipeline's publisher: publishes on the broker and records each payload in
    the archive in memory (which keeps the market messages)."""

    def __init__(self, broker: MemoryBroker, archive: MemoryHistory):
        self._broker = broker
        self._archive = archive

    async def publish(self, channels: Sequence[str], payload: bytes) -> None:
        await self._broker.publish(channels, payload)
        self._archive.add(payload)


async def main(settings: DevSettings) -> None:
    store = MemoryStore(history_size=settings.server.history_size)
    broker = MemoryBroker()
    gateway = Gateway(settings.server, broker, store)
    try:
        feed = open_source(
            settings.feed,
            seed=settings.seed,
            events=settings.events,
            rate=settings.rate,
            speed=settings.speed,
        )
        archive = MemoryHistory()
        pipeline = EmbeddedPipeline(
            feed, store, _Archiving(broker, archive), stale_after_s=settings.stale_after_s or None
        )
        web_dist = (
            await asyncio.to_thread(ensure_built, WEB_DIR) if settings.web == "auto" else None
        )
        app = build_app(gateway, background=[pipeline.run], web_dist=web_dist, archive=archive)
        await serve(app, settings.server, gateway)
    except SourceError as exc:
        raise Failed(2, f"--feed: {exc}") from None
