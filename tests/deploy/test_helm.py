"""The Helm chart (deploy/helm/otlp-ingest), rendered by Helm's own engine: helm-python-sdk binds
Helm v4's Go SDK, so rendering, values-schema validation and `helm lint` are Helm's, offline, with
no `helm` binary and no cluster.

The chart's default values render the kustomize base object for object, and its production values
(without the ingress, with mTLS) the production and durable overlays: every invariant
test_k8s.py pins for kustomize then holds for the chart too. Ports, probes, env and metric names
are checked against the server for both by test_contract.py.
"""

from __future__ import annotations

import base64
import json
import posixpath
import re
import tomllib
from pathlib import Path
from typing import Any

import helm_python as helm
import jsonschema
import pytest
import yaml

from otlp_ingest.auth import TokenFileError, parse_tokens
from otlp_ingest.config import ENV_NAMES
from tests.deploy import sync_prometheusrule
from tests.deploy.tools import (
    ALERTS,
    AUTH_TOKENS,
    CHART,
    CHART_ALERTS,
    CHART_AUTH_TOKENS,
    HELM_VARIANTS,
    K8S_BASE,
    K8S_DURABLE,
    K8S_PRODUCTION,
    ROOT,
    check_crd_objects,
    check_kubernetes_validate_strict,
    find,
    helm_manifest,
    helm_objects,
    helm_render,
    helm_values,
    objects,
    values_production,
    workload,
)

variants = pytest.mark.parametrize("variant", HELM_VARIANTS)

_BUILTIN = {"ConfigMap", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "NetworkPolicy"}
# Production values add the Certificate and, as the kustomize overlay does, the bearer tokens Secret.
_PRODUCTION = _BUILTIN | {"ServiceMonitor", "PrometheusRule", "Certificate", "Secret"}
EXPECTED_KINDS = {
    "default": _BUILTIN | {"Deployment", "ServiceMonitor", "PrometheusRule"},
    "production": _PRODUCTION | {"Deployment", "Ingress"},
    "mtls": _PRODUCTION | {"Deployment"},
    "durable": _PRODUCTION | {"StatefulSet"},
}
CRD_KINDS = {"ServiceMonitor", "PrometheusRule", "Certificate"}

# Settings the chart writes itself from other values (service.ports, the volumes it mounts, durable,
# tls and auth), so `config` must not set them.
CHART_MANAGED_ENV = {
    "OTLP_GRPC_PORT", "OTLP_HTTP_PORT", "OTLP_ADMIN_PORT", "OTLP_DATA_DIR",
    "OTLP_QUEUE_DIR", "OTLP_QUEUE_MAX_BYTES", "OTLP_QUEUE_SEGMENT_BYTES",
    "OTLP_TLS_CERT_FILE", "OTLP_TLS_KEY_FILE", "OTLP_TLS_CLIENT_CA_FILE",
    "OTLP_EXPORT_CA_FILE", "OTLP_EXPORT_CERT_FILE", "OTLP_EXPORT_KEY_FILE", "OTLP_AUTH_TOKENS_FILE",
}  # fmt: skip


@variants
def test_helm_lint_is_clean(variant: str) -> None:
    """`helm lint` (strict: warnings count) finds nothing above INFO."""
    report = helm.lint(CHART, helm_values(variant), strict=True)
    assert report["errors"] == [], report
    serious = [m for m in report["messages"] if m["severity"] >= 2]  # 2 warning, 3 error
    assert not serious, serious


