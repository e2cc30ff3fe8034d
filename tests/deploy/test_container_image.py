"""The container image, built with podman and run as an operator following docs/operations.md
would (issue 19): these machines have no Docker daemon and no registry.

`scripts/build-image.sh` builds the Dockerfile on a Debian base it makes with debootstrap (cached
between runs: `localhost/otlp-ingest-base:bookworm` and a tarball in ~/.cache/otlp-ingest). The
containers run as the guide's `podman run` does (read-only, a tmpfs /tmp, a sized /dev/shm, a
named volume, OTLP_ENDPOINT), but with host networking on ephemeral loopback ports (OTLP_BIND=
127.0.0.1 and the three OTLP_*_PORT settings) instead of `-p`: the recording backend listens on
the host's loopback, which a container on a bridge network cannot reach, and every byte of the
test stays on loopback. Every container and volume a test creates is removed at teardown, failed
or not.

Skips only where podman cannot run at all (no binary, or `podman info` fails): CI installs it
with scripts/install-test-tools.sh. `IMAGE ...` lines (size, build time) are printed for -s.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from typing import Any

import psutil
import pytest

from tests.conftest import LoopbackEndpoints, Metrics, http_get, scrape_metrics
from tests.deploy.tools import ROOT
from tests.faults.conftest import settle
from tests.faults.load import Load
from tests.support.backend import RecordingBackend
from tests.support.reconcile import Ledger, reconcile
from tests.support.sdk import finished_spans, span_keys
from tests.support.waiting import free_port, wait_until

# The cold path (debootstrap, then the build) takes 2-3 minutes on 2 cores; pytest-timeout counts
# the module's build fixture against the first test.
pytestmark = pytest.mark.timeout(900)

IMAGE = "localhost/otlp-ingest:test"
BASE = "localhost/otlp-ingest-base:bookworm"
# crun fails on this VM's hybrid cgroups (v1 controllers + a v2 mount); runc works.
PODMAN = ["podman", "--runtime", "runc"]
UID = 10001  # the Dockerfile's USER, and Kubernetes' runAsUser
GRACE_S = 45  # --stop-timeout: the pod's terminationGracePeriodSeconds, above OTLP_SHUTDOWN_TIMEOUT (30s)
# Size budget. What the Dockerfile adds to its base is the venv (measured 100 MB: zstandard 24,
# grpcio 19, pip 16, uvloop 14, the rest small) and a few KB: 130 MB leaves room for dependency
# updates, while a compiler or headers leaking into the runtime stage (gcc alone is ~70 MB, the
# build stage ~460 MB above the base) fail it. The debootstrap base is Debian's python3.11 on
# minbase without docs (measured 129 MB, about python:3.11-slim-bookworm's size); 140 MB holds
# it to that. Total measured 228 MB.
LAYERS_BUDGET_MB = 130
BASE_BUDGET_MB = 140
# The three C extensions (setup.py) must be in the image: without them the slow paths run.
EXTENSIONS = ("otlp_ingest.otlp._wirecheck", "otlp_ingest.receiver._http1scan", "otlp_ingest.ring._records")


def podman(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*PODMAN, *args], capture_output=True, text=True, timeout=timeout)


def _ulimits() -> list[str]:
    """podman's default nofile (1048576) is above this VM's hard limit, and runc then cannot start
    the container; the same values as scripts/build-image.sh."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    nofile = 1048576 if hard == resource.RLIM_INFINITY else hard
    return ["--ulimit", f"nofile={nofile}:{nofile}", "--ulimit", "nproc=4096:4096"]


