"""Every Kubernetes manifest as a cluster would receive it: ``kubectl kustomize`` of each
overlay and ``helm template`` of the chart, validated offline against the Kubernetes
JSON schemas (kubernetes-validate), with the properties the design depends on checked
by name; ``helm lint``; actionlint on the workflows. No cluster runs here: what needs
one is listed in docs/deployment.md."""

from __future__ import annotations

import shutil
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "oddstream"
KUBERNETES = "1.32.0"
"""The Kubernetes version the manifests are validated against (kubectl's here)."""
HELM_ARGS = ("--namespace", "odds", "--kube-version", KUBERNETES)
OBSERVABILITY = ROOT / "k8s" / "observability"
CRDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): ("endpoints", "selector"),
    ("monitoring.coreos.com/v1", "PodMonitor"): ("podMetricsEndpoints", "selector"),
    ("monitoring.coreos.com/v1", "PrometheusRule"): ("groups",),
}
"""Kinds of operators, which the Kubernetes schemas do not know: checked by hand (the
fields their spec must have)."""
KINDS = Counter(
    {
        "ConfigMap": 2,
        "ServiceAccount": 1,
        "Deployment": 3,
        "Service": 1,
        "PodDisruptionBudget": 2,
        "HorizontalPodAutoscaler": 2,
        "Ingress": 1,
        "NetworkPolicy": 3,
        "ServiceMonitor": 1,
        "PodMonitor": 1,
        "PrometheusRule": 1,
    }
)
CLOSE_TIMEOUT_S = 2
"""``close_timeout_s``'s default: the last close after the drain may take this long."""


def run(*argv: str) -> str:
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, f"{' '.join(argv)} exited {done.returncode}:\n{done.stderr}"
    return done.stdout


def kustomize(overlay: str) -> list[dict[str, Any]]:
    path = f"k8s/overlays/{overlay}"
    if shutil.which("kubectl"):
        out = run("kubectl", "kustomize", path)
    else:
        out = run("kustomize", "build", path)
    return [d for d in yaml.safe_load_all(out) if d]


def helm_template(*values: str) -> list[dict[str, Any]]:
    sets = [a for v in values for a in ("--set", v)]
    out = run("helm", "template", "odds", str(CHART), *HELM_ARGS, *sets)
    return [d for d in yaml.safe_load_all(out) if d]


def validate(docs: list[dict[str, Any]]) -> None:
    """Each object against its schema (strict: no unknown fields), or by hand for CRDs."""
    for doc in docs:
        required = CRDS.get((doc["apiVersion"], doc["kind"]))
        if required is not None:
            assert set(doc) <= {"apiVersion", "kind", "metadata", "spec"}, doc
            assert all(doc["spec"][field] for field in required), doc
            continue
        try:
            kubernetes_validate.validate(doc, KUBERNETES, strict=True)
        except kubernetes_validate.ValidationError as exc:
            raise AssertionError(f"{doc['kind']}/{doc['metadata']['name']}: {exc}") from None


def by_kind(docs: list[dict[str, Any]], kind: str) -> Iterator[dict[str, Any]]:
    return (d for d in docs if d["kind"] == kind)


def one(docs: list[dict[str, Any]], kind: str, component: str) -> dict[str, Any]:
    [found] = [
        d
        for d in by_kind(docs, kind)
        if d["metadata"].get("labels", {}).get("app.kubernetes.io/component") == component
    ]
    return found


def config(docs: list[dict[str, Any]]) -> dict[str, str]:
    [cm] = (d for d in by_kind(docs, "ConfigMap") if "ODDSTREAM_KAFKA" in d["data"])
    data: dict[str, str] = cm["data"]
    return data


