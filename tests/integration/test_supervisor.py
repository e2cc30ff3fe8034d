"""The supervisor as a user runs it: `python -m otlp_ingest serve` with real workers and exporters.

Uses `ServerProcess` (tests/conftest.py): free ephemeral ports, a per-test data dir, /ready wait.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest
import requests
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from tests.conftest import ServerProcess, free_port, http_get, wait_until

REPO_ROOT = Path(__file__).resolve().parents[2]

TREE_METRICS = (
    "process_cpu_seconds_total",
    "process_resident_memory_bytes",
    "otlp_exporter_queue_size",
    "otlp_exporter_queue_capacity",
    "otlp_process_up",
    "otlp_process_restarts_total",
)


@pytest.fixture
def server(tmp_path):
    with ServerProcess(tmp_path) as srv:
        yield srv


def test_health_ready_metrics_and_status_page(server):
    assert http_get(server.admin_url + "/health") == (200, b"ok\n")
    assert http_get(server.admin_url + "/ready") == (200, b"ready\n")
    metrics = server.metrics()
    for name in TREE_METRICS:
        assert metrics.has(name), name
    assert metrics.value("otlp_process_up", role="worker") == 2
    assert metrics.value("otlp_process_up", role="exporter") == 1
    assert metrics.value("otlp_exporter_queue_capacity", exporter="0") > 0
    assert metrics.value("process_cpu_seconds_total") > 0
    # The children's own counters are summed in through the multiprocess directory.
    request = trace_service_pb2.ExportTraceServiceRequest()
    span = request.resource_spans.add().scope_spans.add().spans.add()
    span.trace_id, span.span_id, span.name = b"\x01" * 16, b"\x02" * 8, "s"
    response = requests.post(
        server.http_endpoint + "/v1/traces",
        data=request.SerializeToString(),
        headers={"Content-Type": "application/x-protobuf"},
        timeout=10,
    )
    assert response.status_code == 200
    wait_until(
        lambda: server.metrics().value("otlp_receiver_accepted_spans_total", transport="http") == 1,
        10,
        what="accepted span counted",
    )
    status, page = http_get(server.admin_url + "/")  # rendered by its script: test_status_page.py
    assert status == 200 and page.startswith(b"<!doctype html>") and b'fetch("status.json"' in page
    status, body = http_get(server.admin_url + "/status.json")
    names = {p["name"]: p for p in json.loads(body)["processes"]}
    assert status == 200 and names["worker[1]"]["state"] == "ready" and names["exporter[0]"]["pid"]
    assert http_get(server.admin_url + "/nope")[0] == 404


def test_killed_worker_is_restarted_and_counted(server):
    victim = server.child("worker", 1).process
    victim.kill()
    # Not ready while the slot is down, then ready again with a new pid.
    wait_until(
        lambda: server.metrics().value("otlp_process_restarts_total", role="worker") == 1,
        15,
        what="worker restart counted",
    )
    wait_until(server.ready, 15, what="ready again")
    replacement = server.child("worker", 1).process
    assert replacement.pid != victim.pid
    assert server.metrics().value("otlp_process_up", role="worker") == 2
    assert "worker[1] restarted" in server.log_tail()


def test_killed_exporter_is_restarted(server):
    victim = server.child("exporter", 0).process
    victim.kill()
    wait_until(
        lambda: server.metrics().value("otlp_process_restarts_total", role="exporter") == 1,
        15,
        what="exporter restart counted",
    )
    wait_until(server.ready, 15, what="ready again")
    assert server.child("exporter", 0).process.pid != victim.pid


def test_sigterm_when_idle_exits_0_quickly(tmp_path):
    srv = ServerProcess(tmp_path).start()
    children = [c.process for c in srv.children()]
    assert len(children) == 3
    started = time.monotonic()
    assert srv.stop(timeout=15) == 0
    assert time.monotonic() - started < 8
    for child in children:
        assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE
    log = srv.log_tail(200)
    # Upstream first: workers stop before exporters are told to.
    assert log.index("shutdown: workers stopped") < log.index("exporter[0] exited")
    assert not [p for p in os.listdir("/dev/shm") if p.startswith(f"otlp-ingest-{srv.pid}-")]


def test_not_ready_while_draining(tmp_path):
    srv = ServerProcess(tmp_path, env={"OTLP_SHUTDOWN_TIMEOUT": "10s"}).start()
    # Hold a worker so the drain takes a moment: SIGSTOP it, SIGTERM the supervisor.
    worker = srv.child("worker", 0).process
    worker.suspend()
    try:
        srv.proc.send_signal(signal.SIGTERM)
        wait_until(lambda: http_get(srv.admin_url + "/ready")[0] == 503, 5, what="/ready 503 while draining")
        assert http_get(srv.admin_url + "/ready")[1] == b"draining\n"
        assert http_get(srv.admin_url + "/health")[0] == 200
    finally:
        worker.resume()
    assert srv.stop(timeout=15) == 0


def _serve(tmp_path: Path, env: dict[str, str], timeout: float = 30) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if not k.startswith(("OTLP_", "OTEL_"))}
    full.update(
        {
            "PYTHONPATH": str(REPO_ROOT),
            "OTLP_BIND": "127.0.0.1",
            "OTLP_GRPC_PORT": str(free_port()),
            "OTLP_HTTP_PORT": str(free_port()),
            "OTLP_ADMIN_PORT": str(free_port()),
            "OTLP_DATA_DIR": str(tmp_path / "data"),
            "OTLP_WORKERS": "2",
            "OTLP_QUEUE_BYTES": "1MiB",
            "OTLP_SHUTDOWN_TIMEOUT": "10s",
        }
    )
    full.update(env)
    return subprocess.run(
        [sys.executable, "-m", "otlp_ingest", "serve"],
        env=full,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=tmp_path,
    )


def test_otlp_port_in_use_exits_2_before_any_child_starts(tmp_path):
    # A plain listener (no SO_REUSEPORT), as another program would hold the port: the supervisor's
    # own check (supervisor/ports.py) names it before any child starts, instead of workers that
    # halt on their bind (that path stays for a port taken in between: test_receiver.py).
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        started = time.monotonic()
        result = _serve(tmp_path, {"OTLP_GRPC_PORT": str(port)})
    assert result.returncode == 2, result.stderr[-3000:]
    assert time.monotonic() - started < 20
    assert f"cannot listen on grpc port 127.0.0.1:{port}: Address already in use" in result.stderr
    assert f"held by pid {os.getpid()} (" in result.stderr  # this test process holds it
    assert "started (pid" not in result.stderr  # no child was started


def test_admin_port_in_use_halts(tmp_path):
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        result = _serve(tmp_path, {"OTLP_ADMIN_PORT": str(port)})
    assert result.returncode == 2
    assert f"cannot listen on admin port 127.0.0.1:{port}" in result.stderr
    assert "started (pid" not in result.stderr  # no child was started


def test_sighup_reloads_by_rolling_restart(tmp_path):
    conf = tmp_path / "otlp.yaml"
    conf.write_text("batch_size: 100\n")
    srv = ServerProcess(tmp_path, args=["--config", str(conf)]).start()
    try:
        before = {(c.role, c.index): c.process.pid for c in srv.children()}
        # An invalid file is refused and the server keeps running on the old config.
        conf.write_text("batch_size: lots\n")
        srv.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "reload refused" in srv.log_tail(), 10, what="reload refused logged")
        assert srv.ready()
        assert {(c.role, c.index): c.process.pid for c in srv.children()} == before
        # A valid one restarts every child, one at a time.
        conf.write_text("batch_size: 50\n")
        srv.proc.send_signal(signal.SIGHUP)

        def all_replaced() -> bool:
            now = {(c.role, c.index): c.process.pid for c in srv.children()}
            return len(now) == 3 and all(now[k] != before[k] for k in before) and srv.ready()

        wait_until(all_replaced, 30, what="every child restarted with the new config")
        assert srv.metrics().value("otlp_process_restarts_total") == 0  # reloads are not crashes
    finally:
        assert srv.stop() == 0


def test_sigterm_during_a_reload_still_delivers_everything_acknowledged(tmp_path):
    """SIGTERM lands while a SIGHUP reload has just stopped the exporter: records acked by the
    already-restarted worker must still be drained by a replacement exporter (not left behind)."""
    from otlp_ingest.loadgen import PayloadFactory

    factory = PayloadFactory("traces", 5)
    srv = ServerProcess(tmp_path, {"OTLP_WORKERS": "1"}).start()
    url = f"{srv.http_endpoint}/v1/traces"
    acked: list[str] = []
    session = requests.Session()
    session.trust_env = False
    try:
        srv.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 20
        after = 0  # requests acked once the old exporter is stopping (it drained before them)
        while after < 3 and time.monotonic() < deadline:
            if "reload: stopping exporter" in srv.log_tail():
                after += 1
            token = os.urandom(16)
            try:
                response = session.post(
                    url,
                    data=factory.build(token),
                    headers={"Content-Type": "application/x-protobuf"},
                    timeout=5,
                )
            except requests.ConnectionError:
                continue  # the worker is restarting
            if response.status_code == 200:
                acked.extend(factory.keys(token))
    finally:
        code = srv.stop()
    assert code == 0, srv.log_tail()
    assert acked
    delivered = set()
    for path in (srv.data_dir).glob("traces*.jsonl"):
        for line in path.read_bytes().splitlines():
            delivered.update(item_keys_of(line))
    assert set(acked) <= delivered
    assert "were not delivered" not in srv.log_tail()


def item_keys_of(line: bytes) -> list[str]:
    from otlp_ingest.otlp.json_codec import decode_json
    from otlp_ingest.otlp.signals import Signal
    from tests.support.recording_backend import item_keys

    return list(item_keys("traces", decode_json(Signal.TRACES, line)))


def test_exporter_that_cannot_boot_halts_before_workers_start(tmp_path):
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    result = _serve(tmp_path, {"OTLP_DATA_DIR": str(not_a_dir / "data")})
    assert result.returncode == 3, result.stderr[-3000:]
    assert "halting: exporter[0]" in result.stderr
    assert "worker[0] started" not in result.stderr


def test_child_dying_before_ready_halts_after_three_tries(tmp_path, monkeypatch, caplog):
    """Seam: the child command is replaced by a program that exits 1 at once (a crash before
    ready that is not a named boot failure): three in a row, then the supervisor halts."""
    from otlp_ingest.config import Settings
    from otlp_ingest.supervisor import child as child_module
    from otlp_ingest.supervisor.main import Supervisor

    crasher = tmp_path / "crash.sh"
    crasher.write_text("#!/bin/sh\nexit 1\n")
    crasher.chmod(0o755)
    monkeypatch.setattr(child_module.sys, "executable", str(crasher))
    settings = Settings(
        workers=1, bind="127.0.0.1", admin_port=0, data_dir=str(tmp_path), queue_bytes=1 << 20
    )
    started = time.monotonic()
    with caplog.at_level("INFO"):
        code = Supervisor(settings).run()
    assert code == 3
    assert time.monotonic() - started < 10
    messages = [r.getMessage() for r in caplog.records]
    assert sum("exporter[0] started" in m for m in messages) == 3
    assert any("exporter[0] died before becoming ready 3 times in a row" in m for m in messages)
    assert not any("worker[0] started" in m for m in messages)


def test_same_pid_restart_adopts_previous_runs_rings_and_cleans_its_leftovers(tmp_path, monkeypatch):
    """A supervisor restarted with the same pid (PID 1 in every container start; /dev/shm and /tmp
    survive in the pod) adopts the previous run's non-empty rings instead of overwriting them, and
    removes that run's empty `-a<k>` rings and metrics dirs (test_pid1.py does it end to end)."""
    from otlp_ingest.config import Settings
    from otlp_ingest.ring import RingWriter, ring_name, ring_usage
    from otlp_ingest.ring.layout import owner_id
    from otlp_ingest.supervisor import queues

    shm, tmp = tmp_path / "shm", tmp_path / "tmp"
    shm.mkdir(), tmp.mkdir()
    monkeypatch.setenv("OTLP_INGEST_SHM_DIR", str(shm))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    settings = Settings(workers=1, queue_bytes=1 << 20, data_dir=str(tmp_path / "data"))
    pid = os.getpid()

    old = owner_id(pid, 1)
    old_lock = queues.write_destination(old, settings)
    old_ring = queues.create_worker_rings(old, settings, 1, [])[0]
    writer = RingWriter.attach(old_ring)
    assert writer.try_write(1, 1, b"acknowledged")
    writer.close()
    adopted_before: list[str] = []
    # create_ring refuses to overwrite a ring holding records: the old run adopts it as -a0 and
    # gets a fresh empty -w0 (this is also what happens should a name ever repeat).
    assert queues.create_worker_rings(old, settings, 1, adopted_before) == [old_ring]
    assert adopted_before == [f"otlp-ingest-{old}-a0"] and ring_usage(old_ring).records == 0
    queues.create_ring(f"otlp-ingest-{old}-a1", 1 << 20, 10)  # an adopted ring already drained
    (tmp / f"otlp-ingest-metrics-{old}-x").mkdir()
    (tmp / f"otlp-ingest-metrics-{pid}-y").mkdir()  # an older version's name, same pid

    new = owner_id(pid, 2)
    new_lock = queues.write_destination(new, settings)
    try:
        # The old run is alive while it holds its lock: nothing of it is touched.
        assert queues.adopt_stale_rings(new, settings) == []
        assert [os.path.basename(p) for p in queues.wipe_stale_metrics_dirs(new)] == [
            f"otlp-ingest-metrics-{pid}-y"  # a pid-only name with our pid: a previous run
        ]
        os.close(old_lock)  # the old run dies
        adopted = queues.adopt_stale_rings(new, settings)
        queues.wipe_stale(new)
        names = queues.create_worker_rings(new, settings, 1, adopted)
        assert names == [ring_name(new, 0)] and names[0] != old_ring
        assert [ring_usage(n).records for n in adopted] == [1]
        assert sorted(os.listdir(shm)) == sorted([*adopted, names[0], f"otlp-ingest-{new}-dest"])
        assert [os.path.basename(p) for p in queues.wipe_stale_metrics_dirs(new)] == [
            f"otlp-ingest-metrics-{old}-x"
        ]
    finally:
        os.close(new_lock)
