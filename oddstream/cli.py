"""The ``oddstream`` command: ``dev`` (everything in one process), ``feed``, ``books``,
``archive`` and ``gateway`` (the distributed mode).

Each role's flags come from the settings table (:mod:`oddstream.options`); a role's
wiring is imported only when it runs, so a gateway process never imports Kafka code. A bad
flag or setting stops start-up with a message naming it, and exit status 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Coroutine, Sequence
from typing import Any

from channels.broker import BrokerError
from channels.fencing import FencedError
from channels.store import StoreError
from oddstream import logs, options
from oddstream.process import Failed, run
from server.settings import SettingsError

log = logging.getLogger("oddstream")

HELP: dict[options.Role, str] = {
    "dev": "everything in one process: synthetic feed, books, gateway",
    "gateway": "a gateway: Redis in; WebSocket, SSE and REST out",
    "books": "a book processor: Kafka in; Redis and Kafka out",
    "archive": "the archive: the deltas topic in; MySQL history out",
    "feed": "produce a feed to Kafka, or record one from it",
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="oddstream", description="Real-time push server for live sports-betting odds."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for role in options.ROLES:
        p = sub.add_parser(role, help=HELP[role])
        for q in _feed_commands(p) if role == "feed" else [p]:
            options.add_flags(q, role)
    return parser


def _feed_commands(feed: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """The ``feed`` subcommands and their own arguments; returns them for the settings
    flags."""
    sub = feed.add_subparsers(dest="feed_command", required=True)
    synth = sub.add_parser("synth", help="the synthetic match day, paced at --rate")
    replay = sub.add_parser("replay", help="replay a recording at --speed x its pace")
    replay.add_argument("path", help="the recording")
    replay.add_argument(
        "--format", default="jsonl", help="jsonl (default), or another reader (betfair, uof)"
    )
    rec = sub.add_parser("record", help="write the feed topics to a JSON-lines file")
    rec.add_argument("path", help="the file to write")
    rec.add_argument("--idle-s", type=float, default=2.0, help="stop after this long idle")
    for p in (synth, replay, rec):
        p.add_argument("--limit", type=int, help="stop after this many messages")
    return [synth, replay, rec]


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    role: options.Role = args.command
    flags: dict[str, Any] = vars(args)
    try:
        settings = options.load_role(role, flags)
    except SettingsError as exc:
        print(f"oddstream: {exc}", file=sys.stderr)
        return 2
    logs.setup(role, settings.log_level, settings.log_format)
    if isinstance(settings, options.GatewaySettings):
        from oddstream import workers

        count = workers.count(settings.workers)
        if count > 1:
            return workers.supervise(settings, count)
    return role_status(_main(settings, args))


def role_status(main: Coroutine[Any, Any, None]) -> int:
    """Run a role's ``main``; its exit status, with a start-up failure logged."""
    try:
        return run(main)
    except Failed as exc:
        log.error("%s", exc)
        return exc.status
    except (StoreError, BrokerError, FencedError) as exc:
        log.error("%s", exc)
        return 1


async def _main(settings: options.RoleSettings, args: argparse.Namespace) -> None:
    # Each role's wiring is imported here, when it runs: a gateway never loads aiokafka.
    if isinstance(settings, options.DevSettings):
        from oddstream import dev

        await dev.main(settings)
    elif isinstance(settings, options.GatewaySettings):
        from oddstream import gateway

        await gateway.main(settings)
    elif isinstance(settings, options.BooksSettings):
        from oddstream import books

        await books.main(settings)
    elif isinstance(settings, options.ArchiveSettings):
        from oddstream import archive

        await archive.main(settings)
    else:
        from oddstream import feed

        await feed.main(settings, args)


if __name__ == "__main__":
    sys.exit(main())
