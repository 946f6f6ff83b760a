"""The alert rules and the Grafana dashboard as code (``k8s/observability/``), checked
with Debian's promtool (``scripts/prometheus.sh`` installs it): the rules load, their unit
tests pass, every dashboard expression parses, and every metric either names is one of
the contract (``docs/observability.md``)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
OBSERVABILITY = ROOT / "k8s" / "observability"
CONTRACT = ROOT / "docs" / "observability.md"

#: Grafana's variables, as a value Prometheus parses in their place.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$stage": "books", "${datasource}": ""}

#: Series Prometheus itself or prometheus-client's standard collectors make.
STANDARD = re.compile(r"^(up|process_[a-z_]+|python_[a-z_]+)$")


def rule_groups() -> dict[str, Any]:
    """The PrometheusRule's ``spec``: a plain Prometheus rule file."""
    doc = yaml.safe_load((OBSERVABILITY / "prometheusrule.yaml").read_text())
    assert doc["kind"] == "PrometheusRule"
    spec: dict[str, Any] = doc["spec"]
    return spec


def dashboard_exprs() -> Iterator[tuple[str, str]]:
    """(panel title, expression) of every query of the dashboard."""
    board = json.loads((OBSERVABILITY / "dashboard.json").read_text())
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            yield panel["title"], target["expr"]


def contract_names() -> set[str]:
    """Every metric name the contract spells out: ``a_{b,c}_total`` expanded,
    ``name{label,label}`` read as the name."""
    names = set()
    for token in re.findall(r"`(oddstream_[a-z0-9_{},]+)", CONTRACT.read_text()):
        head, _, rest = token.partition("{")
        choices, _, tail = rest.partition("}")
        if not tail:
            names.add(head)
        else:
            names.update(head + choice + tail for choice in choices.split(","))
    return names


def metric_names(expr: str) -> set[str]:
    """The series an expression selects (histogram suffixes dropped), not its functions,
    labels or label values."""
    bare = re.sub(
        r"\{[^}]*\}|\"[^\"]*\"|\b(by|without|on|group_left|group_right)\s*\([^)]*\)", "", expr
    )
    names = set()
    for word in re.findall(r"\b([a-z_][a-z0-9_]*)\b(?!\s*\()", bare):
        if word.startswith("oddstream_") or STANDARD.match(word):
            names.add(re.sub(r"_(bucket|sum|count|gcount|gsum)$", "", word))
    return names


@pytest.fixture(scope="module")
def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.fail("promtool not found: install it with scripts/prometheus.sh", pytrace=False)
    return found


def check(promtool: str, *args: str, cwd: Path) -> str:
    done = subprocess.run(
        [promtool, *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_rules_load(promtool: str, tmp_path: Path) -> None:
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(rule_groups()))
    out = check(promtool, "check", "rules", "rules.yml", cwd=tmp_path)
    assert "SUCCESS: 5 rules found" in out


def test_rules_unit_tests_pass(promtool: str, tmp_path: Path) -> None:
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(rule_groups()))
    shutil.copy(OBSERVABILITY / "rules.test.yml", tmp_path)
    check(promtool, "test", "rules", "rules.test.yml", cwd=tmp_path)
    tested = set(re.findall(r"alertname: (\w+)", (OBSERVABILITY / "rules.test.yml").read_text()))
    alerts = {r["alert"] for g in rule_groups()["groups"] for r in g["rules"]}
    assert tested == alerts, "every alert has a unit test"


def test_dashboard_expressions_parse(promtool: str, tmp_path: Path) -> None:
    # promtool parses rule expressions: each query becomes a recording rule.
    rules = []
    for i, (_, expr) in enumerate(dashboard_exprs()):
        for variable, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(variable, value)
        rules.append({"record": f"dashboard:query_{i}", "expr": expr})
    assert len(rules) >= 20
    (tmp_path / "dashboard.yml").write_text(
        yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]})
    )
    check(promtool, "check", "rules", "dashboard.yml", cwd=tmp_path)


def test_dashboard_shows_what_an_operator_asks_first() -> None:
    exprs = " ".join(e for _, e in dashboard_exprs())
    for metric in (
        "oddstream_connections",
        "oddstream_deliveries_total",
        "oddstream_stage_seconds_bucket",
        "oddstream_kafka_lag",
        "oddstream_closes_total",
        "oddstream_resumes_total",
    ):
        assert metric in exprs
    board = json.loads((OBSERVABILITY / "dashboard.json").read_text())
    heatmaps = [p for p in board["panels"] if p["type"] == "heatmap"]
    assert heatmaps and heatmaps[0]["repeat"] == "stage", "one latency heatmap per stage"
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))


def test_every_metric_named_is_in_the_contract() -> None:
    contract = contract_names()
    assert {"oddstream_stage_seconds", "oddstream_relay_gaps_total"} <= contract
    named = {("dashboard: " + title, m) for title, e in dashboard_exprs() for m in metric_names(e)}
    for group in rule_groups()["groups"]:
        named |= {
            ("alert " + r["alert"], m) for r in group["rules"] for m in metric_names(r["expr"])
        }
    unknown = {(where, m) for where, m in named if m not in contract and not STANDARD.match(m)}
    assert not unknown, f"not in docs/observability.md: {sorted(unknown)}"
    assert len({m for _, m in named}) >= 15


def test_metric_names_reads_series_not_labels_or_functions() -> None:
    expr = (
        "histogram_quantile(0.99, sum by (stage, le) "
        '(rate(oddstream_stage_seconds_bucket{stage="x"}[1m]))) and on (job) up'
    )
    assert metric_names(expr) == {"oddstream_stage_seconds", "up"}