@pytest.fixture(scope="module")
def image() -> str:
    if shutil.which("podman") is None:
        pytest.skip(
            "podman is not installed (scripts/install-test-tools.sh installs Debian's podman and runc)"
        )
    info = podman("info", "--format", "json")
    if info.returncode != 0:
        pytest.skip(f"podman cannot run on this machine: `podman info` failed: {info.stderr.strip()[-500:]}")
    started = time.monotonic()
    proc = subprocess.run(
        [str(ROOT / "scripts/build-image.sh"), "--tag", IMAGE],
        capture_output=True,
        text=True,
        timeout=840,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, f"build-image.sh failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    summary = [line for line in proc.stdout.splitlines() if line.startswith("build-image:")]
    print(f"\nIMAGE built in {time.monotonic() - started:.0f} s: " + "; ".join(summary), flush=True)
    return IMAGE


class Container(LoopbackEndpoints):
    """One `podman run -d` of the image on free loopback ports, like `ServerProcess` for a server
    tree (the fault suite's `Load` and `settle` take either)."""

    def __init__(self, name: str, env: dict[str, str], volumes: dict[str, str]) -> None:
        self.name = name
        self.env = env
        self.volumes = volumes  # volume name -> mount path
        self.grpc_port = self.http_port = self.admin_port = 0

    def run_args(self) -> list[str]:
        """The operations guide's `podman run`, with host networking on our ports."""
        env = {
            **self.env,
            "OTLP_BIND": "127.0.0.1",  # host networking: not on the machine's other interfaces
            "OTLP_GRPC_PORT": str(self.grpc_port),
            "OTLP_HTTP_PORT": str(self.http_port),
            "OTLP_ADMIN_PORT": str(self.admin_port),
        }
        args = ["run", "-d", "--name", self.name, "--label", "otlp-ingest-test=1", "--network", "host"]
        args += ["--read-only", "--tmpfs", "/tmp", "--shm-size", "256m", "--stop-timeout", str(GRACE_S)]
        args += _ulimits()
        for volume, path in self.volumes.items():
            args += ["-v", f"{volume}:{path}"]
        for key, value in env.items():
            args += ["-e", f"{key}={value}"]
        return [*args, IMAGE]

    def inspect(self) -> dict[str, Any]:
        proc = podman("inspect", "--type", "container", self.name)
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)[0]

    def running(self) -> bool:
        return bool(self.inspect()["State"]["Running"])

    def exit_code(self) -> int:
        return int(self.inspect()["State"]["ExitCode"])

    def logs(self, lines: int = 60) -> str:
        proc = podman("logs", "--tail", str(lines), self.name)
        return proc.stdout + proc.stderr

    def ready(self) -> bool:
        return http_get(self.admin_url + "/ready", timeout=2.0)[0] == 200

    def metrics(self) -> Metrics:
        return scrape_metrics(self.admin_url)

    def exec(self, *command: str) -> str:
        proc = podman("exec", self.name, *command)
        assert proc.returncode == 0, f"podman exec {command}: {proc.stderr}"
        return proc.stdout


