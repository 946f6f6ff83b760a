"""Shared fixtures of the integration tests: where the real services are.

``scripts/services.sh up`` starts Kafka and Redis and prints ``ODDSTREAM_KAFKA`` and
``ODDSTREAM_REDIS``; a developer's own stack may set them instead. A missing variable
*fails* the test that needs it: integration tests are never silently skipped (in CI a
skip would look like a pass).
"""

from __future__ import annotations

import os

import pytest

_HOW = 'start the services with: set -a; eval "$(scripts/services.sh up)"; set +a'


def _required(name: str, example: str) -> str:
    value = os.environ.get(name, "").strip()
    if not value:
        pytest.fail(
            f"{name} is not set: integration tests need the real service "
            f"(e.g. {name}={example}); {_HOW}",
            pytrace=False,
        )
    return value


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The Redis URL from ``ODDSTREAM_REDIS``, e.g. ``redis://127.0.0.1:16379/0``."""
    return _required("ODDSTREAM_REDIS", "redis://127.0.0.1:16379/0")


@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    """Kafka bootstrap servers from ``ODDSTREAM_KAFKA``, e.g. ``127.0.0.1:19092``."""
    return _required("ODDSTREAM_KAFKA", "127.0.0.1:19092")
