"""The memory limiter (otlp_ingest/telemetry/memory.py) with a real server, real clients and a
slow recording backend; plus the limit derivation from cgroup files.

The server's limit is chosen relative to its idle usage, measured first on a server without a
limit, so the test means the same on any machine. Big requests from many gRPC and HTTP clients
at once push the tree past the soft limit: clients get UNAVAILABLE + RetryInfo / 503 +
Retry-After, the sampled usage never reaches the hard limit, the server accepts again once the
load stops, and every acknowledged item reaches the backend.
"""

from __future__ import annotations

import http.client
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import psutil
import pytest
from google.rpc import error_details_pb2, status_pb2

from otlp_ingest.loadgen import PayloadFactory, token_for
from otlp_ingest.otlp.signals import SIGNALS, Signal
from otlp_ingest.telemetry.memory import MemoryLimits, MiB, cgroup_memory_limit, resolve_limits
from tests.conftest import ServerProcess, scrape_metrics, wait_until

SOAK = os.environ.get("OTLP_SOAK") == "1"
LOAD_SECONDS = 30.0 if SOAK else 4.0
SPANS = 4000  # ~0.9 MiB per request: big, but far below the 4 MiB gRPC / ring record limits
CLIENTS = 6  # per transport
HEADROOM_MIB = 130  # hard limit above idle usage; soft = hard - SPIKE_MIB
SPIKE_MIB = 80


# --- limit derivation (unit) ------------------------------------------------------------------


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_cgroup_v2_limit_of_our_group(tmp_path: Path) -> None:
    _write(tmp_path / "proc", "0::/kubepods/pod1/ctr\n")
    _write(tmp_path / "cg/kubepods/pod1/ctr/memory.max", "536870912\n")
    _write(tmp_path / "cg/memory.max", "max\n")
    assert cgroup_memory_limit(str(tmp_path / "cg"), str(tmp_path / "proc")) == 512 * MiB


def test_cgroup_v2_namespace_root_and_max(tmp_path: Path) -> None:
    _write(tmp_path / "proc", "0::/\n")
    _write(tmp_path / "cg/memory.max", "1073741824\n")
    assert cgroup_memory_limit(str(tmp_path / "cg"), str(tmp_path / "proc")) == 1024 * MiB
    _write(tmp_path / "cg/memory.max", "max\n")
    assert cgroup_memory_limit(str(tmp_path / "cg"), str(tmp_path / "proc")) is None


def test_cgroup_v1_limit_and_unlimited(tmp_path: Path) -> None:
    _write(tmp_path / "proc", "4:memory:/docker/abc\n3:cpu,cpuacct:/docker/abc\n")
    _write(tmp_path / "cg/memory/docker/abc/memory.limit_in_bytes", str(256 * MiB))
    assert cgroup_memory_limit(str(tmp_path / "cg"), str(tmp_path / "proc")) == 256 * MiB
    _write(tmp_path / "cg/memory/docker/abc/memory.limit_in_bytes", "9223372036854771712")
    assert cgroup_memory_limit(str(tmp_path / "cg"), str(tmp_path / "proc")) is None


def test_no_cgroup_files_is_no_limit(tmp_path: Path) -> None:
    assert cgroup_memory_limit(str(tmp_path / "none"), str(tmp_path / "none")) is None


def test_resolve_limits() -> None:
    # Explicit limit, default spike = 20%.
    assert resolve_limits(1000, 0, lambda: None) == MemoryLimits(hard=1000 * MiB, soft=800 * MiB)
    assert resolve_limits(1000, 100, lambda: None) == MemoryLimits(hard=1000 * MiB, soft=900 * MiB)
    # Derived: 80% of the cgroup limit, soft 80% of that.
    assert resolve_limits(0, 0, lambda: 1000 * MiB) == MemoryLimits(hard=800 * MiB, soft=640 * MiB)
    assert resolve_limits(0, 0, lambda: None) is None
    # A spike as big as the limit would refuse everything: capped at half.
    assert resolve_limits(100, 200, lambda: None) == MemoryLimits(hard=100 * MiB, soft=50 * MiB)
    assert MemoryLimits(hard=1000 * MiB, soft=800 * MiB).resume == 750 * MiB