class Containers:
    """Creates containers and volumes and removes all of them at the end, failed test or not."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.volume_names: list[str] = []
        self._prefix = f"otlp-ingest-test-{os.getpid()}-{time.monotonic_ns() % 10**9}"

    def volume(self, purpose: str) -> str:
        name = f"{self._prefix}-{purpose}"
        proc = podman("volume", "create", "--label", "otlp-ingest-test=1", name)
        assert proc.returncode == 0, proc.stderr
        self.volume_names.append(name)
        return name

    def run(self, env: dict[str, str], volumes: dict[str, str] | None = None) -> Container:
        """Start a container and wait for /ready; new ports if one we picked was taken meanwhile."""
        for _attempt in range(3):
            container = Container(f"{self._prefix}-{len(self.names)}", env, volumes or {})
            container.grpc_port, container.http_port, container.admin_port = (free_port() for _ in range(3))
            self.names.append(container.name)
            proc = podman(*container.run_args())
            assert proc.returncode == 0, f"podman run failed: {proc.stderr}"
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and container.running() and not container.ready():
                time.sleep(0.1)  # polling with a deadline
            if container.ready():
                return container
            log = container.logs()
            if not container.running() and "Address already in use" in log:
                continue
            raise AssertionError(f"container {container.name} not ready; log:\n{log}")
        raise AssertionError("no free ports in 3 attempts")

    def remove(self) -> None:
        for name in self.names:
            podman("rm", "--force", "--time", "0", name)
        for name in self.volume_names:
            podman("volume", "rm", "--force", name)


@pytest.fixture
def containers(image: str) -> Iterator[Containers]:
    made = Containers()
    try:
        yield made
    finally:
        made.remove()


def _inspect_image(name: str) -> dict[str, Any]:
    proc = podman("image", "inspect", name)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)[0]


def test_image_size_and_contents(image: str) -> None:
    size = _inspect_image(image)["Size"]
    base = _inspect_image(BASE)["Size"]
    mb = 1_000_000  # podman's MB
    print(
        f"\nIMAGE {image}: {size / mb:.0f} MB = base {base / mb:.0f} MB + layers {(size - base) / mb:.0f} MB"
        f" (budgets: layers {LAYERS_BUDGET_MB} MB, base {BASE_BUDGET_MB} MB)",
        flush=True,
    )
    assert (size - base) / mb <= LAYERS_BUDGET_MB, "the runtime stage grew: a compiler, headers or a cache?"
    assert base / mb <= BASE_BUDGET_MB
    info = _inspect_image(image)
    # --format docker keeps it (the OCI format would drop it). podman 4.3 shows it beside Config.
    healthcheck = info.get("Healthcheck") or info["Config"].get("Healthcheck") or {}
    assert "/health" in " ".join(healthcheck.get("Test", [])), info
    assert info["Config"]["User"] == f"{UID}:{UID}"
    checks = [
        "import shutil, sysconfig, os",
        "assert shutil.which('gcc') is None and shutil.which('cc') is None, 'a compiler in the runtime'",
        "assert not os.path.exists(os.path.join(sysconfig.get_path('include'), 'Python.h')), 'headers'",
        *(f"import {module}" for module in EXTENSIONS),
    ]
    args = ["run", "--rm", *_ulimits(), "--network", "none", "--entrypoint", "python", image]
    proc = podman(*args, "-I", "-c", "; ".join(checks))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _sdk_spans(name: str, n: int) -> tuple[list[Any], list[str]]:
    """`n` finished spans made by the OpenTelemetry SDK and the backend's keys for them."""
    spans = finished_spans((f"{name}-{i}" for i in range(n)), service="otlp-ingest-image-test")
    return spans, span_keys(spans)


def _export(container: Container, protocol: str, n: int) -> list[str]:
    """Send `n` spans with the SDK's OTLP exporter over `protocol`; returns their keys."""
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

        exporter: Any = GrpcExporter(endpoint=container.grpc_endpoint, insecure=True, timeout=10)
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

        exporter = HttpExporter(endpoint=f"{container.http_endpoint}/v1/traces", timeout=10)
    spans, keys = _sdk_spans(protocol, n)
    try:
        result = exporter.export(spans)
    finally:
        exporter.shutdown()
    assert result.name == "SUCCESS", f"{protocol} export: {result}"
    return keys


def _delivered_exactly_once(backend: RecordingBackend, keys: list[str], timeout: float = 30) -> None:
    wait_until(lambda: backend.records()["traces"]["items"] >= len(keys), timeout, 0.1, f"{len(keys)} spans")
    got = backend.records()["traces"]["keys"]
    assert got == dict.fromkeys(keys, 1), {k: v for k, v in got.items() if v != 1 or k not in keys}


def _health_status(container: Container) -> str:
    state = container.inspect()["State"]
    # podman 4.3 reports it as State.Healthcheck, later ones (like Docker) as State.Health.
    return (state.get("Health") or state.get("Healthcheck") or {}).get("Status", "")


