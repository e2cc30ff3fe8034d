"""Every port, path, setting and metric name the deploy artifacts mention exists in the server."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from otlp_ingest.config import ENV_NAMES, Settings, load_settings
from otlp_ingest.otlp.signals import SIGNALS
from tests.deploy.tools import (
    DEPLOY,
    MANIFESTS,
    ROOT,
    SCRIPTS,
    SUPERVISOR_METRICS,
    all_manifests,
    dashboard_exprs,
    find,
    helm_objects,
    helm_values,
    metric_names_in,
    recorded_names,
    rule_exprs,
    server_metric_names,
    workload,
)

DEFAULTS = Settings()
PORTS = {DEFAULTS.grpc_port, DEFAULTS.http_port, DEFAULTS.admin_port}
ADMIN_PATHS = ("/health", "/ready", "/metrics")

# Every operator-facing text file of the kit (the Helm chart's templates and values included).
ARTIFACTS = [
    ROOT / "Dockerfile",
    ROOT / "docker-compose.yml",
    ROOT / "docs/operations.md",
    *SCRIPTS,
    *sorted(p for p in DEPLOY.rglob("*") if p.is_file()),
]


def _text(path: Path) -> str:
    return path.read_text()


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


@all_manifests
def test_configmap_is_valid_settings(manifests: str) -> None:
    """The ConfigMap's values pass the server's own validation (as `serve` would load them)."""
    data = find(MANIFESTS[manifests](), "ConfigMap")["data"]
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


@all_manifests
def test_k8s_ports_and_paths_match_server(manifests: str) -> None:
    """kustomize and the Helm chart alike: ports, probes, Service, scrape endpoint, NetworkPolicy."""
    objs = MANIFESTS[manifests]()
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


@pytest.mark.parametrize("tls", [False, True], ids=["plaintext", "tls"])
def test_helm_ingress_routes_the_servers_paths(tls: bool) -> None:
    """The Ingress objects route exactly the server's gRPC Export methods to its gRPC port (HTTP/2
    to the pod: backend protocol GRPC, or GRPCS when the pods serve TLS) and its OTLP/HTTP paths to
    its HTTP port."""
    values = {**helm_values("production"), "tls": {"enabled": tls, "clientAuth": False}}
    objs = helm_objects(values)
    service_ports = {p["name"] for p in find(objs, "Service")["spec"]["ports"]}
    signals = SIGNALS.values()
    expected = {
        "otlp-ingest-grpc": ("otlp-grpc", "GRPCS" if tls else "GRPC", {i.grpc_method for i in signals}),
        "otlp-ingest-http": ("otlp-http", "HTTPS" if tls else "HTTP", {i.http_path for i in signals}),
    }
    ingresses = [o for o in objs if o["kind"] == "Ingress"]
    assert {o["metadata"]["name"] for o in ingresses} == set(expected)
    for ingress in ingresses:
        port, protocol, paths = expected[ingress["metadata"]["name"]]
        assert port in service_ports
        annotations = ingress["metadata"]["annotations"]
        assert annotations["nginx.ingress.kubernetes.io/backend-protocol"] == protocol
        assert ingress["spec"]["ingressClassName"] == "nginx"
        (rule,) = ingress["spec"]["rules"]
        assert rule["host"] == "otlp.example.com"
        assert {p["path"] for p in rule["http"]["paths"]} == paths
        for p in rule["http"]["paths"]:
            assert p["pathType"] == "Exact"
            assert p["backend"]["service"] == {"name": "otlp-ingest", "port": {"name": port}}


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
