"""The deployment tests run through ``scripts/deploy-test.sh`` (called by
``scripts/test.sh``), which first installs and starts what they need (Docker, helm,
actionlint, the images) and sets ``ODDSTREAM_DEPLOY_TEST``. A plain ``pytest`` run
leaves this folder to that command instead of running it twice or without its tools."""

from __future__ import annotations

import os
from pathlib import Path


def pytest_ignore_collect(collection_path: Path) -> bool | None:
    if os.environ.get("ODDSTREAM_DEPLOY_TEST") == "1":
        return None
    return collection_path.suffix == ".py" and collection_path.name.startswith("test_")
