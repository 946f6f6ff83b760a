"""The archive's schema: ordered SQL files in ``archive/migrations`` applied in order.

``NNNN_name.sql`` files run in name order, each once; ``schema_migrations`` lists the
versions applied. Statements are separated by ``;`` at the end of a line and must be safe
to re-run (MySQL commits DDL implicitly, so a crash may fall before the version row)::

    python -m archive.migrate --mysql mysql://user:password@host:port/database
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from archive.db import DISCONNECTED, MysqlUrl, connect

MIGRATIONS = Path(__file__).resolve().parent / "migrations"

_TABLE = (
    "CREATE TABLE IF NOT EXISTS schema_migrations ("
    " version VARCHAR(255) NOT NULL PRIMARY KEY, applied_ts BIGINT NOT NULL"
    ") ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin"
)


def migrations() -> list[tuple[str, list[str]]]:
    """(version, statements) of every migration file, in order."""
    out = []
    for path in sorted(MIGRATIONS.glob("[0-9][0-9][0-9][0-9]_*.sql")):
        lines = [ln for ln in path.read_text("utf-8").splitlines() if not ln.startswith("--")]
        statements = [s.strip() for s in "\n".join(lines).split(";\n") if s.strip()]
        out.append((path.stem, [s.rstrip(";") for s in statements]))
    return out


async def migrate(conn: Any) -> list[str]:
    """Apply what is missing on ``conn`` (autocommit); the versions applied now."""
    applied_now = []
    async with conn.cursor() as cur:
        # "Already exists" notes of re-runnable DDL are expected, not worth a warning.
        await cur.execute("SET SESSION sql_notes = 0")
        await cur.execute(_TABLE)
        await cur.execute("SELECT version FROM schema_migrations")
        done = {row[0] for row in await cur.fetchall()}
        for version, statements in migrations():
            if version in done:
                continue
            for statement in statements:
                await cur.execute(statement)
            await cur.execute(
                "INSERT IGNORE INTO schema_migrations VALUES (%s, UNIX_TIMESTAMP() * 1000)",
                (version,),
            )
            applied_now.append(version)
    return applied_now


async def _main(url: str) -> int:
    try:
        conn = await connect(MysqlUrl.parse(url), autocommit=True)
    except DISCONNECTED as exc:
        print(f"archive.migrate: cannot connect: {exc}", file=sys.stderr)
        return 1
    try:
        applied = await migrate(conn)
    finally:
        conn.close()
    print(f"archive.migrate: applied {', '.join(applied) or 'nothing (current)'}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m archive.migrate", description=__doc__)
    parser.add_argument("--mysql", required=True, help="mysql://user:password@host:port/db")
    args = parser.parse_args(argv)
    try:
        return asyncio.run(_main(args.mysql))
    except ValueError as exc:
        print(f"archive.migrate: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
