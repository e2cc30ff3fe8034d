"""Kubernetes manifests: render with kustomize, validate every object strictly, pin the invariants.

Built-in kinds: `kubernetes-validate --strict` (Kubernetes OpenAPI schemas shipped with the tool,
offline). CRDs (ServiceMonitor, PrometheusRule, Certificate): strict schemas in crd_schemas.py,
and the PrometheusRule's groups must equal deploy/prometheus/alerts.yml, which promtool checks.
"""

from __future__ import annotations

import base64
import posixpath
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from otlp_ingest.auth import TokenFileError, parse_tokens
from otlp_ingest.config import load_settings
from tests.deploy import sync_prometheusrule
from tests.deploy.crd_schemas import SCHEMAS
from tests.deploy.tools import (
    ALERTS,
    K8S_BASE,
    K8S_DURABLE,
    K8S_PRODUCTION,
    check_crd_objects,
    check_kubernetes_validate_strict,
    find,
    objects,
    rendered,
    run,
    tool,
    workload,
)

OVERLAYS = pytest.mark.parametrize("overlay", [K8S_BASE, K8S_PRODUCTION], ids=["base", "production"])
ALL_OVERLAYS = pytest.mark.parametrize(
    "overlay", [K8S_BASE, K8S_PRODUCTION, K8S_DURABLE], ids=["base", "production", "durable"]
)
BUILTIN_KINDS = {
    "Namespace", "ConfigMap", "Deployment", "Service", "HorizontalPodAutoscaler",
    "PodDisruptionBudget", "NetworkPolicy",
}  # fmt: skip


def _builtin_kinds(overlay: Path) -> set[str]:
    # Production adds the bearer tokens Secret; durable mode inherits it and runs the pods as a
    # StatefulSet (each with its own queue volume) instead.
    if overlay == K8S_BASE:
        return BUILTIN_KINDS
    kinds = BUILTIN_KINDS | {"Secret"}
    return kinds - {"Deployment"} | {"StatefulSet"} if overlay == K8S_DURABLE else kinds


@ALL_OVERLAYS
def test_renders_expected_objects(overlay: Path) -> None:
    kinds = sorted(o["kind"] for o in objects(overlay))
    expected = _builtin_kinds(overlay) | {"ServiceMonitor", "PrometheusRule"}
    if overlay != K8S_BASE:
        expected |= {"Certificate"}
    assert set(kinds) == expected and len(kinds) == len(expected), kinds
    for obj in objects(overlay):
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == "observability", obj["kind"]
        assert obj["metadata"]["labels"]["app.kubernetes.io/name"] == "otlp-ingest", obj["kind"]


@ALL_OVERLAYS
def test_kubernetes_validate_strict(overlay: Path, tmp_path: Path) -> None:
    check_kubernetes_validate_strict(rendered(overlay), _builtin_kinds(overlay), tmp_path)


@ALL_OVERLAYS
def test_crd_objects_match_strict_schemas(overlay: Path) -> None:
    checked = check_crd_objects(objects(overlay), _builtin_kinds(overlay))
    assert checked == (2 if overlay == K8S_BASE else 3)


def test_crd_schemas_reject_typos() -> None:
    monitor = find(objects(K8S_BASE), "ServiceMonitor")
    bad = yaml.safe_load(yaml.safe_dump(monitor))
    bad["spec"]["endpoints"][0]["intervall"] = "15s"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, SCHEMAS[("monitoring.coreos.com/v1", "ServiceMonitor")])


def test_prometheusrule_is_alerts_yml(tmp_path: Path) -> None:
    """One source of rules: the PrometheusRule carries alerts.yml's groups exactly."""
    rule = find(objects(K8S_BASE), "PrometheusRule")
    assert rule["spec"]["groups"] == yaml.safe_load(ALERTS.read_text())["groups"], (
        "deploy/k8s/base/prometheusrule.yaml is stale: run `python -m tests.deploy.sync_prometheusrule`"
    )
    assert (K8S_BASE / "prometheusrule.yaml").read_text() == sync_prometheusrule.render()
    extracted = tmp_path / "rules.yml"
    extracted.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    proc = run([tool("promtool"), "check", "rules", str(extracted)])
    assert proc.returncode == 0, proc.stdout + proc.stderr


