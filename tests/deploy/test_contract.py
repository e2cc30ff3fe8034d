"""Every port, path, setting and metric name the deploy artifacts mention exists in the server."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from otlp_ingest.config import ENV_NAMES, Settings, load_settings
from tests.deploy.tools import (
    DEPLOY,
    K8S_BASE,
    K8S_DURABLE,
    K8S_PRODUCTION,
    ROOT,
    SCRIPTS,
    SUPERVISOR_METRICS,
    dashboard_exprs,
    find,
    metric_names_in,
    objects,
    recorded_names,
    rule_exprs,
    server_metric_names,
    workload,
)

DEFAULTS = Settings()
PORTS = {DEFAULTS.grpc_port, DEFAULTS.http_port, DEFAULTS.admin_port}
ADMIN_PATHS = ("/health", "/ready", "/metrics")

# Every operator-facing text file of the kit.
ARTIFACTS = [
    ROOT / "Dockerfile",
    ROOT / "docker-compose.yml",
    ROOT / "docs/operations.md",
    *SCRIPTS,
    *sorted(p for p in DEPLOY.rglob("*") if p.is_file()),
]


def _text(path: Path) -> str:
    return path.read_text()


ALL_OVERLAYS = pytest.mark.parametrize(
    "overlay", [K8S_BASE, K8S_PRODUCTION, K8S_DURABLE], ids=["base", "production", "durable"]
)


def test_supervisor_defines_its_tree_wide_metrics() -> None:
    """The names the rules use beyond metrics.py are really produced by telemetry.collect."""
    source = (ROOT / "otlp_ingest/telemetry/collect.py").read_text()
    for exposed, declared in SUPERVISOR_METRICS.items():
        assert f'"{declared}"' in source, f"{exposed}: {declared!r} not declared in telemetry/collect.py"


@pytest.mark.parametrize(("where", "expr"), rule_exprs() + dashboard_exprs())
def test_promql_names_exist(where: str, expr: str) -> None:
    known = server_metric_names() | recorded_names() | {"up"}
    unknown = metric_names_in(expr) - known
    assert not unknown, f"{where}: unknown metric names {sorted(unknown)} in {expr}"


def _metric_tokens(text: str) -> set[str]:
    # Names in prose and scripts, including families written as `otlp_receiver_accepted_*_total`
    # or built in shell (`${f}_${noun}_total` with f=otlp_receiver_accepted).
    return set(re.findall(r"\b((?:otlp|process)_[a-z_*]*[a-z*])\b", text))


@pytest.mark.parametrize("path", ARTIFACTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_metric_names_in_text_exist(path: Path) -> None:
    known = server_metric_names()
    bases = {n.removesuffix("_total") for n in known} | {
        re.sub(r"_(bucket|sum|count)$", "", n) for n in known
    }
    bad = []
    for token in _metric_tokens(_text(path)):
        if token in ("otlp_ingest", "otlp_data") or token.startswith("otlp_ingest"):
            continue  # the Python package, not a metric
        pattern = re.compile("^" + re.escape(token).replace(r"\*", "[a-z_]+") + "$")
        if any(pattern.match(n) for n in known | bases):
            continue
        if any(n.startswith(token + "_") for n in known):  # a family prefix
            continue
        bad.append(token)
    assert not bad, f"{path.name}: metric names not exported by the server: {sorted(bad)}"


@pytest.mark.parametrize("path", ARTIFACTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_env_names_exist(path: Path) -> None:
    names = set(re.findall(r"\bOTLP_[A-Z0-9_]+\b", _text(path)))
    unknown = names - set(ENV_NAMES.values())
    assert not unknown, f"{path.name}: environment variables the server does not read: {sorted(unknown)}"


@ALL_OVERLAYS
def test_configmap_is_valid_settings(overlay: Path) -> None:
    """The ConfigMap's values pass the server's own validation (as `serve` would load them)."""
    data = find(objects(overlay), "ConfigMap")["data"]
    assert set(data) <= set(ENV_NAMES.values())
    settings = load_settings({}, data)
    assert (settings.grpc_port, settings.http_port, settings.admin_port) == (4317, 4318, 8888)


def test_compose_env_is_valid_settings() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    env = compose["services"]["otlp-ingest"]["environment"]
    settings = load_settings({}, env)
    assert settings.endpoint == "jaeger:4317"


def test_admin_paths_exist_in_server() -> None:
    source = (ROOT / "otlp_ingest/supervisor/admin.py").read_text()
    for path in ADMIN_PATHS:
        assert f'"{path}"' in source, f"admin endpoint {path} not served by supervisor/admin.py"


@ALL_OVERLAYS
def test_k8s_ports_and_paths_match_server(overlay: Path) -> None:
    objs = objects(overlay)
    container = workload(objs)["spec"]["template"]["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {
        "otlp-grpc": DEFAULTS.grpc_port,
        "otlp-http": DEFAULTS.http_port,
        "metrics": DEFAULTS.admin_port,
    }
    assert container["livenessProbe"]["httpGet"] == {"path": "/health", "port": "metrics"}
    assert container["startupProbe"]["httpGet"] == {"path": "/health", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "metrics"}
    service = find(objs, "Service")
    assert {p["port"] for p in service["spec"]["ports"]} == PORTS
    assert {p["targetPort"] for p in service["spec"]["ports"]} == set(ports)
    monitor = find(objs, "ServiceMonitor")
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    netpol = find(objs, "NetworkPolicy")
    ingress_ports = {p["port"] for rule in netpol["spec"]["ingress"] for p in rule["ports"]}
    assert ingress_ports == PORTS


def test_container_and_compose_ports_match_server() -> None:
    dockerfile = _text(ROOT / "Dockerfile")
    expose = re.search(r"^EXPOSE (.+)$", dockerfile, re.M)
    assert expose and {int(p) for p in expose.group(1).split()} == PORTS
    assert "/health" in re.search(r"^HEALTHCHECK[\s\S]+?\n(?=\S)", dockerfile, re.M).group(0)
    compose = yaml.safe_load(_text(ROOT / "docker-compose.yml"))
    published = {int(p.split(":")[-1]) for p in compose["services"]["otlp-ingest"]["ports"]}
    assert published == PORTS
    prom = yaml.safe_load(_text(DEPLOY / "prometheus/prometheus.yml"))
    job = next(j for j in prom["scrape_configs"] if j["job_name"] == "otlp-ingest")
    assert job["static_configs"][0]["targets"] == [f"otlp-ingest:{DEFAULTS.admin_port}"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
