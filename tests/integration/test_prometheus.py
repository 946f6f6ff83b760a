"""A real Prometheus (Debian's, ``scripts/prometheus.sh``) scraping a distributed run:
a feed, two book processors and two gateways on real Kafka and Redis, each on its own
operator port. Every target is up, the alert rules of ``k8s/observability`` load, and a
feed that goes silent fires ``OddstreamFeedStale`` (docs/observability.md#alerts)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import shutil
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import yaml

from feeds.replay import write_jsonl
from feeds.synthetic import MatchDay
from tests.harness import PARTITIONS, Space, free_ports, isolated
from tests.integration.procs import processes, start

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "k8s" / "observability" / "prometheusrule.yaml"

#: Feed messages sent before the silence, 15 ms of feed time apart (15 s at speed 1); the
#: feed logs a progress line at the 1000th.
SENT, GAP_MS = 1000, 15
#: The test's staleness: the rule's 30 s threshold and 1 min ``for:`` made short.
STALE_S, FOR = 3, "1s"
DEADLINE_S = 45


def rules(path: Path) -> None:
    """The PrometheusRule's spec as a rule file, with the feed-stale alert made quick."""
    spec = yaml.safe_load(RULES.read_text())["spec"]
    [stale] = [r for g in spec["groups"] for r in g["rules"] if r["alert"] == "OddstreamFeedStale"]
    assert "> 30" in stale["expr"]
    stale["expr"] = stale["expr"].replace("> 30", f"> {STALE_S}")
    stale["for"] = FOR
    path.write_text(yaml.safe_dump(spec))


def silent_feed(path: Path) -> None:
    """A recording that speaks for SENT x GAP_MS of feed time, then falls silent for an
    hour (its last message is due then): the replaying process stays up, producing
    nothing."""
    now_ms = int(time.time() * 1000)
    messages = [
        msgspec.structs.replace(m, ts=now_ms + i * GAP_MS)
        for i, m in enumerate(itertools.islice(MatchDay(seed=4, events=2), SENT + 1))
    ]
    messages[-1] = msgspec.structs.replace(messages[-1], ts=now_ms + 3_600_000)
    write_jsonl(path, messages)


