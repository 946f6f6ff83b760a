"""The compose stack as an operator starts it (``docker/up.sh``: images built from the
local base, Kafka, Redis, the feed, two ``books``, two gateways, HAProxy), exercised
through the load balancer with the fault suite's clients and checker:

- WebSocket and SSE clients see snapshot-then-contiguous deltas;
- ``docker stop`` of a gateway: its clients get ``reconnect`` with their own positions,
  and resume on the other gateway with no gap;
- ``docker kill`` of a book processor: the other takes its partitions and continues
  every sequence;
- every client's books and every state they took equal the pure processor's.

The stack is torn down at the end (and before, if an interrupted run left it up). The
figures (bring-up time, image sizes, clients, deltas, gaps, resets) are printed and
written to ``.cache/deploy/figures.json``.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.faults.checker import Expectation
from tests.faults.client import ResilientClient, WsClient
from tests.faults.deploy import Deployment, Scale, assert_passed

ROOT = Path(__file__).resolve().parents[2]
FIGURES = ROOT / ".cache" / "deploy" / "figures.json"

SEED, EVENTS, LIMIT, RATE, PARTITIONS = 5, 4, 12_000, 150, 4
"""The feed: a seeded synthetic match day, long enough (80 s from Kafka's start) to
outlast the rest of the bring-up and both faults. (Past about 12,000 messages the
generator's later events depend on its start time, which the pure processor cannot
know.)"""
LB, GATEWAY_1, GATEWAY_2, KAFKA, REDIS = 26080, 26001, 26002, 26092, 26379
#: gateway-1's operator listener (docker/compose.yaml): /metrics is never on the public port.
GATEWAY_1_OPS = 26101
ENV = {
    "ODDSTREAM_LB_PORT": str(LB),
    "ODDSTREAM_GATEWAY_1_PORT": str(GATEWAY_1),
    "ODDSTREAM_GATEWAY_2_PORT": str(GATEWAY_2),
    "ODDSTREAM_KAFKA_PORT": str(KAFKA),
    "ODDSTREAM_KAFKA_CONTROLLER_PORT": str(KAFKA + 1),
    "ODDSTREAM_REDIS_PORT": str(REDIS),
    "ODDSTREAM_PARTITIONS": str(PARTITIONS),
    "ODDSTREAM_FEED_COMMAND": (
        f"feed synth --seed {SEED} --events {EVENTS} --rate {RATE} --limit {LIMIT}"
    ),
    "ODDSTREAM_DRAIN_S": "3",
    "ODDSTREAM_HEARTBEAT_S": "1",
}
LB_URL = f"http://127.0.0.1:{LB}"

pytestmark = pytest.mark.timeout(900)


def up(*args: str, timeout: float = 600) -> str:
    """``docker/up.sh ARGS`` with the test's ports and feed; its stdout."""
    done = subprocess.run(
        ["docker/up.sh", *args],
        cwd=ROOT,
        env={**os.environ, **ENV},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, f"docker/up.sh {' '.join(args)}:\n{done.stderr[-4000:]}"
    return done.stdout


def container(*service: str) -> str:
    """The id of a service's container (of every container, without a service)."""
    return up("ps", "-q", *service).strip()


async def docker(*args: str, timeout: float = 60) -> str:
    proc = await asyncio.create_subprocess_exec(
        "docker", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode == 0, f"docker {' '.join(args)}: {err.decode()}"
    return out.decode().strip()


@dataclass
class Stack:
    images: dict[str, str]
    up_seconds: float
    containers: dict[str, str]
    """Service -> container id, looked up before any client runs (docker-compose takes
    seconds to start, which would block the clients' event loop)."""


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    up("down")
    started = time.monotonic()
    out = up("up")
    images = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    try:
        ids = {s: container(s) for s in ("gateway-1", "books-1", "feed")}
        yield Stack(images, time.monotonic() - started, ids)
    finally:
        up("down")
    assert container() == "", "the stack was not torn down"


def test_images(stack: Stack) -> None:
    """One image for every command, non-root, with a health check and SIGTERM; only
    the runtime (no compiler, no Node.js, no pip cache) in the app image."""
    figures = {}
    for name, image in stack.images.items():
        size = subprocess.run(
            ["docker", "image", "inspect", "-f", "{{.Size}}", image],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        figures[name] = f"{int(size) / 1e6:.0f} MB"
    app = stack.images["ODDSTREAM_IMAGE"]
    inspect = json.loads(
        subprocess.run(["docker", "image", "inspect", app], capture_output=True, check=True).stdout
    )[0]["Config"]
    assert inspect["User"] == "10001:10001"
    assert inspect["StopSignal"] == "SIGTERM"
    assert inspect["Healthcheck"]["Test"]
    assert inspect["Entrypoint"] == ["oddstream"]
    probe = subprocess.run(
        [
            "docker",
            "run",
            "--rm",
            "--network",
            "host",
            "--entrypoint",
            "sh",
            app,
            "-c",
            "oddstream --help >/dev/null && ! command -v node && ! command -v gcc"
            " && test -f /opt/web/dist/index.html && echo ok",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert probe.stdout.strip() == "ok", probe.stderr
    record(images=figures, up_seconds=round(stack.up_seconds, 1))


async def connections(port: int) -> int:
    """A gateway's ``oddstream_connections`` gauge, read on its operator listener."""
    async with httpx.AsyncClient(timeout=5) as http:
        text = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
    [line] = [x for x in text.splitlines() if x.startswith("oddstream_connections ")]
    return int(float(line.split()[1]))


async def more_deltas(clients: list[ResilientClient], timeout: float = 30) -> None:
    """Until every client has applied deltas after this moment."""
    before = [c.stats.deltas for c in clients]

    def moved(c: ResilientClient, n: int) -> bool:
        return c.stats.deltas > n

    await asyncio.gather(
        *(
            c.wait_until(functools.partial(moved, c, n), timeout)
            for c, n in zip(clients, before, strict=True)
        )
    )


async def test_failover_through_the_load_balancer(stack: Stack) -> None:
    kafka, redis = f"127.0.0.1:{KAFKA}", f"redis://127.0.0.1:{REDIS}/0"
    dep = Deployment(
        kafka=kafka, redis=redis, prefix="", group="oddstream-books", scale=Scale(seed=SEED)
    )
    # Before any client starts: computing it holds the GIL for seconds, which a client
    # would take for a silent (dead) connection.
    expectation = await asyncio.to_thread(Expectation.synthetic, SEED, EVENTS, LIMIT)
    events = await dep.events(LB_URL)
    clients = dep.clients([[LB_URL]] * 6, events, sse=2, dead_after_s=3)
    await asyncio.gather(*(c.wait_connected() for c in clients))
    await more_deltas(clients)  # Snapshots, then deltas, through HAProxy.
    on_first = await connections(GATEWAY_1_OPS)
    assert on_first > 0, "HAProxy sent no client to gateway-1"

    started = time.monotonic()
    await docker("stop", stack.containers["gateway-1"])
    stop_seconds = time.monotonic() - started
    victims = [c for c in clients if c.stats.drains]
    assert len(victims) == on_first, [
        (c.name, c.stats.drains, c.connections, dict(c.stats.close_codes)) for c in clients
    ]

    def resumed(c: ResilientClient) -> bool:
        return c.connections >= 2 and c.connected_to is not None

    await asyncio.gather(*(c.wait_until(functools.partial(resumed, c)) for c in victims))
    await more_deltas(clients)  # Resumed on gateway-2, deltas flow again.

    feed = stack.containers["feed"]
    running = await docker("inspect", "-f", "{{.State.Running}}", feed)
    assert running == "true", "the feed ended before the processor was killed: make it longer"
    await docker("kill", stack.containers["books-1"])
    feed_exit = await docker("wait", feed, timeout=120)
    assert feed_exit == "0"

    verdict = await dep.finish(
        "compose: gateway docker stop + books docker kill", clients, [LB_URL], expectation
    )
    assert_passed(verdict)
    assert verdict.gaps == 0, verdict.details
    assert all(c.stats.drains == 1 for c in victims)
    assert sum(c.stats.drain_position_mismatches for c in clients) == 0
    assert all(c.stats.close_codes[4000] == 1 for c in victims if isinstance(c, WsClient))
    record(
        failover={
            "clients": verdict.clients,
            "sse_clients": 2,
            "moved_by_docker_stop": len(victims),
            "docker_stop_seconds": round(stop_seconds, 1),
            "deltas": verdict.deltas,
            "gaps": verdict.gaps,
            "resets": verdict.resets,
            "duplicates": verdict.duplicates,
            "divergences": verdict.divergences,
            "wrong_states": verdict.wrong_states,
            "states_checked": verdict.states_checked,
            "reconnects": verdict.reconnects,
            "p99_lag_ms": verdict.p99_lag_ms,
            "worst_lag_ms": verdict.worst_lag_ms,
        }
    )


def record(**figures: object) -> None:
    FIGURES.parent.mkdir(parents=True, exist_ok=True)
    current = json.loads(FIGURES.read_text()) if FIGURES.exists() else {}
    current.update(figures)
    FIGURES.write_text(json.dumps(current, indent=2) + "\n")
    print(json.dumps(figures, indent=2))
