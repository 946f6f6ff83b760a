"""Start-up: a bad flag or setting stops the CLI with a message naming it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from oddstream.options import DevSettings, FeedSettings, load
from server.settings import SettingsError


@pytest.mark.parametrize(
    ("args", "env", "named"),
    [
        (["dev", "--port", "70000"], {}, "--port"),
        (["dev", "--rate", "-1"], {}, "--rate"),
        (["dev"], {"ODDSTREAM_EVENTS": "many"}, "ODDSTREAM_EVENTS"),
        (["dev"], {"ODDSTREAM_HEARTBEAT_S": "0"}, "ODDSTREAM_HEARTBEAT_S"),
        (["gateway"], {"ODDSTREAM_REDIS": "http://x"}, "ODDSTREAM_REDIS"),
        (["gateway"], {}, "--redis"),
        (["books", "--redis", "redis://127.0.0.1:1/0"], {}, "--kafka"),
        (["dev", "--queue-frames", "64", "--conflate-after-frames", "64"], {}, "--conflate"),
    ],
)
def test_bad_setting_stops_startup_naming_it(
    args: list[str], env: dict[str, str], named: str
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "oddstream.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", **env},
    )
    assert result.returncode == 2
    assert named in result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_flag_is_refused() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "oddstream.cli", "dev", "--colour", "red"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "--colour" in result.stderr


def test_flags_override_environment() -> None:
    env = {"ODDSTREAM_PORT": "9000", "ODDSTREAM_SEED": "7"}
    settings = load(DevSettings, {"port": "9001"}, env)
    assert (settings.server.port, settings.seed) == (9001, 7)
    with pytest.raises(SettingsError, match="ODDSTREAM_KAFKA"):
        load(FeedSettings, {}, {"ODDSTREAM_KAFKA": "nohostport"})
