"""The starlette application: routes only wire transports and REST to the gateway."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from archive.db import MysqlUrl
from archive.query import History, HistorySource
from channels.store import StoreError
from server import history, rest
from server.admission import Admission
from server.gateway import Gateway

STATIC = Path(__file__).parent / "static"

Background = Callable[[], Coroutine[Any, Any, None]]


async def index(request: Request) -> Response:
    return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})


def build_app(
    gateway: Gateway,
    background: Sequence[Background] = (),
    web_dist: Path | None = None,
    archive: HistorySource | None = None,
) -> Starlette:
    """The ASGI app of one gateway. ``background`` coroutines (the embedded pipeline in
    ``oddstream dev``) run for the app's lifetime, owned by its lifespan. ``web_dist`` is
    the built web shell (React board + Angular bet slip) served at ``/``; without it,
    the plain demo page. With ``--mysql`` (or an ``archive`` given: ``oddstream dev``'s
    in memory), the archive's history routes (:mod:`server.history`). WebSocket upgrades
    (``/ws``) and SSE streams (``/sse``) never reach this app: the edge hands them to
    :mod:`server.ws` and :mod:`server.sse` (see :mod:`server.listener`). ``/metrics`` is
    on the operator listener (:func:`ops_app`)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await gateway.start()
        tasks = [asyncio.create_task(run()) for run in background]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await gateway.close()
            if archive is not None:
                await archive.close()

    settings = gateway.settings
    if settings.mysql:
        archive = History(MysqlUrl.parse(settings.mysql), pool_size=settings.mysql_pool)
    routes: list[BaseRoute] = [
        *(history.routes() if archive is not None else ()),
        Route("/v1/events", rest.list_events),
        Route("/v1/events/{event_id}", rest.get_event),
        Route("/v1/markets", rest.list_markets),
        Route("/v1/markets/{market_id:path}", rest.get_market),
        Route("/v1/snapshots", rest.get_snapshots),
        Route("/v1/tickets", rest.issue_ticket, methods=["POST"]),
        Route("/healthz", rest.healthz),
        Route("/readyz", rest.readyz),
        Route("/demo", index),
    ]
    if web_dist is not None:
        routes.append(Mount("/", app=StaticFiles(directory=web_dist, html=True), name="web"))
    else:
        routes.append(Route("/", index))
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={StoreError: rest.storage_unavailable},
    )
    app.state.gateway = gateway
    app.state.history = archive
    return app


def ops_app(gateway: Gateway, admission: Admission) -> Starlette:
    """The operator listener's app (``--ops-host``/``--ops-port``, never public): metrics
    of the gateway and of its edge, and the same health probes as the public port."""

    async def metrics(request: Request) -> Response:
        answer = await rest.metrics(request)
        edge = "\n".join(admission.metrics()) + "\n"
        return Response(bytes(answer.body) + edge.encode(), media_type=answer.media_type)

    app = Starlette(
        routes=[
            Route("/metrics", metrics),
            Route("/healthz", rest.healthz),
            Route("/readyz", rest.readyz),
        ]
    )
    app.state.gateway = gateway
    return app
