"""The repository stands alone: its test data is inside it, intact, and nothing reads a
folder beside the checkout."""

from __future__ import annotations

import hashlib
import importlib.util
import subprocess
from pathlib import Path

import pytest

from tests.data import FEEDS

ROOT = Path(__file__).parents[2]
#: Not written as one literal, so that this file does not match its own search.
OUTSIDE = "../" + "shared"
#: Files of the data folder that describe the data rather than being it.
META = {"README.md", "SHA256SUMS"}


def _sums() -> dict[str, str]:
    sums: dict[str, str] = {}
    for line in (FEEDS / "SHA256SUMS").read_text().splitlines():
        digest, _, name = line.partition("  ")
        sums[name.removeprefix("./")] = digest
    return sums


def test_every_recording_matches_its_checksum() -> None:
    sums = _sums()
    assert len(sums) >= 17
    for name, digest in sums.items():
        data = (FEEDS / name).read_bytes()
        assert hashlib.sha256(data).hexdigest() == digest, name


def test_every_data_file_is_listed_and_licensed() -> None:
    listed = set(_sums())
    present = {
        p.relative_to(FEEDS).as_posix()
        for p in FEEDS.rglob("*")
        if p.is_file() and p.name not in META and not p.name.startswith("LICENSE.")
    }
    assert present == listed
    licences = {p.name for p in FEEDS.glob("LICENSE.*")}
    readme = (FEEDS / "README.md").read_text()
    for licence in licences:
        assert licence.removeprefix("LICENSE.").split("+")[1] in readme, licence
    # Every source named in the file names has its licence beside the files.
    prefixes = {name.split("/")[-1].split("_")[0] for name in listed}
    owners = {
        "bflw": "betfair",
        "flumine": "flumine",
        "nautilus": "nautilus_trader",
        "go-uof-sdk": "go-uof-sdk",
    }
    for prefix in prefixes:
        assert any(lic.endswith("+" + owners[prefix]) for lic in licences), prefix


def _tracked_files() -> list[Path]:
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True, timeout=30
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.fail("the repository's tracked files cannot be listed (git ls-files failed)")
    return [ROOT / name for name in out.decode().split("\0") if name]


def test_no_tracked_file_refers_to_a_folder_beside_the_checkout() -> None:
    needle = OUTSIDE.encode()
    offenders = [
        str(path.relative_to(ROOT))
        for path in _tracked_files()
        if path.is_file() and needle in path.read_bytes()
    ]
    assert offenders == []


@pytest.mark.parametrize("module", ["locust", "broadcaster"])
def test_the_documented_load_tools_come_with_the_dev_extras(module: str) -> None:
    # README "Load testing": `pip install -e '.[load]'` (included in `.[dev]`, which the
    # test command installs) must bring every tool its commands run.
    assert importlib.util.find_spec(module) is not None, f"{module} is not installed"
