"""Connecting to MySQL (or MariaDB) with asyncmy: the URL, the errors, the pool.

The one place the archive names its driver. ``mysql://user:password@host:port/database``
is the only URL form; every network wait has the timeouts set here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlparse

import asyncmy
from asyncmy import errors

#: Seconds to connect, and to wait for any one query's answer.
CONNECT_TIMEOUT_S = 5
READ_TIMEOUT_S = 60

#: What a lost or refused connection raises (a server restart, a network cut): worth
#: reconnecting and retrying. SQL errors (a ``ProgrammingError``...) are not.
DISCONNECTED: tuple[type[BaseException], ...] = (
    errors.OperationalError,
    errors.InterfaceError,
    ConnectionError,
    OSError,
    TimeoutError,
)


class ArchiveError(Exception):
    """The archive cannot go on; ``retriable`` when waiting for the database may help."""

    def __init__(self, message: str, *, retriable: bool = False):
        super().__init__(message)
        self.retriable = retriable


@dataclass(frozen=True, slots=True)
class MysqlUrl:
    host: str
    port: int
    user: str
    password: str
    database: str

    @classmethod
    def parse(cls, url: str) -> MysqlUrl:
        """Raises :class:`ValueError` naming what is wrong."""
        u = urlparse(url)
        if u.scheme != "mysql" or not u.hostname or not u.path.strip("/"):
            raise ValueError(f"expected mysql://user:password@host:port/database, got {url!r}")
        return cls(
            host=u.hostname,
            port=u.port or 3306,
            user=unquote(u.username or ""),
            password=unquote(u.password or ""),
            database=u.path.strip("/"),
        )

    def with_database(self, database: str) -> MysqlUrl:
        return MysqlUrl(self.host, self.port, self.user, self.password, database)

    def kwargs(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "port": self.port,
            "user": self.user,
            "password": self.password,
            "database": self.database,
            "charset": "utf8mb4",
            "connect_timeout": CONNECT_TIMEOUT_S,
            "read_timeout": READ_TIMEOUT_S,
        }


def mysql_ok(url: str) -> bool:
    """Whether ``url`` is a MySQL URL the archive can use (for the settings table)."""
    try:
        MysqlUrl.parse(url)
    except ValueError:
        return False
    return True


async def connect(url: MysqlUrl, *, autocommit: bool = False) -> Any:
    """One connection. Raises one of :data:`DISCONNECTED` when the server is not there."""
    return await asyncmy.connect(autocommit=autocommit, **url.kwargs())


async def create_pool(url: MysqlUrl, *, size: int) -> Any:
    """A pool of at most ``size`` connections (the read side's bound)."""
    return await asyncmy.create_pool(minsize=1, maxsize=size, autocommit=True, **url.kwargs())
