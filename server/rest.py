"""REST: events, market summaries, a market's snapshot, health and metrics."""

from __future__ import annotations

import msgspec
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

import protocol
from server.gateway import Gateway

_encoder = msgspec.json.Encoder(decimal_format="string")


def json_response(payload: bytes, status_code: int = 200) -> Response:
    return Response(payload, status_code=status_code, media_type="application/json")


def error_response(code: str, message: str, status_code: int) -> Response:
    return json_response(
        _encoder.encode({"type": "error", "code": code, "message": message}), status_code
    )


def _gateway(request: Request) -> Gateway:
    gateway: Gateway = request.app.state.gateway
    return gateway


async def list_events(request: Request) -> Response:
    sport = request.query_params.get("sport")
    events = await _gateway(request).store.events(sport)
    events.sort(key=lambda e: (e.start_time, e.event_id))
    return json_response(_encoder.encode(events))


async def get_event(request: Request) -> Response:
    event_id = request.path_params["event_id"]
    event = await _gateway(request).store.event(event_id)
    if event is None:
        return error_response("unknown_event", f"unknown event: {event_id}", 404)
    return json_response(protocol.encode(event))


async def list_markets(request: Request) -> Response:
    event_id = request.query_params.get("event_id")
    summaries = await _gateway(request).store.summaries(event_id)
    return json_response(_encoder.encode(summaries))


async def get_market(request: Request) -> Response:
    market_id = request.path_params["market_id"]
    gateway = _gateway(request)
    snapshot = gateway.relay.current(market_id) or await gateway.store.snapshot(market_id)
    if snapshot is None:
        return error_response("unknown_market", f"unknown market: {market_id}", 404)
    return json_response(protocol.encode(snapshot))


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    gateway = _gateway(request)
    if gateway.ready and not gateway.draining:
        return JSONResponse({"status": "ready"})
    return JSONResponse({"status": "draining" if gateway.draining else "starting"}, 503)


async def metrics(request: Request) -> Response:
    gateway = _gateway(request)
    lines = [
        "# TYPE oddstream_connections gauge",
        f"oddstream_connections {gateway.stats.connections}",
        "# TYPE oddstream_connections_total counter",
        f"oddstream_connections_total {gateway.stats.connections_total}",
        "# TYPE oddstream_deliveries_total counter",
        f"oddstream_deliveries_total {gateway.hub.delivered}",
        "# TYPE oddstream_slow_consumer_closes_total counter",
        f"oddstream_slow_consumer_closes_total {gateway.stats.slow_consumer_closes}",
    ]
    for name, value in msgspec.structs.asdict(gateway.relay.stats).items():
        lines += [
            f"# TYPE oddstream_relay_{name}_total counter",
            f"oddstream_relay_{name}_total {value}",
        ]
    return Response("\n".join(lines) + "\n", media_type="text/plain; version=0.0.4")
