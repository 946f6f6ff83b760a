"""``oddstream archive``: the ``deltas`` topic in; MySQL history out (``docs/data.md``).
SIGTERM/SIGINT: finish the batch, leave the group. With ``--prune-before MS``: the
retention job instead (:mod:`archive.retention`), then exit."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from archive.consumer import ArchiveConfig, ArchiveRunner, ArchiveStats
from archive.db import DISCONNECTED, ArchiveError, MysqlUrl
from archive.retention import prune
from oddstream import topics
from oddstream.ops import operator_listener
from oddstream.options import ArchiveSettings
from oddstream.process import Failed, stoppable


async def main(settings: ArchiveSettings) -> None:
    if not settings.mysql:
        raise Failed(2, "invalid setting mysql (--mysql / ODDSTREAM_MYSQL): required by archive")
    url = MysqlUrl.parse(settings.mysql)
    if settings.prune_before:
        await _prune(url, settings.prune_before)
        return
    await topics.ensure(settings, adopt=True)
    runner = ArchiveRunner(
        settings.kafka,
        url,
        topics.names(settings).deltas,
        ArchiveConfig(
            group_id=settings.group,
            max_records=settings.archive_batch,
            mysql_wait_s=settings.mysql_wait_s,
        ),
    )
    ops = operator_listener(
        "archive",
        settings.ops_host,
        settings.ops_port,
        lambda: runner.stats.rebalances > 0,  # Assigned in its group (MySQL answered).
        [ArchiveCollector(runner.stats)],
    )
    async with stoppable("archive", runner.stop, runner.stats.line):
        print(f"oddstream: archive in group {settings.group} on {settings.kafka}", flush=True)
        try:
            async with ops:
                await runner.run()
        except ArchiveError as exc:
            raise Failed(1, f"archive: {exc} (--mysql / ODDSTREAM_MYSQL)") from None


async def _prune(url: MysqlUrl, before_ts: int) -> None:
    try:
        stats = await prune(url, before_ts)
    except DISCONNECTED as exc:
        raise Failed(1, f"archive: MySQL unreachable while pruning: {exc}") from None
    print(f"oddstream: archive pruned before {before_ts}: {stats.line()}", flush=True)


class ArchiveCollector(Collector):
    """The archive's counts as of the scrape (docs/observability.md, "Archive")."""

    HELP = {
        "records": "market messages stored in MySQL (a message read twice counts twice)",
        "batches": "MySQL transactions committed (rows and offsets together)",
        "malformed": "records of the deltas topic that are not market messages, skipped",
        "gaps": "stored messages whose seq does not follow the last one stored for the market",
        "retries": "MySQL batches retried while it was unreachable",
        "rebalances": "partition assignments",
    }

    def __init__(self, stats: ArchiveStats):
        self._stats = stats

    def collect(self) -> Iterable[Metric]:
        for name, doc in self.HELP.items():
            value = getattr(self._stats, name)
            yield CounterMetricFamily(f"oddstream_archive_{name}_total", doc, value=value)
