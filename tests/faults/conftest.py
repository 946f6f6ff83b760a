"""Fixtures of the fault suite, and the table it prints at the end of the run.

The services come from ``ODDSTREAM_KAFKA`` / ``ODDSTREAM_REDIS`` exactly as for the
integration tests (a missing one fails the test, never skips it).
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Generator

import pytest

from loadtest.e2e import drop_topics
from tests.faults import report
from tests.faults.checker import Verdict
from tests.faults.deploy import Deployment, Scale
from tests.harness import isolated
from tests.integration.conftest import kafka_bootstrap, redis_url
from tests.integration.procs import processes

__all__ = ["deployment", "kafka_bootstrap", "redis_url"]

# Redis databases of this suite (others belong to the integration tests). A Redis restart
# empties them all anyway; each deployment flushes its own first.
_DB = itertools.cycle(range(8, 16))


@pytest.fixture
async def deployment(kafka_bootstrap: str, redis_url: str) -> AsyncIterator[Deployment]:
    """An isolated deployment (its own topics, consumer group and Redis database); every
    process it starts is killed at the end if still running."""
    space = await isolated(kafka_bootstrap, redis_url, next(_DB), "f")
    async with processes() as procs:
        try:
            yield Deployment(**vars(space), procs=procs, scale=Scale.load())
        finally:
            # Captured by pytest: shown with a failure, dropped otherwise.
            for p in procs:
                print(f"--- {p.name} (exit {p.proc.returncode}), last lines:\n{p.output()}")
    await drop_topics(kafka_bootstrap, space.prefix)


_FIRST_ROW = pytest.StashKey[int]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    item.stash[_FIRST_ROW] = len(report.ROWS)
    return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A scenario that fails outside its check (a process that died, an assertion after
    the check) is marked in the table too, with pytest's reason."""
    rep = yield
    scenario = "deployment" in getattr(item, "fixturenames", ())
    if rep.when == "call" and rep.failed and scenario and _FIRST_ROW in item.stash:
        reason = call.excinfo.exconly().splitlines()[0][:300] if call.excinfo else "failed"
        rows = report.ROWS[item.stash[_FIRST_ROW] :]
        if not rows:
            rows = [Verdict(item.name.removeprefix("test_").replace("_", " "))]
            report.record(rows[0])
        for row in rows:
            row.error = row.error or reason
    return rep


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not report.ROWS:
        return
    terminalreporter.write_sep("=", "fault suite")
    terminalreporter.write_line(report.table(report.ROWS))
    for note in report.notes(report.ROWS):
        terminalreporter.write_line(f"- {note}")
    path = report.write(report.ROWS)
    terminalreporter.write_line(f"(written to {path})")