@contextlib.asynccontextmanager
async def prometheus(
    tmp: Path, port: int, jobs: dict[str, int]
) -> AsyncIterator[httpx.AsyncClient]:
    """Prometheus on 127.0.0.1:``port`` scraping ``jobs`` (name -> operator port) every
    second, evaluating the rules every second, its data in ``tmp``."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("prometheus not found: install it with scripts/prometheus.sh", pytrace=False)
    rules(tmp / "rules.yml")
    config: dict[str, Any] = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "900ms", "evaluation_interval": "1s"},
        "rule_files": ["rules.yml"],
        "scrape_configs": [
            {"job_name": job, "static_configs": [{"targets": [f"127.0.0.1:{p}"]}]}
            for job, p in jobs.items()
        ],
    }
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
    with (tmp / "prometheus.log").open("wb") as log:
        proc = await asyncio.create_subprocess_exec(
            binary, "--config.file", str(tmp / "prometheus.yml"),
            "--storage.tsdb.path", str(tmp / "data"),
            "--web.listen-address", f"127.0.0.1:{port}", "--log.level", "warn",
            stdout=log, stderr=subprocess.STDOUT, cwd=tmp,
        )  # fmt: skip
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as api:
            await until(api, "/-/ready", lambda r: r.status_code == 200, "Prometheus ready")
            yield api
    finally:
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()


async def until(api: httpx.AsyncClient, path: str, ok: Any, what: str) -> httpx.Response:
    """GET ``path`` until ``ok(response)``: another process's state, with no event to
    await, polled every 0.5 s within DEADLINE_S."""
    last: object = None
    try:
        async with asyncio.timeout(DEADLINE_S):
            while True:
                with contextlib.suppress(httpx.TransportError):
                    last = response = await api.get(path)
                    if ok(response):
                        return response
                    last = response.text[:2000]
                await asyncio.sleep(0.5)
    except TimeoutError:
        raise AssertionError(f"{what}: not within {DEADLINE_S} s; last answer: {last}") from None


def firing(response: httpx.Response, alert: str) -> list[dict[str, Any]]:
    alerts = response.json()["data"]["alerts"]
    return [a for a in alerts if a["labels"]["alertname"] == alert and a["state"] == "firing"]


async def test_prometheus_scrapes_the_distributed_run_and_the_silent_feed_fires(
    kafka_bootstrap: str, redis_url: str, tmp_path: Path
) -> None:
    space: Space = await isolated(kafka_bootstrap, redis_url, 2, "p")
    recording = tmp_path / "day.jsonl"
    silent_feed(recording)
    prom_port, *ops = free_ports(6)
    names = ["feed", "books-1", "books-2", "gateway-1", "gateway-2"]
    jobs = dict(zip(names, ops, strict=True))
    feed_args = [
        "feed", "replay", str(recording), "--speed", "1", "--kafka", space.kafka,
        "--topic-prefix", space.prefix, "--partitions", str(PARTITIONS),
    ]  # fmt: skip
    async with processes() as procs, prometheus(tmp_path, prom_port, jobs) as api:
        for i in (1, 2):
            books = space.books_args("--ops-port", str(jobs[f"books-{i}"]))
            await (await start(procs, f"books-{i}", books)).wait_line("books in group")
        for i in (1, 2):
            gateway = space.gateway_args("--ops-port", str(jobs[f"gateway-{i}"]))
            await (await start(procs, f"gateway-{i}", gateway)).url()
        feed = await start(procs, "feed", [*feed_args, "--ops-port", str(jobs["feed"])])

        def all_up(r: httpx.Response) -> bool:
            targets = r.json()["data"]["activeTargets"]
            return sorted(t["labels"]["job"] for t in targets if t["health"] == "up") == sorted(
                names
            )

        await until(api, "/api/v1/targets", all_up, "every target up")
        loaded = (await api.get("/api/v1/rules")).json()["data"]["groups"]
        alerts = {r["name"]: r for g in loaded for r in g["rules"] if r["type"] == "alerting"}
        assert len(alerts) == 5 and all(r["health"] == "ok" for r in alerts.values()), alerts
        # While the feed speaks: produced records counted, and nothing stale.
        await until(
            api,
            "/api/v1/query?query=sum(oddstream_feed_produced_total)",
            lambda r: (
                r.json()["data"]["result"] and float(r.json()["data"]["result"][0]["value"][1]) > 0
            ),
            "the feed's produced records scraped",
        )
        assert not firing(await api.get("/api/v1/alerts"), "OddstreamFeedStale")
        # Then silent (the recording's next message is an hour away): stale, and fired
        # while the feed process is still up and scraped.
        await feed.wait_line(f"sent {SENT} messages", timeout=DEADLINE_S)
        fired = await until(
            api, "/api/v1/alerts", lambda r: firing(r, "OddstreamFeedStale"), "feed-stale fired"
        )
        [alert] = firing(fired, "OddstreamFeedStale")
        assert alert["labels"]["job"] == "feed"
        assert feed.proc.returncode is None
        assert await value(api, 'up{job="feed"}') == 1
        # The feed's own metrics (docs/observability.md, "Feed"): every message counted on
        # its topic, the recording read, the last send seconds ago.
        assert await value(api, "sum(oddstream_feed_produced_total)") == SENT
        assert await value(api, 'oddstream_feed_produced_total{topic="deadletter"}') == 0
        assert 0 < await value(api, "oddstream_feed_replay_progress_ratio") <= 1
        assert await value(api, "time() - oddstream_feed_last_produced_timestamp_seconds") > STALE_S
        # The pipeline's stages reached Prometheus from the books and the gateways.
        stages = await api.get(
            "/api/v1/query", params={"query": "sum by (stage) (oddstream_stage_seconds_count)"}
        )
        seen = {r["metric"]["stage"] for r in stages.json()["data"]["result"]}
        assert {"feed_send", "kafka", "books", "redis", "pipeline"} <= seen, seen


async def value(api: httpx.AsyncClient, query: str) -> float:
    """The one value of an instant query."""
    [result] = (await api.get("/api/v1/query", params={"query": query})).json()["data"]["result"]
    return float(result["value"][1])
