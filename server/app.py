"""The starlette application: routes only wire transports and REST to the gateway."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

from prometheus_client.registry import Collector
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from archive.db import MysqlUrl
from archive.query import History, HistorySource
from channels.metrics import CONTENT_TYPE, RoleCollector, exposition
from channels.store import StoreError
from server import graphql, history, openapi, rest
from server.admission import Admission
from server.gateway import Gateway
from server.metrics import GatewayCollector
from server.streams import Streams

STATIC = Path(__file__).parent / "static"

Background = Callable[[], Coroutine[Any, Any, None]]


async def index(request: Request) -> Response:
    return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})


async def operator_page(request: Request) -> Response:
    return FileResponse(STATIC / "operator.html", headers={"Cache-Control": "no-store"})


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
    in memory), the archive's history routes (:mod:`server.history`). GraphQL queries at
    ``/graphql`` always (:mod:`server.graphql`; history fields need the archive). WebSocket upgrades
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
        Route(graphql.PATH, graphql.endpoint, methods=["GET", "POST"]),
        Route(openapi.PATH, openapi.serve),
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
    app.state.graphql = graphql.Documents(settings)
    return app


def operator_app(
    role: str,
    ready: Callable[[], bool],
    collectors: Sequence[Collector] = (),
    readyz: Callable[[Request], Awaitable[Response]] | None = None,
) -> Starlette:
    """An operator listener's app (``--ops-host``/``--ops-port``, never public), for any
    role: ``/metrics`` (the process's registry, ``oddstream_ready`` and ``oddstream_info``
    of ``role``, and ``collectors``), ``/healthz`` and ``/readyz`` (``readyz``, or 200
    while ``ready()`` else 503), and at ``/`` the live operator page that draws
    ``/metrics``. See ``docs/observability.md``."""
    extra = (RoleCollector(role, ready), *collectors)

    async def metrics(request: Request) -> Response:
        return Response(exposition(extra), media_type=CONTENT_TYPE)

    async def ready_or_not(request: Request) -> Response:
        if ready():
            return JSONResponse({"status": "ready"})
        return JSONResponse({"status": "not ready"}, 503)

    return Starlette(
        routes=[
            Route("/", operator_page),
            Route("/metrics", metrics),
            Route("/healthz", rest.healthz),
            Route("/readyz", readyz or ready_or_not),
        ]
    )


def ops_app(gateway: Gateway, admission: Admission, streams: Streams | None = None) -> Starlette:
    """The gateway's operator app: its metrics (:mod:`server.metrics`), those of its edge
    and streams, and the same health probes as the public port."""
    app = operator_app(
        "gateway",
        lambda: gateway.ready and not gateway.draining,
        [GatewayCollector(gateway, admission, streams)],
        rest.readyz,
    )
    app.state.gateway = gateway
    return app
