"""The benchmark harness works: ``python -m loadtest.bench --quick --json PATH`` runs every
scenario in small and writes a report with every required key and sane types.

No timing is asserted (CI machines vary); only that the run completed, that messages were
delivered and measured, and that the report has the shape tools read. A peer that is not
installed (Pushpin) must appear as unavailable (nulls), never break the run. The
end-to-end scenarios run when ``ODDSTREAM_KAFKA``/``ODDSTREAM_REDIS`` are set (as
``scripts/test.sh`` sets them) and are reported as skipped otherwise.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
FANOUTS = ("ws_1k", "ws_5k", "ws_20k", "sse_1k", "sse_5k")
SCENARIOS = (*FANOUTS, "slow_mix", "e2e", "books")
REQUIRED = (
    "clients",
    "delivered_per_s",
    "deltas_per_s",
    "p50_ms",
    "p99_ms",
    "rss_kib_per_conn",
    "ceiling_per_s",
    "ratio_to_ceiling",
)
PEERS = ("centrifugo_1core", "centrifugo", "broadcaster", "pushpin")


def _number_or_none(value: Any) -> bool:
    return value is None or (isinstance(value, int | float) and not isinstance(value, bool))


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    result = subprocess.run(
        [sys.executable, "-m", "loadtest.bench", "--quick", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=280,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    data: dict[str, Any] = json.loads(out.read_text())
    return data


@pytest.mark.timeout(300)
def test_report_describes_the_machine_and_the_run(report: dict[str, Any]) -> None:
    assert report["quick"] is True
    machine = report["machine"]
    assert isinstance(machine["cores"], int) and machine["cores"] >= 1
    assert isinstance(machine["python"], str)
    assert isinstance(machine["cpu"], str)
    assert isinstance(report["versions"], dict)
    assert isinstance(report["versions"]["uvicorn"], str)
    assert "loadtest.bench" in report["command"]
    assert set(SCENARIOS) <= set(report["scenarios"])


@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", SCENARIOS)
def test_every_scenario_has_the_required_keys(report: dict[str, Any], name: str) -> None:
    scenario = report["scenarios"][name]
    for key in REQUIRED:
        assert key in scenario, key
    assert isinstance(scenario["clients"], int) and scenario["clients"] >= 0
    for key in REQUIRED[1:]:
        assert _number_or_none(scenario[key]), (key, scenario[key])
    assert isinstance(scenario["measured"], bool)
    if name in FANOUTS:
        assert set(PEERS) <= set(scenario["peers"])
    for figures in scenario["peers"].values():
        assert _number_or_none(figures["delivered_per_s"])
        assert _number_or_none(figures["p99_ms"])
        if not figures["available"]:
            assert figures["delivered_per_s"] is None
            assert figures["p99_ms"] is None


@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", FANOUTS)
def test_fanout_scenarios_were_measured(report: dict[str, Any], name: str) -> None:
    scenario = report["scenarios"][name]
    assert scenario["measured"] is True
    assert scenario["clients"] > 0
    assert scenario["delivered_per_s"] > 0
    assert scenario["deltas_per_s"] > 0
    assert scenario["ceiling_per_s"] > 0
    assert scenario["ratio_to_ceiling"] > 0
    assert scenario["p50_ms"] is not None and scenario["p99_ms"] >= scenario["p50_ms"]
    assert scenario["rss_kib_per_conn"] is not None


@pytest.mark.timeout(300)
def test_peers_run_in_the_quick_ws_and_sse_scenarios(report: dict[str, Any]) -> None:
    for name in ("ws_1k", "sse_1k"):
        peers = report["scenarios"][name]["peers"]
        broadcaster = peers["broadcaster"]
        assert broadcaster["available"] is True, broadcaster["reason"]
        assert broadcaster["delivered_per_s"] > 0
        pushpin = peers["pushpin"]
        assert pushpin["available"] or pushpin["reason"], "an unavailable peer says why"


@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", FANOUTS)
def test_every_row_says_where_it_comes_from(report: dict[str, Any], name: str) -> None:
    scenario = report["scenarios"][name]
    assert scenario["run"] and scenario["commit"]
    assert scenario["ceiling_kind"] == "ceiling_joining"
    assert scenario["systems"]["ceiling_joining"]["delivered_per_s"] > 0
    for values in scenario["systems"].values():
        if values.get("available") is not False:
            assert isinstance(values["commit"], str) and isinstance(values["dirty"], bool)


@pytest.mark.timeout(300)
def test_wire_sizes_are_measured(report: dict[str, Any]) -> None:
    sizes = report["scenarios"]["wire"]["bytes_per_delta"]
    assert 0 < sizes["msgpack"] < sizes["json"]
    assert sizes["json_deflate_takeover"] < sizes["json"]


@pytest.mark.timeout(300)
def test_distributed_scenarios_run_or_say_why_not(report: dict[str, Any]) -> None:
    configured = bool(os.environ.get("ODDSTREAM_KAFKA") and os.environ.get("ODDSTREAM_REDIS"))
    for name in ("e2e", "books"):
        scenario = report["scenarios"][name]
        if not configured:
            assert scenario["skipped"] is True
            assert scenario["measured"] is False
            assert "ODDSTREAM_KAFKA" in scenario["note"]
        else:
            assert scenario["skipped"] is False
    if configured:
        assert report["scenarios"]["e2e"]["delivered_per_s"] is not None
        assert _number_or_none(report["scenarios"]["books"]["feed_per_s"])


@pytest.mark.timeout(300)
def test_goals_are_listed_but_not_judged_in_a_quick_run(report: dict[str, Any]) -> None:
    goals = report["goals"]
    assert len(goals) == 12
    for goal in goals:
        assert isinstance(goal["goal"], str) and isinstance(goal["why"], str)
        assert goal["met"] is None


@pytest.mark.timeout(300)
def test_replay_scenario_measures_every_recording(report: dict[str, Any]) -> None:
    scenario = report["scenarios"]["replay"]
    assert scenario["measured"] is True
    recordings = {r["recording"]: r for r in scenario["recordings"]}
    largest = recordings["flumine_SELF-1.181223995_horse_place_inplay.jsonl"]
    assert largest["records"] == 21_922
    assert largest["dead_letters"] == 0
    assert largest["records_s"] > 0 and largest["records_cpu_s"] > 0
    assert scenario["largest_records_s"] == largest["records_s"]