@variants
def test_renders_expected_objects(variant: str) -> None:
    objs = helm_objects(helm_values(variant))
    kinds = sorted(o["kind"] for o in objs)
    expected = EXPECTED_KINDS[variant]
    # Two Ingress objects (gRPC and HTTP backends), one of every other kind.
    assert kinds.count("Ingress") == (2 if "Ingress" in expected else 0)
    assert set(kinds) == expected and len(kinds) == len(expected) + kinds.count("Ingress") // 2, kinds
    for obj in objs:
        assert obj["metadata"]["namespace"] == "observability", obj["kind"]
        labels = obj["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "otlp-ingest", obj["kind"]
        assert labels["app.kubernetes.io/instance"] == "otlp-ingest", obj["kind"]
        assert labels["app.kubernetes.io/managed-by"] == "Helm", obj["kind"]


@variants
def test_kubernetes_validate_strict(variant: str, tmp_path: Path) -> None:
    values = helm_values(variant)
    check_kubernetes_validate_strict(helm_manifest(values), EXPECTED_KINDS[variant] - CRD_KINDS, tmp_path)


@variants
def test_crd_objects_match_strict_schemas(variant: str) -> None:
    checked = check_crd_objects(helm_objects(helm_values(variant)), EXPECTED_KINDS[variant] - CRD_KINDS)
    assert checked == len(EXPECTED_KINDS[variant] & CRD_KINDS)


# Labels and annotations only Helm adds: release identity (two releases in one namespace must not
# select each other's pods) and the config checksum.
_HELM_LABELS = {
    "app.kubernetes.io/instance", "app.kubernetes.io/managed-by", "app.kubernetes.io/version",
    "helm.sh/chart",
}  # fmt: skip


def _comparable(node: Any, helm: bool) -> Any:
    """`node` without what only Helm adds (when `helm`), volumes and mounts in name order (the API
    merges them by name; kustomize's strategic merge puts patched-in ones first)."""
    if isinstance(node, list):
        return [_comparable(n, helm) for n in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for key, value in node.items():
        if helm and key in ("labels", "matchLabels", "selector") and isinstance(value, dict):
            value = {k: v for k, v in value.items() if k not in _HELM_LABELS}
        if helm and key == "annotations" and isinstance(value, dict):
            value = {k: v for k, v in value.items() if k != "checksum/config"}
            if not value:
                continue
        if key in ("volumes", "volumeMounts"):
            value = sorted(value, key=lambda v: v["name"])
        out[key] = _comparable(value, helm)
    return out


def _secret_bytes(obj: dict[str, Any]) -> dict[str, Any]:
    """A Secret's `data` as the bytes the API server stores: kustomize wraps the base64 text at 70
    characters, Helm's b64enc does not, and both decode to the same file."""
    if obj["kind"] != "Secret":
        return obj
    return {**obj, "data": {k: base64.b64decode(v) for k, v in obj.get("data", {}).items()}}


@pytest.mark.parametrize(
    ("variant", "overlay"),
    [("default", K8S_BASE), ("mtls", K8S_PRODUCTION), ("durable", K8S_DURABLE)],
    ids=["default=base", "mtls=production", "durable=durable"],
)
def test_same_objects_as_kustomize(variant: str, overlay: Path) -> None:
    """Object for object, field for field, the chart renders what kustomize renders, but for Helm's
    release labels and the config checksum; the Namespace is Helm's to create (--create-namespace).
    Secrets compare by their decoded bytes."""
    rendered = helm_objects(helm_values(variant))
    chart = {(o["kind"], o["metadata"]["name"]): _comparable(_secret_bytes(o), helm=True) for o in rendered}
    kustomize = {
        (o["kind"], o["metadata"]["name"]): _comparable(_secret_bytes(o), helm=False)
        for o in objects(overlay)
        if o["kind"] != "Namespace"
    }
    assert sorted(chart) == sorted(kustomize)
    for key, obj in kustomize.items():
        assert chart[key] == obj, f"{key}: chart and {overlay.relative_to(ROOT)} differ"


def test_selectors_include_the_release() -> None:
    """Two releases in one namespace keep to their own pods."""
    objs = helm_objects({})
    selector = {"app.kubernetes.io/name": "otlp-ingest", "app.kubernetes.io/instance": "otlp-ingest"}
    assert workload(objs)["spec"]["selector"]["matchLabels"] == selector
    assert find(objs, "Service")["spec"]["selector"] == selector
    assert find(objs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"] == selector
    assert find(objs, "NetworkPolicy")["spec"]["podSelector"]["matchLabels"] == selector
    assert find(objs, "ServiceMonitor")["spec"]["selector"]["matchLabels"] == selector


def test_alerts_are_a_copy_of_alerts_yml() -> None:
    """One source of rules: files/alerts.yml is deploy/prometheus/alerts.yml byte for byte (Helm
    reads files only inside the chart), and the chart's PrometheusRule carries its groups."""
    assert CHART_ALERTS.read_bytes() == ALERTS.read_bytes(), (
        f"{CHART_ALERTS.relative_to(ROOT)} is stale: run `python -m tests.deploy.sync_prometheusrule`"
    )
    assert sync_prometheusrule.CHART_ALERTS == CHART_ALERTS
    rule = find(helm_objects({}), "PrometheusRule")
    assert rule["spec"]["groups"] == yaml.safe_load(ALERTS.read_text())["groups"]


def test_placeholder_tokens_are_a_copy_of_the_overlays() -> None:
    """files/auth-tokens, what the chart's tokens Secret holds when neither auth.tokens nor
    auth.existingSecret is given, is the production overlay's placeholder byte for byte."""
    assert CHART_AUTH_TOKENS.read_bytes() == AUTH_TOKENS.read_bytes(), (
        f"{CHART_AUTH_TOKENS.relative_to(ROOT)} is stale: run `python -m tests.deploy.sync_prometheusrule`"
    )
    assert sync_prometheusrule.CHART_COPIES[sync_prometheusrule.AUTH_TOKENS] == CHART_AUTH_TOKENS
    assert sync_prometheusrule.AUTH_TOKENS == AUTH_TOKENS


def _pod_checksum(values: dict[str, Any]) -> str:
    return workload(helm_objects(values))["spec"]["template"]["metadata"]["annotations"]["checksum/config"]


def test_config_checksum_rolls_pods_only_when_the_configmap_changes() -> None:
    base = _pod_checksum({})
    assert re.fullmatch(r"[0-9a-f]{64}", base)
    assert _pod_checksum({"config": {"OTLP_LOG_LEVEL": "debug"}}) != base
    assert _pod_checksum({"durable": {"enabled": True}}) != base  # adds OTLP_QUEUE_DIR
    assert _pod_checksum({"resources": {"limits": {"cpu": "4", "memory": "8Gi"}}}) == base


def test_replicas_only_without_the_hpa() -> None:
    assert "replicas" not in workload(helm_objects({}))["spec"], "the HPA owns replicas"
    objs = helm_objects({"autoscaling": {"enabled": False}, "replicaCount": 5})
    assert workload(objs)["spec"]["replicas"] == 5
    assert "HorizontalPodAutoscaler" not in {o["kind"] for o in objs}


@pytest.mark.parametrize(
    ("values", "message"),
    [
        pytest.param({"replicaCount": "three"}, "at '/replicaCount': got string, want integer", id="count"),
        pytest.param(
            {"service": {"ports": {"grpc": 70000}}},
            "at '/service/ports/grpc': maximum: got 70,000, want 65,535",
            id="port-high",
        ),
        pytest.param(
            {"service": {"ports": {"http": 0}}},
            "at '/service/ports/http': minimum: got 0, want 1",
            id="port-0",
        ),
        pytest.param(
            {"config": {"OTLP_BATCH_SIZ": "1"}},
            "at '/config': additional properties 'OTLP_BATCH_SIZ' not allowed",
            id="config-typo",
        ),
        pytest.param(
            {"config": {"OTLP_BATCH_SIZE": 4096}},
            "at '/config/OTLP_BATCH_SIZE': got number, want string",
            id="config-number",
        ),
        pytest.param(
            {"config": {"OTLP_GRPC_PORT": "4319"}},
            "additional properties 'OTLP_GRPC_PORT' not allowed",
            id="chart-managed",
        ),
        pytest.param({"topologySpread": {"zone": "Sometimes"}}, "at '/topologySpread/zone'", id="enum"),
        pytest.param({"durable": {"size": "ten gigs"}}, "at '/durable/size'", id="quantity"),
        pytest.param({"replicas": 3}, "additional properties 'replicas' not allowed", id="unknown"),
        pytest.param(
            {"auth": {"enabled": "yes"}}, "at '/auth/enabled': got string, want boolean", id="auth-bool"
        ),
        pytest.param({"auth": {"mountPath": "etc/auth"}}, "at '/auth/mountPath'", id="auth-relative-path"),
        pytest.param(
            {"auth": {"existingSecret": "My_Tokens"}}, "at '/auth/existingSecret'", id="auth-secret-name"
        ),
        pytest.param(
            {"auth": {"token": "x"}}, "at '/auth': additional properties 'token' not allowed", id="auth-typo"
        ),
    ],
)
def test_values_schema_rejects_bad_values(values: dict[str, Any], message: str) -> None:
    """A bad value fails the install before anything is rendered, naming the key and the rule."""
    with pytest.raises(helm.HelmValuesError) as info:
        helm_render(values)
    assert "values don't meet the specifications of the schema" in str(info.value)
    assert message in str(info.value)
    report = helm.lint(CHART, values)
    assert any(message in e for e in report["errors"]), report


def test_values_schema_config_names_are_the_servers() -> None:
    """`config` accepts exactly the server's settings, less those the chart sets itself, so a typo
    fails the install instead of being ignored, and a new server setting shows up here."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)  # draft-07: Helm 3 validates it as well as Helm 4
    allowed = set(schema["properties"]["config"]["properties"])
    assert allowed == set(ENV_NAMES.values()) - CHART_MANAGED_ENV
    templates = "".join(t.read_text() for t in (CHART / "templates").iterdir())
    for name in CHART_MANAGED_ENV:
        assert name in templates, f"{name} is neither settable in config nor set by a template"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"ingress": {"enabled": True, "tls": [{"secretName": "x"}]}}, "ingress.enabled needs ingress.hosts"),
        ({"ingress": {"enabled": True, "hosts": ["otlp.example.com"]}}, "ingress.enabled needs ingress.tls"),
        (
            {**values_production(), "tls": {"enabled": True, "clientAuth": True}},
            "ingress-nginx presents no client certificate to a gRPC (GRPCS) backend",
        ),
    ],
    ids=["no-hosts", "no-tls", "mtls-behind-ingress"],
)
def test_refuses_an_ingress_that_cannot_work(values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm.HelmRenderError, match=re.escape(message)):
        helm_render(values)


def test_tls_secret_and_certificate() -> None:
    """Pods mount the Secret the Certificate issues; mTLS adds the client CA; without cert-manager
    the chart mounts a Secret you name and creates none."""
    objs = helm_objects(helm_values("mtls"))
    cert = find(objs, "Certificate", "otlp-ingest-tls")
    pod = workload(objs)["spec"]["template"]["spec"]
    tls_volume = next(v for v in pod["volumes"] if v["name"] == "tls")
    assert tls_volume["secret"]["secretName"] == cert["spec"]["secretName"]
    env = {e["name"] for e in pod["containers"][0]["env"]}
    assert "OTLP_TLS_CLIENT_CA_FILE" in env and "OTLP_EXPORT_CERT_FILE" in env

    production = workload(helm_objects(helm_values("production")))["spec"]["template"]["spec"]
    assert "OTLP_TLS_CLIENT_CA_FILE" not in {e["name"] for e in production["containers"][0]["env"]}

    objs = helm_objects({"tls": {"enabled": True, "secretName": "my-tls", "exporter": False}})
    assert "Certificate" not in {o["kind"] for o in objs}
    pod = workload(objs)["spec"]["template"]["spec"]
    assert next(v for v in pod["volumes"] if v["name"] == "tls")["secret"]["secretName"] == "my-tls"
    assert {e["name"] for e in pod["containers"][0]["env"]} == {
        "OTLP_TLS_CERT_FILE", "OTLP_TLS_KEY_FILE", "OTLP_TLS_CLIENT_CA_FILE",
    }  # fmt: skip


def _auth_parts(
    objs: list[dict[str, Any]],
) -> tuple[dict[str, str], list[dict[str, Any]], list[dict[str, Any]]]:
    """(env name -> value, the `auth` volume mounts, the `auth` volumes) of the workload's pod."""
    pod = workload(objs)["spec"]["template"]["spec"]
    container = pod["containers"][0]
    env = {e["name"]: e.get("value") for e in container.get("env", [])}
    mounts = [m for m in container["volumeMounts"] if m["name"] == "auth"]
    volumes = [v for v in pod["volumes"] if v["name"] == "auth"]
    return env, mounts, volumes


def _secret_text(objs: list[dict[str, Any]], name: str) -> str:
    secret = find(objs, "Secret", name)
    assert secret["type"] == "Opaque" and set(secret["data"]) == {"tokens"}
    return base64.b64decode(secret["data"]["tokens"]).decode()


TOKENS = "team-checkout: " + "a1" * 32 + "\nteam-payments: " + "b2" * 32 + "\n"


def test_auth_is_off_by_default() -> None:
    """Without auth.enabled: no Secret, no OTLP_AUTH_TOKENS_FILE, no volume, nothing in NOTES."""
    objs = helm_objects({})
    assert "Secret" not in {o["kind"] for o in objs}
    env, mounts, volumes = _auth_parts(objs)
    assert "OTLP_AUTH_TOKENS_FILE" not in env and mounts == [] and volumes == []
    notes = helm_render({})["otlp-ingest/templates/NOTES.txt"]
    assert "Bearer" not in notes and "placeholder" not in notes


@variants
def test_auth_mounts_the_tokens_as_an_updatable_file(variant: str) -> None:
    """Wherever auth is on (production values, so mtls and durable too): a directory mount of the
    Secret, never subPath, so the kubelet updates the file and the server applies new tokens
    without a restart; OTLP_AUTH_TOKENS_FILE names the file in it."""
    objs = helm_objects(helm_values(variant))
    env, mounts, volumes = _auth_parts(objs)
    if variant == "default":
        assert "OTLP_AUTH_TOKENS_FILE" not in env and not mounts and not volumes
        return
    ((mount,), (volume,)) = mounts, volumes
    assert "subPath" not in mount and mount["readOnly"] is True
    assert posixpath.dirname(env["OTLP_AUTH_TOKENS_FILE"]) == mount["mountPath"] == "/etc/otlp-ingest/auth"
    assert posixpath.basename(env["OTLP_AUTH_TOKENS_FILE"]) == "tokens"
    assert volume["secret"] == {"secretName": "otlp-ingest-auth", "defaultMode": 0o440}


def test_auth_placeholder_is_the_overlays_and_notes_warn() -> None:
    """values-production.yaml without tokens: the Secret holds the placeholder (no token, so the
    server refuses to start, as the kustomize overlay's), and NOTES.txt says what to do."""
    values = helm_values("production")
    text = _secret_text(helm_objects(values), "otlp-ingest-auth")
    assert text == AUTH_TOKENS.read_text()
    with pytest.raises(TokenFileError, match="no tokens"):
        parse_tokens(text, "placeholder")
    notes = helm_render(values)["otlp-ingest/templates/NOTES.txt"]
    assert "WARNING: auth.enabled without auth.tokens or auth.existingSecret" in notes
    assert "--set-file auth.tokens=./tokens" in notes
    assert "authorization: Bearer <token>" in notes


def test_auth_tokens_make_the_secret_and_a_rotation_rolls_no_pod() -> None:
    """auth.tokens (`--set-file auth.tokens=./tokens`) is the Secret's file, byte for byte; new
    tokens change the Secret and nothing in the pod template, so no pod restarts."""
    values = {"auth": {"enabled": True, "tokens": TOKENS, "mountPath": "/var/run/otlp-auth"}}
    objs = helm_objects(values)
    text = _secret_text(objs, "otlp-ingest-auth")
    assert text == TOKENS
    assert [e.name for e in parse_tokens(text, "auth.tokens")] == ["team-checkout", "team-payments"]
    env, (mount,), (volume,) = _auth_parts(objs)
    assert env["OTLP_AUTH_TOKENS_FILE"] == "/var/run/otlp-auth/tokens"
    assert mount["mountPath"] == "/var/run/otlp-auth"
    assert volume["secret"]["secretName"] == "otlp-ingest-auth" and "items" not in volume["secret"]
    assert "WARNING" not in helm_render(values)["otlp-ingest/templates/NOTES.txt"]

    rotated = helm_objects({"auth": {**values["auth"], "tokens": "team-checkout: " + "c3" * 32 + "\n"}})
    assert _secret_text(rotated, "otlp-ingest-auth") != text
    assert workload(rotated)["spec"]["template"] == workload(objs)["spec"]["template"]


def test_auth_existing_secret_is_mounted_and_none_created(tmp_path: Path) -> None:
    """auth.existingSecret: the chart creates no Secret and mounts the operator's; a key other than
    `tokens` is mapped to the file `tokens` (items, still a directory mount, so still updated)."""
    values = {"auth": {"enabled": True, "existingSecret": "otlp-tokens"}}
    objs = helm_objects(values)
    assert "Secret" not in {o["kind"] for o in objs}
    env, (mount,), (volume,) = _auth_parts(objs)
    assert volume["secret"] == {"secretName": "otlp-tokens", "defaultMode": 0o440}
    assert env["OTLP_AUTH_TOKENS_FILE"] == mount["mountPath"] + "/tokens" and "subPath" not in mount
    notes = helm_render(values)["otlp-ingest/templates/NOTES.txt"]
    assert "WARNING" not in notes and "Secret otlp-tokens" in notes

    values = {"auth": {"enabled": True, "existingSecret": "otlp-tokens", "existingSecretKey": "clients.txt"}}
    _, (mount,), (volume,) = _auth_parts(helm_objects(values))
    assert volume["secret"]["items"] == [{"key": "clients.txt", "path": "tokens"}]
    assert "subPath" not in mount
    check_kubernetes_validate_strict(helm_manifest(values), EXPECTED_KINDS["default"] - CRD_KINDS, tmp_path)


def test_auth_refuses_tokens_beside_an_existing_secret() -> None:
    """Both given: the chart would silently ignore one, so it refuses."""
    values = {"auth": {"enabled": True, "existingSecret": "otlp-tokens", "tokens": TOKENS}}
    with pytest.raises(
        helm.HelmRenderError, match=re.escape("auth.existingSecret and auth.tokens are both set")
    ):
        helm_render(values)


def test_extra_hooks_reach_the_pod() -> None:
    """extraEnv/extraVolumes/extraVolumeMounts: for what the chart does not model (a Secret with
    credentials, say), appended after the chart's own entries."""
    objs = helm_objects(
        {
            "extraEnv": [{"name": "EXAMPLE", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}],
            "extraVolumes": [{"name": "extra", "secret": {"secretName": "s"}}],
            "extraVolumeMounts": [{"name": "extra", "mountPath": "/etc/extra", "readOnly": True}],
        }
    )
    pod = workload(objs)["spec"]["template"]["spec"]
    assert pod["containers"][0]["env"][-1]["name"] == "EXAMPLE"
    assert pod["volumes"][-1]["name"] == "extra"
    assert pod["containers"][0]["volumeMounts"][-1]["mountPath"] == "/etc/extra"


def test_values_production_is_the_operations_guide() -> None:
    """values-production.yaml carries what docs/operations.md promises for it."""
    values = values_production()
    assert values["replicaCount"] == 3
    assert values["image"]["repository"] == "ghcr.io/example/otlp-ingest"
    assert values["service"]["ports"] == {"grpc": 4317, "http": 4318, "metrics": 8888}
    assert values["resources"] == {
        "requests": {"cpu": "500m", "memory": "1Gi"},
        "limits": {"cpu": "2", "memory": "4Gi"},
    }
    hpa = values["autoscaling"]
    assert (hpa["minReplicas"], hpa["maxReplicas"], hpa["targetCPUUtilizationPercentage"]) == (3, 10, 70)
    assert values["ingress"]["className"] == "nginx"
    assert values["ingress"]["hosts"] == ["otlp.example.com"]
    assert values["monitoring"]["serviceMonitor"]["enabled"] is True
    guide = (ROOT / "docs/operations.md").read_text()
    for command in ("install", "upgrade", "-n observability rollback", "-n observability uninstall"):
        assert f"helm {command}" in guide, command
    assert "--values deploy/helm/otlp-ingest/values-production.yaml" in guide


def test_versions_agree() -> None:
    """The chart's appVersion (its default image tag) is the project's version and the kustomize tag."""
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    kustomization = yaml.safe_load((K8S_BASE / "kustomization.yaml").read_text())
    assert chart["appVersion"] == project == kustomization["images"][0]["newTag"]
    assert values_production()["image"]["tag"] == project


def test_notes_tell_clients_where_to_connect() -> None:
    notes = helm_render(helm_values("production"))["otlp-ingest/templates/NOTES.txt"]
    assert "https://otlp-ingest.observability.svc:4317" in notes
    assert "https://otlp.example.com" in notes
    assert "rollout status deployment/otlp-ingest" in notes
    default = helm_render({})["otlp-ingest/templates/NOTES.txt"]
    assert "http://otlp-ingest.observability.svc:4318" in default
    assert "No backend is set" in default


def test_packaged_chart_renders_the_same(tmp_path: Path) -> None:
    """`helm package` carries everything the templates read (files/alerts.yml, and files/auth-tokens
    for the production values' tokens Secret): the archive renders what the directory renders, as
    an installed-from-a-repository chart would."""
    archive = helm.package(CHART, destination=tmp_path)
    with helm.Chart.load(archive) as chart:
        for values in ({}, helm_values("production")):
            packaged = chart.render(values, name="otlp-ingest", namespace="observability")
            assert packaged == helm_render(values)