# --- the server under load --------------------------------------------------------------------


def _retry_info(trailers: tuple[tuple[str, bytes | str], ...]) -> error_details_pb2.RetryInfo | None:
    for key, value in trailers or ():
        if key == "grpc-status-details-bin":
            status = status_pb2.Status.FromString(value)  # type: ignore[arg-type]
            for detail in status.details:
                if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                    info = error_details_pb2.RetryInfo()
                    detail.Unpack(info)
                    return info
    return None


class Tally:
    """What the clients saw. `acked` holds the tokens of acknowledged requests."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.acked: list[bytes] = []
        self.refused = {"grpc": 0, "http": 0}
        self.bad: list[str] = []

    def add(self, transport: str, token: bytes, outcome: str) -> None:
        with self.lock:
            if outcome == "ok":
                self.acked.append(token)
            elif outcome == "refused":
                self.refused[transport] += 1
            else:
                self.bad.append(f"{transport}: {outcome}")


def _grpc_client(
    server: ServerProcess,
    factory: PayloadFactory,
    tokens: Callable[[], bytes],
    tally: Tally,
    stop: threading.Event,
) -> None:
    method = "/" + SIGNALS[Signal.TRACES].grpc_service + "/Export"
    with grpc.insecure_channel(server.grpc_endpoint) as channel:
        call = channel.unary_unary(method)
        while not stop.is_set():
            token = tokens()
            try:
                call(factory.build(token), timeout=10)
                tally.add("grpc", token, "ok")
            except grpc.RpcError as exc:
                info = _retry_info(exc.trailing_metadata())  # type: ignore[attr-defined]
                if exc.code() == grpc.StatusCode.UNAVAILABLE and info is not None:  # type: ignore[attr-defined]
                    tally.add("grpc", token, "refused")
                    stop.wait(0.02)  # a real client backs off; keep the pressure on
                else:
                    tally.add("grpc", token, f"{exc.code()} retry_info={info}")  # type: ignore[attr-defined]


def _http_client(
    server: ServerProcess,
    factory: PayloadFactory,
    tokens: Callable[[], bytes],
    tally: Tally,
    stop: threading.Event,
) -> None:
    host, port = server.http_endpoint.removeprefix("http://").rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        while not stop.is_set():
            token = tokens()
            conn.request(
                "POST", "/v1/traces", factory.build(token), {"Content-Type": "application/x-protobuf"}
            )
            response = conn.getresponse()
            response.read()
            if response.status == 200:
                tally.add("http", token, "ok")
            elif response.status == 503 and (response.getheader("Retry-After") or "").isdigit():
                tally.add("http", token, "refused")
                stop.wait(0.02)
            else:
                tally.add("http", token, f"HTTP {response.status} {response.getheader('Retry-After')}")
    finally:
        conn.close()


def _anon_by_process(server: ServerProcess) -> str:
    """Diagnostics: anonymous RSS of each process of the tree, in MiB."""
    parts = [f"usage {_usage(server) / MiB:.0f} MiB"]
    for child in [None, *server.children()]:
        pid = server.pid if child is None else child.process.pid
        info = psutil.Process(pid).memory_info()
        parts.append(f"{'supervisor' if child is None else child.role}: {(info.rss - info.shared) / MiB:.0f}")
    return ", ".join(parts)


def _usage(server: ServerProcess) -> float:
    return scrape_metrics(server.admin_url).value("otlp_memory_usage_bytes")


def test_overload_past_the_memory_limit(server_factory, backend_factory) -> None:
    backend = backend_factory(delay_ms=40)  # slower than the clients: the rings fill, memory rises
    env = {"OTLP_ENDPOINT": backend.grpc_endpoint, "OTLP_EXPORT_INSECURE": "true"}

    # Idle usage of this tree on this machine, measured with a limit far above it.
    probe = server_factory(env={**env, "OTLP_MEMORY_LIMIT_MIB": "100000"})
    wait_until(lambda: _usage(probe) > 0, timeout=10)
    idle = max(_usage(probe) for _ in range(5))
    assert probe.stop() == 0

    hard_mib = int(idle / MiB) + HEADROOM_MIB
    server = server_factory(
        env={**env, "OTLP_MEMORY_LIMIT_MIB": str(hard_mib), "OTLP_MEMORY_SPIKE_LIMIT_MIB": str(SPIKE_MIB)}
    )
    m = server.metrics()
    assert m.value("otlp_memory_limit_bytes") == hard_mib * MiB
    assert m.value("otlp_memory_soft_limit_bytes") == (hard_mib - SPIKE_MIB) * MiB
    assert m.value("otlp_memory_refusing") == 0

    factory = PayloadFactory(Signal.TRACES, SPANS)
    run_id = os.urandom(8)
    counter = iter(range(1 << 62))
    counter_lock = threading.Lock()

    def tokens() -> bytes:
        with counter_lock:
            return token_for(run_id, next(counter))

    tally = Tally()
    stop = threading.Event()
    peak = 0.0
    refusing_seen = False
    threads = [
        threading.Thread(target=client, args=(server, factory, tokens, tally, stop), daemon=True)
        for client in (_grpc_client, _http_client)
        for _ in range(CLIENTS)
    ]
    for t in threads:
        t.start()
    deadline = time.monotonic() + LOAD_SECONDS
    while time.monotonic() < deadline:  # sample the limiter's own figure, as often as it does
        m = server.metrics()
        peak = max(peak, m.value("otlp_memory_usage_bytes"))
        refusing_seen = refusing_seen or m.value("otlp_memory_refusing") == 1
        stop.wait(0.1)
    stop.set()
    for t in threads:
        t.join(timeout=15)

    print(
        f"idle {idle / MiB:.0f} MiB, hard {hard_mib} MiB, soft {hard_mib - SPIKE_MIB} MiB, "
        f"peak {peak / MiB:.0f} MiB, acked {len(tally.acked)}, refused {tally.refused}"
    )
    assert not tally.bad, tally.bad[:5]
    assert refusing_seen
    assert tally.refused["grpc"] > 0 and tally.refused["http"] > 0
    assert peak < hard_mib * MiB, f"usage {peak / MiB:.0f} MiB reached the hard limit {hard_mib} MiB"
    m = server.metrics()
    assert m.value("otlp_memory_limit_trips_total") >= 1
    assert m.value("otlp_receiver_requests_total", transport="grpc", signal="traces", outcome="refused") > 0
    assert m.value("otlp_receiver_requests_total", transport="http", signal="traces", outcome="refused") > 0

    # Load gone: the exporters drain, the workers give memory back, the flag drops.
    def accepting() -> bool:
        try:
            return server.metrics().value("otlp_memory_refusing") == 0
        except AssertionError:  # one scrape failed on the busy 2-core machine: poll again
            return False

    try:
        wait_until(accepting, timeout=20)
    except AssertionError:
        raise AssertionError(f"still refusing: {_anon_by_process(server)}") from None
    after = os.urandom(8)
    conn = http.client.HTTPConnection(*server.http_endpoint.removeprefix("http://").rsplit(":", 1))
    conn.request(
        "POST", "/v1/traces", factory.build(token_for(after, 0)), {"Content-Type": "application/x-protobuf"}
    )
    assert conn.getresponse().status == 200
    conn.close()
    tally.acked.append(token_for(after, 0))

    # Everything acknowledged is delivered.
    backend.wait_for_items("traces", len(tally.acked) * SPANS, timeout=60)
    delivered = {key.split(":", 1)[0] for key in backend.records()["traces"]["keys"]}
    missing = [t.hex() for t in tally.acked if t.hex() not in delivered]
    assert not missing, f"{len(missing)} acknowledged requests not delivered"


@pytest.mark.parametrize("limit", ["0"])
def test_no_cgroup_limit_means_no_limiter(server_factory, limit: str) -> None:
    """Without a cgroup limit and with OTLP_MEMORY_LIMIT_MIB=0 the limiter is off (gauges 0)."""
    if cgroup_memory_limit() is not None:
        pytest.skip("this machine has a cgroup memory limit")
    server = server_factory(env={"OTLP_MEMORY_LIMIT_MIB": limit})
    m = server.metrics()
    assert m.value("otlp_memory_limit_bytes") == 0
    assert m.value("otlp_memory_refusing") == 0
