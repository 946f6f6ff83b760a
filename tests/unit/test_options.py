"""The settings table: every gateway setting has one row, every row loads and checks, the
docs are what the table generates, and a gateway process loads no Kafka code."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from oddstream import options
from oddstream.options import (
    OPTIONS,
    BooksSettings,
    DevSettings,
    GatewaySettings,
    load,
)
from server.settings import Settings, SettingsError


def test_every_gateway_setting_has_one_row() -> None:
    names = [o.name for o in OPTIONS]
    assert len(names) == len(set(names))
    missing = {f.name for f in dataclasses.fields(Settings)} - set(names)
    assert not missing, f"add a row to oddstream/options.py OPTIONS for {sorted(missing)}"


def test_every_role_field_is_a_row_of_that_role() -> None:
    for role, kind in options.TYPES.items():
        fields = {f.name for f in dataclasses.fields(kind)} - {"server"}
        rows = {o.name for o in options.of(role)}
        if "server" in {f.name for f in dataclasses.fields(kind)}:
            rows -= {f.name for f in dataclasses.fields(Settings)}
        assert fields == rows, role


@pytest.mark.parametrize(
    ("kind", "env", "named"),
    [
        (DevSettings, {"ODDSTREAM_PORT": "70000"}, "ODDSTREAM_PORT"),
        (DevSettings, {"ODDSTREAM_HEARTBEAT_S": "x"}, "ODDSTREAM_HEARTBEAT_S"),
        (DevSettings, {"ODDSTREAM_FEED": "nope"}, "ODDSTREAM_FEED"),
        (DevSettings, {"ODDSTREAM_WEB": "on"}, "ODDSTREAM_WEB"),
        (GatewaySettings, {}, "ODDSTREAM_REDIS"),
        (BooksSettings, {"ODDSTREAM_REDIS": "redis://h:1/0"}, "ODDSTREAM_KAFKA"),
        (BooksSettings, {"ODDSTREAM_KAFKA": "h:1", "ODDSTREAM_REDIS": "x"}, "ODDSTREAM_REDIS"),
    ],
)
def test_a_wrong_setting_is_named(
    kind: type[options.RoleSettings], env: dict[str, str], named: str
) -> None:
    with pytest.raises(SettingsError, match=named):
        load(kind, {}, env)


def test_defaults_and_roles() -> None:
    dev = load(DevSettings, {}, {})
    # A laptop's dev process opens no operator listener unless asked (two can run at once).
    assert dev.server == Settings(ops_port=0)
    assert (dev.stale_after_s, dev.feed, dev.web) == (10.0, "synth", "auto")
    # A gateway needs tokens by default (docs/auth.md): its key is the one setting it lacks.
    key = "k" * 32
    gateway = load(GatewaySettings, {"redis": "redis://127.0.0.1:1/0", "jwt_key": key}, {})
    assert gateway.server == Settings(auth="jwt", jwt_key=key)
    with pytest.raises(SettingsError, match="--jwt-key"):
        load(GatewaySettings, {"redis": "redis://127.0.0.1:1/0"}, {})
    books = load(BooksSettings, {}, {"ODDSTREAM_KAFKA": "a:1,b:2", "ODDSTREAM_REDIS": "unix:/r"})
    assert (books.group, books.history_size, books.partitions) == ("oddstream-books", 256, 6)


def test_configuration_doc_is_current() -> None:
    assert options.main(["--check"]) == 0


def test_a_gateway_process_loads_no_kafka_code() -> None:
    code = (
        "import sys, oddstream.cli, oddstream.gateway, server.app, server.serve; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'aiokafka' "
        "or m.startswith('feeds.kafka')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == "[]"


def test_a_rule_across_settings_names_the_setting_it_blames() -> None:
    with pytest.raises(SettingsError, match=r"--conflate-after-frames.*< queue_frames"):
        load(DevSettings, {"queue_frames": "64", "conflate_after_frames": "64"}, {})
    assert load(DevSettings, {"queue_frames": "64", "conflate_after_frames": "63"}, {})


def test_a_role_may_default_a_setting_its_own_way() -> None:
    option = options.Option(
        "auth",
        "who may follow what",
        frozenset({"dev", "gateway"}),
        None,
        "none",
        {"gateway": "jwt"},
    )
    assert (option.default_of("dev"), option.default_of("gateway")) == ("none", "jwt")