def test_runs_as_the_operations_guide_says(
    containers: Containers, backend_factory: Callable[..., RecordingBackend]
) -> None:
    backend = backend_factory()
    data = containers.volume("data")
    container = containers.run({"OTLP_ENDPOINT": backend.grpc_endpoint}, {data: "/var/lib/otlp-ingest"})

    # Non-root: the supervisor (PID 1 of the container) and every worker and exporter.
    assert container.exec("id", "-u").strip() == str(UID)
    assert "otlp_ingest" in container.exec("cat", "/proc/1/cmdline")
    supervisor = psutil.Process(container.inspect()["State"]["Pid"])
    tree = [supervisor, *supervisor.children(recursive=True)]
    assert len(tree) >= 3, tree  # supervisor, workers, exporter
    assert {p.uids().effective for p in tree} == {UID}
    assert {p.uids().real for p in tree} == {UID}

    # Spans from the SDK's exporters over both transports, each exactly once at the backend.
    keys = _export(container, "grpc", 25) + _export(container, "http", 25)
    _delivered_exactly_once(backend, keys)

    # The image's HEALTHCHECK, run by podman as the engine would (it has no systemd timer here).
    check = podman("healthcheck", "run", container.name)
    assert check.returncode == 0, check.stdout + check.stderr
    assert _health_status(container) == "healthy", container.inspect()["State"]

    # SIGTERM drains: spans still queued (the batch timeout is 5 s, the backend now slow) are
    # delivered before the exit, 0.
    backend.control(delay_ms=300)
    more = _export(container, "grpc", 20) + _export(container, "http", 20)
    queued = len(keys) + len(more) - backend.records()["traces"]["items"]
    started = time.monotonic()
    stop = podman("stop", container.name, timeout=GRACE_S + 15)
    took = time.monotonic() - started
    assert stop.returncode == 0, stop.stderr
    assert container.exit_code() == 0, container.logs()
    assert took < GRACE_S - 5, f"podman stop took {took:.1f}s: SIGKILLed at the grace period?"
    print(f"\nIMAGE podman stop drained {queued} queued spans and exited 0 in {took:.1f} s", flush=True)
    _delivered_exactly_once(backend, keys + more, timeout=5)


BATCH = 100
ITEMS = 10


def test_durable_volume_survives_sigkill(
    containers: Containers, backend_factory: Callable[..., RecordingBackend]
) -> None:
    # A backend slower than the load (one batch of 100 per 200 ms against ~1600 items/s): when the
    # container dies, acknowledged items wait on the volume and one batch is in flight.
    backend = backend_factory(delay_ms=200)
    queue = containers.volume("queue")
    env = {
        "OTLP_ENDPOINT": backend.grpc_endpoint,
        "OTLP_QUEUE_DIR": "/var/lib/otlp-queue",
        "OTLP_BATCH_SIZE": str(BATCH),
        "OTLP_EXPORT_CONCURRENCY": "1",  # the duplicate bound below is one batch per exporter
    }
    first = containers.run(env, {queue: "/var/lib/otlp-queue"})
    assert "worker-0" in first.exec("ls", "/var/lib/otlp-queue"), "OTLP_QUEUE_DIR ignored"
    ledger = Ledger()
    with Load(first, ledger, items=ITEMS, name="first-") as load:  # type: ignore[arg-type]
        load.wait_acked(100)
        kill = podman("kill", first.name)  # SIGKILL (podman's default) of the whole container
        assert kill.returncode == 0, kill.stderr
    wait_until(lambda: not first.running(), 10, 0.1, "the killed container to stop")
    assert first.exit_code() == 137, first.logs()
    waiting = reconcile(ledger, backend.records()).lost
    assert waiting > 0, "every acked item arrived before the kill: the restart would prove nothing"

    second = containers.run(env, {queue: "/var/lib/otlp-queue"})  # same volume, new ports
    with Load(second, ledger, items=ITEMS, name="second-") as load:  # type: ignore[arg-type]
        load.wait_acked(20)  # new traffic flows next to the recovery
    settle(backend, ledger, timeout=60)
    wait_until(lambda: second.metrics().value("otlp_exporter_queue_size") == 0, 30, 0.2, "empty queues")
    result = reconcile(ledger, backend.records())
    print(f"\nIMAGE {waiting} acknowledged items were only on the volume at the kill", flush=True)
    result.check("image-durable-sigkill", max_duplicates=BATCH + ITEMS)  # one exporter, one batch
    assert second.metrics().value("otlp_queue_quarantined_bytes_total") == 0
    stop = podman("stop", second.name, timeout=GRACE_S + 15)
    assert stop.returncode == 0 and second.exit_code() == 0, second.logs()
