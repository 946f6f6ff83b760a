"""``oddstream dev``: the embedded default, in one process: a synthetic match day (or a
recording) -> in-memory bus -> books -> a gateway, with the web UI."""

from __future__ import annotations

import asyncio
from pathlib import Path

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
        pipeline = EmbeddedPipeline(
            feed, store, broker, stale_after_s=settings.stale_after_s or None
        )
        web_dist = (
            await asyncio.to_thread(ensure_built, WEB_DIR) if settings.web == "auto" else None
        )
        app = build_app(gateway, background=[pipeline.run], web_dist=web_dist)
        await serve(app, settings.server, gateway)
    except SourceError as exc:
        raise Failed(2, f"--feed: {exc}") from None
