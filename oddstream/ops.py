"""The operator listener of the roles without a public port (``books``, ``feed``,
``archive``): ``/metrics``, ``/healthz`` and ``/readyz`` on ``--ops-host``/``--ops-port``
(``docs/observability.md``). The gateway serves its own (:func:`server.serve.listening`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence

from prometheus_client.registry import Collector

from server.app import operator_app
from server.listener import Edge, EdgeConnection
from server.serve import bind
from server.settings import Settings


@contextlib.asynccontextmanager
async def operator_listener(
    role: str,
    host: str,
    port: int,
    ready: Callable[[], bool],
    collectors: Sequence[Collector] = (),
) -> AsyncIterator[int | None]:
    """Serve the operator endpoints of ``role`` while the block runs; yields the port
    listened on (``port`` 0: no listener, yields None). ``ready()`` answers ``/readyz``;
    ``collectors`` add the role's scrape-time metrics to the process registry's. Exits
    the process naming the flags when the address cannot be used."""
    if not port:
        yield None
        return
    sock = bind(host, port, flags="--ops-host/--ops-port")
    # The edge's defaults bound every request (head size, timeouts) as on a gateway.
    edge = Edge(operator_app(role, ready, collectors), Settings())
    server = await asyncio.get_running_loop().create_server(lambda: EdgeConnection(edge), sock=sock)
    bound: int = sock.getsockname()[1]
    print(f"oddstream: operator endpoints on http://{host}:{bound}/metrics", flush=True)
    try:
        yield bound
    finally:
        server.close()
        edge.shutdown()
