"""The OpenAPI document (``server/openapi.py``): every route the gateway mounts is in it,
it is a valid OpenAPI 3.1 document, and the committed copy is current."""

from __future__ import annotations

import json

import httpx
from openapi_spec_validator import validate
from starlette.routing import Route

from archive.memory import MemoryHistory
from channels.broker import MemoryBroker
from channels.store import MemoryStore
from server import openapi
from server.app import build_app
from server.gateway import Gateway
from server.settings import Settings

#: Pages for people, not the API.
HTML = {"/", "/demo"}


def mounted() -> set[tuple[str, str]]:
    app = build_app(Gateway(Settings(), MemoryBroker(), MemoryStore()), archive=MemoryHistory())
    pairs = set()
    for route in app.routes:
        if isinstance(route, Route) and route.path not in HTML:
            path = route.path.replace(":path}", "}")
            methods = (route.methods or {"GET"}) - {"HEAD"}
            pairs |= {(path, m.lower()) for m in methods}
    return pairs


def test_every_mounted_route_is_documented() -> None:
    document = json.loads(openapi.render())
    documented = {(path, m) for path, ops in document["paths"].items() for m in ops}
    assert mounted() == documented
    validate(document)  # OpenAPI 3.1: schemas, references, parameters.
    for path, ops in document["paths"].items():
        names = {p["name"] for op in ops.values() for p in op["parameters"] if p["in"] == "path"}
        assert names == {part[1:-1] for part in path.split("/") if part.startswith("{")}, path


async def test_the_committed_document_is_current_and_served() -> None:
    assert openapi.main(["--check"]) == 0
    app = build_app(Gateway(Settings(), MemoryBroker(), MemoryStore()))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        served = await http.get(openapi.PATH)
    assert served.headers["content-type"] == "application/json"
    assert served.content == openapi.DOC.read_bytes()