def check_design(docs: list[dict[str, Any]]) -> None:
    """What the deployment design promises (docs/deployment.md), whatever renders it."""
    assert Counter(d["kind"] for d in docs) == KINDS
    for doc in docs:
        labels = doc["metadata"].get("labels", {})
        assert labels.get("app.kubernetes.io/name") == "oddstream", doc["metadata"]
    env = config(docs)
    gateway = one(docs, "Deployment", "gateway")
    pod = gateway["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    pre_stop = int(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    drain = float(env["ODDSTREAM_DRAIN_S"])
    assert pod["terminationGracePeriodSeconds"] >= pre_stop + drain + CLOSE_TIMEOUT_S
    assert pod["affinity"]["podAntiAffinity"]
    assert gateway["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    # 20,000 idle WebSockets at the measured 11.4 KiB fit in the memory limit.
    limit = container["resources"]["limits"]["memory"]
    assert limit.endswith("Mi") and int(limit[:-2]) * 1024 >= 20_000 * 11.4
    hpa = one(docs, "HorizontalPodAutoscaler", "gateway")
    metrics = {m["type"]: m for m in hpa["spec"]["metrics"]}
    assert metrics["Pods"]["pods"]["metric"]["name"] == "oddstream_connections"
    assert metrics["Resource"]["resource"]["name"] == "cpu"
    books_hpa = one(docs, "HorizontalPodAutoscaler", "books")
    assert books_hpa["spec"]["maxReplicas"] == int(env["ODDSTREAM_PARTITIONS"])
    assert one(docs, "PodDisruptionBudget", "gateway")["spec"]["maxUnavailable"] == 1
    # Only gateways face ingress traffic.
    facing = [
        p["spec"]["podSelector"]["matchLabels"].get("app.kubernetes.io/component")
        for p in by_kind(docs, "NetworkPolicy")
        if any("ingress-nginx" in str(rule) for rule in p["spec"].get("ingress", []))
    ]
    assert facing == ["gateway"]
    annotations = next(by_kind(docs, "Ingress"))["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/proxy-buffering"] == "off"
    assert int(annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"]) >= 600
    for deployment in by_kind(docs, "Deployment"):
        spec = deployment["spec"]["template"]["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True
        # Every role serves /metrics on its operator port, which a monitor scrapes.
        assert "ops" in {p["name"] for p in spec["containers"][0]["ports"]}
    check_monitoring(docs)


def check_monitoring(docs: list[dict[str, Any]]) -> None:
    """The alert rules and the dashboard of k8s/observability, as they are."""
    rules = yaml.safe_load((OBSERVABILITY / "prometheusrule.yaml").read_text())
    assert next(by_kind(docs, "PrometheusRule"))["spec"] == rules["spec"]
    [dashboard] = (d for d in by_kind(docs, "ConfigMap") if "oddstream.json" in d["data"])
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert dashboard["data"]["oddstream.json"] == (OBSERVABILITY / "dashboard.json").read_text()
    [pods] = by_kind(docs, "PodMonitor")
    [components] = pods["spec"]["selector"]["matchExpressions"]
    assert set(components["values"]) == {"books", "feed"}


def jwt_key(docs: list[dict[str, Any]]) -> str | None:
    """The Secret the gateways read ``ODDSTREAM_JWT_KEY`` from, if any."""
    [container] = one(docs, "Deployment", "gateway")["spec"]["template"]["spec"]["containers"]
    for var in container.get("env", []):
        if var["name"] == "ODDSTREAM_JWT_KEY":
            name: str = var["valueFrom"]["secretKeyRef"]["name"]
            return name
    return None


@pytest.mark.parametrize("overlay", ["dev", "prod"])
def test_kustomize_overlay_is_valid(overlay: str) -> None:
    docs = kustomize(overlay)
    validate(docs)
    check_design(docs)
    env = config(docs)
    if overlay == "prod":
        assert env["ODDSTREAM_AUTH"] == "jwt"
        assert jwt_key(docs) == "oddstream-jwt"
    else:
        assert env["ODDSTREAM_AUTH"] == "none"
        assert jwt_key(docs) is None
    assert env["ODDSTREAM_ALLOWED_ORIGINS"].startswith("https://")


def test_helm_lint() -> None:
    out = run("helm", "lint", "--strict", str(CHART))
    assert "0 chart(s) failed" in out


@pytest.mark.parametrize(
    "values",
    [(), ("auth.mode=none", "feed.enabled=false", "gateway.autoscaling.enabled=false")],
    ids=["defaults", "no-auth-no-feed-fixed"],
)
def test_helm_template_is_valid(values: tuple[str, ...]) -> None:
    docs = helm_template(*values)
    validate(docs)
    labels = {"app.kubernetes.io/instance", "app.kubernetes.io/managed-by", "helm.sh/chart"}
    assert all(labels <= set(d["metadata"]["labels"]) for d in docs)
    if values:
        assert jwt_key(docs) is None and config(docs)["ODDSTREAM_AUTH"] == "none"
        hpas = [d["metadata"]["name"] for d in by_kind(docs, "HorizontalPodAutoscaler")]
        assert hpas == ["odds-oddstream-books"]
    else:
        check_design(docs)
        assert jwt_key(docs) == "oddstream-jwt"


@pytest.mark.parametrize(
    "bad", ["auth.mode=basic", "partitions=0", "redis=localhost:6379", "gateway.drainSeconds=0"]
)
def test_helm_values_schema_rejects(bad: str) -> None:
    done = subprocess.run(
        ["helm", "template", "odds", str(CHART), *HELM_ARGS, "--set", bad],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0
    assert "values don't meet the specifications of the schema" in done.stderr, done.stderr


def test_workflows_pass_actionlint() -> None:
    workflows = sorted(str(p) for p in (ROOT / ".github" / "workflows").glob("*.yml"))
    assert workflows
    run("actionlint", "-color=false", *workflows)
