"""``oddstream archive``: the ``deltas`` topic in; MySQL history out (``docs/data.md``).
SIGTERM/SIGINT: finish the batch, leave the group. With ``--prune-before MS``: the
retention job instead (:mod:`archive.retention`), then exit."""

from __future__ import annotations

from archive.consumer import ArchiveConfig, ArchiveRunner
from archive.db import DISCONNECTED, ArchiveError, MysqlUrl
from archive.retention import prune
from oddstream import topics
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
    async with stoppable("archive", runner.stop, runner.stats.line):
        print(f"oddstream: archive in group {settings.group} on {settings.kafka}", flush=True)
        try:
            await runner.run()
        except ArchiveError as exc:
            raise Failed(1, f"archive: {exc} (--mysql / ODDSTREAM_MYSQL)") from None


async def _prune(url: MysqlUrl, before_ts: int) -> None:
    try:
        stats = await prune(url, before_ts)
    except DISCONNECTED as exc:
        raise Failed(1, f"archive: MySQL unreachable while pruning: {exc}") from None
    print(f"oddstream: archive pruned before {before_ts}: {stats.line()}", flush=True)
