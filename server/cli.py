"""The ``oddstream`` command: ``dev`` (everything in one process), ``feed``, ``books`` and
``gateway`` (the distributed mode).

A bad flag or setting stops start-up with a message naming it, and exit status 2.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import socket
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import uvicorn

from channels.broker import BrokerError, MemoryBroker
from channels.store import MemoryStore, StoreError
from feeds.embedded import EmbeddedPipeline
from feeds.sources import SourceError, open_source
from server.app import build_app
from server.gateway import Gateway
from server.settings import Settings, SettingsError

log = logging.getLogger("oddstream")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="oddstream", description="Real-time push server for live sports-betting odds."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    dev = sub.add_parser("dev", help="everything in one process: synthetic feed, books, gateway")
    _server_flags(dev)
    dev.add_argument("--seed", type=int, help="synthetic feed seed (default 1)")
    dev.add_argument("--events", type=int, help="concurrent events (default 12)")
    dev.add_argument("--rate", type=float, help="feed messages per second (default 200)")
    dev.add_argument("--feed", help="synth (default) or FORMAT:PATH, a recording to replay")
    dev.add_argument("--speed", type=float, help="replay speed (x real time; 0 = max)")
    gateway = sub.add_parser("gateway", help="a gateway: Redis in; WebSocket, SSE and REST out")
    _server_flags(gateway)
    _redis_flag(gateway)
    return parser


def _redis_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--redis", help="Redis URL, e.g. redis://127.0.0.1:6379/0")


def _kafka_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kafka", help="Kafka bootstrap servers host:port[,host:port]")


def _server_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", help="listen address (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="listen port (default 8000; 0 picks a free one)")
    p.add_argument("--heartbeat-s", type=float, dest="heartbeat_s", help="heartbeat interval")
    p.add_argument("--max-subscriptions", type=int, dest="max_subscriptions")
    p.add_argument("--queue-frames", type=int, dest="queue_frames")
    p.add_argument("--max-frame-bytes", type=int, dest="max_frame_bytes")
    p.add_argument("--history-size", type=int, dest="history_size")
    p.add_argument("--drain-s", type=float, dest="drain_s", help="drain deadline on SIGTERM")
    p.add_argument("--log-level", dest="log_level")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    flags: dict[str, Any] = {k: v for k, v in vars(args).items() if k != "command"}
    try:
        settings = Settings.load(flags)
        if args.command == "gateway":
            _require(settings, "redis")
    except SettingsError as exc:
        print(f"oddstream: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        if args.command == "dev":
            return _run(dev(settings))
        if args.command == "gateway":
            return _run(gateway(settings))
    except SourceError as exc:
        print(f"oddstream: --feed: {exc}", file=sys.stderr)
        return 2
    except (StoreError, BrokerError) as exc:
        print(f"oddstream: {exc}", file=sys.stderr)
        return 1
    return 2


def _require(settings: Settings, *names: str) -> None:
    for name in names:
        if not getattr(settings, name):
            flag = "--" + name.replace("_", "-")
            raise SettingsError(f"{flag} / ODDSTREAM_{name.upper()} is required for this command")


def _run(coro: Any) -> int:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on POSIX
        asyncio.run(coro)
    else:
        uvloop.run(coro)
    return 0


async def dev(settings: Settings) -> None:
    """The embedded default: synthetic match day -> in-memory bus -> books -> gateway."""
    store = MemoryStore(history_size=settings.history_size)
    broker = MemoryBroker()
    gateway = Gateway(settings, broker, store)
    feed = open_source(
        settings.feed,
        seed=settings.seed,
        events=settings.events,
        rate=settings.rate,
        speed=settings.speed,
    )
    pipeline = EmbeddedPipeline(feed, store, broker)
    app = build_app(gateway, background=[pipeline.run])
    await serve(app, settings, gateway)


async def gateway(settings: Settings) -> None:
    """A gateway of the distributed mode: Redis snapshots, history and pub/sub in."""
    from channels.redis_broker import RedisBroker
    from channels.redis_store import RedisStore

    store = await RedisStore.connect(settings.redis, history_size=settings.history_size)
    broker = await RedisBroker.connect(settings.redis)
    node = Gateway(settings, broker, store)
    try:
        await serve(build_app(node), settings, node)
    finally:
        await broker.close()
        await store.close()


async def serve(app: Any, settings: Settings, gateway: Gateway | None = None) -> None:
    """Serve ``app`` until SIGTERM/SIGINT. The socket is bound first so the printed URL
    carries the real port (``--port 0`` picks a free one). The first signal drains the
    gateway (stop accepting, ``reconnect`` every client, close within ``drain_s``) and then
    stops; a second one stops at once."""
    sock = socket.socket(socket.AF_INET6 if ":" in settings.host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((settings.host, settings.port))
        sock.listen(2048)  # Clients may connect as soon as the URL is printed.
    except OSError as exc:
        sock.close()
        raise SystemExit(
            f"oddstream: cannot listen on {settings.host}:{settings.port} (--host/--port): {exc}"
        ) from None
    config = uvicorn.Config(
        app,
        ws="websockets-sansio",
        ws_max_size=settings.max_frame_bytes,
        ws_ping_interval=None,  # Liveness is the protocol's heartbeat.
        lifespan="on",
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=int(settings.close_timeout_s) + 1,
    )
    server = _Server(config)
    loop = asyncio.get_running_loop()
    drain: list[asyncio.Task[None]] = []

    async def drain_then_stop() -> None:
        for listener in server.servers:
            listener.close()  # Stop accepting; established connections carry on.
        if gateway is not None:
            await gateway.drain(settings.drain_s)
        server.should_exit = True

    def on_signal() -> None:
        if drain:
            server.force_exit = server.should_exit = True
        else:
            drain.append(loop.create_task(drain_then_stop()))

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    port = sock.getsockname()[1]
    print(f"oddstream: serving on http://{settings.host}:{port}/  (Ctrl-C to stop)", flush=True)
    try:
        await server.serve(sockets=[sock])
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        for task in drain:
            task.cancel()


class _Server(uvicorn.Server):
    """uvicorn's server with our signal handling (drain first) instead of its own."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


if __name__ == "__main__":
    sys.exit(main())
