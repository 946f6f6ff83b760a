"""``oddstream archive``: the ``deltas`` topic in; MySQL history out (``docs/data.md``).
SIGTERM/SIGINT: finish the batch, leave the group."""

from __future__ import annotations

from archive.consumer import ArchiveConfig, ArchiveRunner
from archive.db import ArchiveError, MysqlUrl
from oddstream import topics
from oddstream.options import ArchiveSettings
from oddstream.process import Failed, stoppable


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
    async with stoppable("archive", runner.stop, runner.stats.line):
        print(f"oddstream: archive in group {settings.group} on {settings.kafka}", flush=True)
        try:
            await runner.run()
        except ArchiveError as exc:
            raise Failed(1, f"archive: {exc} (--mysql / ODDSTREAM_MYSQL)") from None
