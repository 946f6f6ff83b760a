"""Every Python package the project installs goes into the container image too: the
Dockerfile's wheel stage copies it, ``.dockerignore`` lets it into the build context and
``docker/build.sh`` hashes it into the image tag (a package added to ``pyproject.toml``
alone would build an image that cannot start)."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
PACKAGES = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]


@pytest.mark.parametrize("package", PACKAGES)
def test_the_image_carries_every_package(package: str) -> None:
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    assert f"COPY {package}/ {package}/" in dockerfile
    assert f"!{package}\n" in (ROOT / ".dockerignore").read_text()
    hashed = next(
        line for line in (ROOT / "docker" / "build.sh").read_text().splitlines() if "app=" in line
    )
    assert f" {package} " in hashed