def k8s_bytes(quantity: str) -> int:
    """A Kubernetes memory quantity (`256Mi`, `1Gi`, `500M`, plain bytes) in bytes."""
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3, "M": 10**6, "G": 10**9}
    m = re.fullmatch(r"(\d+)([A-Za-z]*)", quantity)
    assert m and (m.group(2) in units or m.group(2) == ""), quantity
    return int(m.group(1)) * units.get(m.group(2), 1)


def _container(objs: list[dict[str, Any]]) -> dict[str, Any]:
    return find(objs, "Deployment")["spec"]["template"]["spec"]["containers"][0]


@OVERLAYS
def test_deployment_lifecycle_resources_security(overlay: Path) -> None:
    objs = objects(overlay)
    deploy = find(objs, "Deployment")
    pod = deploy["spec"]["template"]["spec"]
    container = _container(objs)
    settings = load_settings({}, find(objs, "ConfigMap")["data"])

    assert "replicas" not in deploy["spec"], "the HPA owns replicas"
    assert deploy["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    # SIGTERM drain must finish before the kubelet's SIGKILL.
    assert pod["terminationGracePeriodSeconds"] > settings.shutdown_timeout + 10
    assert container["args"] == ["serve"]
    assert container["resources"] == {
        "requests": {"cpu": "500m", "memory": "1Gi"},
        "limits": {"cpu": "2", "memory": "4Gi"},
    }
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    spread = {c["topologyKey"] for c in pod["topologySpreadConstraints"]}
    assert spread == {"topology.kubernetes.io/zone", "kubernetes.io/hostname"}

    # Writable paths: /tmp, the data dir, /dev/shm (memory-backed, big enough for every ring).
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert mounts["/tmp"] in volumes and "emptyDir" in volumes[mounts["/tmp"]]
    assert mounts[settings.data_dir] in volumes
    shm = volumes[mounts["/dev/shm"]]["emptyDir"]
    assert shm["medium"] == "Memory"
    workers = int(container["resources"]["limits"]["cpu"])  # workers follow the CPU limit
    assert k8s_bytes(shm["sizeLimit"]) > workers * settings.queue_bytes


def test_hpa_pdb() -> None:
    objs = objects(K8S_BASE)
    hpa = find(objs, "HorizontalPodAutoscaler")["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (3, 10)
    targets = {m["resource"]["name"]: m["resource"]["target"]["averageUtilization"] for m in hpa["metrics"]}
    assert targets == {"cpu": 70, "memory": 80}
    assert hpa["behavior"]["scaleDown"]["stabilizationWindowSeconds"] >= 300
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "otlp-ingest"}
    pdb = find(objs, "PodDisruptionBudget")["spec"]
    assert pdb["maxUnavailable"] == 1
    assert pdb["selector"]["matchLabels"] == {"app.kubernetes.io/name": "otlp-ingest"}


def test_production_overlay_adds_mtls_and_backend() -> None:
    objs = objects(K8S_PRODUCTION)
    cert = find(objs, "Certificate", "otlp-ingest-tls")
    assert set(cert["spec"]["usages"]) == {"server auth", "client auth"}
    assert "otlp-ingest.observability.svc" in cert["spec"]["dnsNames"]
    container = _container(objs)
    tls = next(m for m in container["volumeMounts"] if m["name"] == "tls")
    assert tls["readOnly"] is True
    pod = find(objs, "Deployment")["spec"]["template"]["spec"]
    secret = next(v for v in pod["volumes"] if v["name"] == "tls")["secret"]
    assert secret["secretName"] == cert["spec"]["secretName"]
    zones = [c for c in pod["topologySpreadConstraints"] if c["topologyKey"] == "topology.kubernetes.io/zone"]
    # Replaces the base's soft zone spread rather than sitting beside it.
    assert [z["whenUnsatisfiable"] for z in zones] == ["DoNotSchedule"]
    settings = load_settings({}, find(objs, "ConfigMap")["data"])
    assert settings.endpoint, "production forwards to a backend"
    # The base's other volumes survive the strategic merge.
    assert {v["name"] for v in pod["volumes"]} == {"tmp", "data", "shm", "tls", "auth"}


@pytest.mark.parametrize("overlay", [K8S_PRODUCTION, K8S_DURABLE], ids=["production", "durable"])
def test_bearer_tokens_secret_is_mounted_as_an_updatable_file_with_no_tokens_committed(overlay: Path) -> None:
    objs = objects(overlay)
    pod = workload(objs)["spec"]["template"]["spec"]
    container = pod["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    path = env["OTLP_AUTH_TOKENS_FILE"]
    mount = next(m for m in container["volumeMounts"] if m["name"] == "auth")
    # A directory mount: the kubelet updates it in place; a subPath mount would never change.
    assert "subPath" not in mount and mount["readOnly"] is True
    assert posixpath.dirname(path) == mount["mountPath"]
    volume = next(v for v in pod["volumes"] if v["name"] == "auth")["secret"]
    secret = find(objs, "Secret", volume["secretName"])
    # The name carries no content hash, so a token change updates the Secret rather than the pods.
    assert secret["metadata"]["name"] == "otlp-ingest-auth"
    assert set(secret["data"]) == {posixpath.basename(path)}
    placeholder = base64.b64decode(secret["data"][posixpath.basename(path)]).decode()
    # No token is committed: the placeholder parses to nothing (the server refuses to start).
    with pytest.raises(TokenFileError, match="no tokens"):
        parse_tokens(placeholder, "placeholder")


def test_durable_overlay_statefulset_keeps_the_queue_on_a_volume() -> None:
    """Durable mode: the production pod, run by a StatefulSet whose pods each keep OTLP_QUEUE_DIR on
    their own PersistentVolumeClaim, still selected by the Service, HPA and PDB."""
    objs = objects(K8S_DURABLE)
    sts = find(objs, "StatefulSet")["spec"]
    settings = load_settings({}, find(objs, "ConfigMap")["data"])
    assert settings.queue_dir and settings.endpoint

    # The pod template is production's, plus the queue mount and nothing else.
    production_pod = find(objects(K8S_PRODUCTION), "Deployment")["spec"]["template"]
    pod = yaml.safe_load(yaml.safe_dump(sts["template"]))
    mounts = pod["spec"]["containers"][0]["volumeMounts"]
    queue_mount = next(m for m in mounts if m["name"] == "queue")
    mounts.remove(queue_mount)
    assert pod == production_pod
    assert queue_mount["mountPath"] == settings.queue_dir
    assert queue_mount.get("readOnly") is not True

    # One ReadWriteOnce claim per pod, kept when scaled down or deleted (it may hold acked data),
    # big enough for the byte bound plus one partly committed segment per worker's log.
    (claim,) = sts["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "queue"
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    workers = int(pod["spec"]["containers"][0]["resources"]["limits"]["cpu"])
    needed = settings.queue_max_bytes + workers * settings.queue_segment_bytes
    assert k8s_bytes(claim["spec"]["resources"]["requests"]["storage"]) > needed
    assert sts["persistentVolumeClaimRetentionPolicy"] == {"whenScaled": "Retain", "whenDeleted": "Retain"}
    assert "replicas" not in sts, "the HPA owns replicas"
    assert sts["podManagementPolicy"] == "Parallel"

    # Everything that selected the Deployment's pods selects these.
    labels = sts["template"]["metadata"]["labels"]
    assert sts["selector"]["matchLabels"].items() <= labels.items()
    service = find(objs, "Service")
    assert sts["serviceName"] == service["metadata"]["name"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert find(objs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"].items() <= labels.items()
    hpa = find(objs, "HorizontalPodAutoscaler")["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "otlp-ingest"}
    assert workload(objs)["kind"] == "StatefulSet"
