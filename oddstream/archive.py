"""``oddstream archive``: the ``deltas`` topic in; MySQL history out (``docs/data.md``).
SIGTERM/SIGINT: finish the batch, leave the group."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Iterable

from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from archive.consumer import ArchiveConfig, ArchiveRunner, ArchiveStats
from archive.db import ArchiveError, MysqlUrl
from oddstream import topics
from oddstream.ops import operator_listener
from oddstream.options import ArchiveSettings
from oddstream.process import Failed

log = logging.getLogger("oddstream")

#: Seconds between two progress lines in the log.
REPORT_S = 5.0


async def main(settings: ArchiveSettings) -> None:
    if not settings.mysql:
        raise Failed(2, "invalid setting mysql (--mysql / ODDSTREAM_MYSQL): required by archive")
    await topics.ensure(settings, adopt=True)
    runner = ArchiveRunner(
        settings.kafka,
        MysqlUrl.parse(settings.mysql),
        topics.names(settings).deltas,
        ArchiveConfig(
            group_id=settings.group,
            max_records=settings.archive_batch,
            mysql_wait_s=settings.mysql_wait_s,
        ),
    )
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, runner.stop)

    async def report() -> None:
        while True:
            await asyncio.sleep(REPORT_S)  # Progress cadence, not synchronisation.
            log.info("archive: %s", runner.stats.line())

    reporter = loop.create_task(report())
    ops = operator_listener(
        "archive",
        settings.ops_host,
        settings.ops_port,
        lambda: runner.stats.rebalances > 0,  # Assigned in its group (MySQL answered).
        [ArchiveCollector(runner.stats)],
    )
    print(f"oddstream: archive in group {settings.group} on {settings.kafka}", flush=True)
    try:
        async with ops:
            await runner.run()
    except ArchiveError as exc:
        raise Failed(1, f"archive: {exc} (--mysql / ODDSTREAM_MYSQL)") from None
    finally:
        reporter.cancel()
        await asyncio.gather(reporter, return_exceptions=True)
        log.info("archive: stopped: %s", runner.stats.line())


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
