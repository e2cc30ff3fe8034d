"""A second `serve` on ports already served exits 2 with one line naming the port and its holder,
instead of joining the first server's SO_REUSEPORT group (issue 20; supervisor/ports.py)."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import requests

from tests.conftest import ServerProcess
from tests.support.waiting import free_port, wait_until

CONFIG_EXIT = 2  # errors.ExitCode.CONFIG


def _second(tmp_path: Path, grpc_port: int, http_port: int, admin_port: int) -> tuple[int, str, float]:
    """Run a second server on the given ports: (exit code, stderr, seconds it took)."""
    second = ServerProcess(tmp_path / "second")
    second.grpc_port, second.http_port, second.admin_port = grpc_port, http_port, admin_port
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "otlp_ingest", "serve"],
        env=second._env(),
        cwd=second.workdir,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return result.returncode, result.stderr, time.monotonic() - started


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if " ERROR " in line]


def _still_serves(server: ServerProcess) -> None:
    response = requests.post(
        server.http_endpoint + "/v1/traces",
        data=b"",  # an empty ExportTraceServiceRequest
        headers={"Content-Type": "application/x-protobuf"},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    assert server.ready()


def test_second_server_on_the_same_otlp_ports_exits_2_naming_the_holder(server_factory, tmp_path):
    first = server_factory()
    # The start-up log says which interfaces are served (the tests bind 127.0.0.1).
    assert "serving on 127.0.0.1 only (loopback): set OTLP_BIND=0.0.0.0" in first.log_path.read_text()
    code, stderr, took = _second(tmp_path, first.grpc_port, first.http_port, free_port())
    assert code == CONFIG_EXIT, stderr[-3000:]
    assert took < 10, took
    errors = _error_lines(stderr)
    assert len(errors) == 1, errors
    line = errors[0]
    assert f"cannot listen on grpc port 127.0.0.1:{first.grpc_port}: Address already in use" in line
    # The holder is the first server's supervisor (its workers hold the listeners).
    assert f"held by pid {first.pid} (" in line and "otlp_ingest serve" in line, line
    assert "OTLP_GRPC_PORT" in line
    assert "started (pid" not in stderr  # no child of the second server ran
    _still_serves(first)

    # Only the HTTP port shared: refused the same way.
    code, stderr, _took = _second(tmp_path, free_port(), first.http_port, free_port())
    assert code == CONFIG_EXIT, stderr[-3000:]
    assert f"cannot listen on http port 127.0.0.1:{first.http_port}" in _error_lines(stderr)[0]

    # Every port shared: the admin port is checked first, with the same kind of line.
    code, stderr, _took = _second(tmp_path, first.grpc_port, first.http_port, first.admin_port)
    assert code == CONFIG_EXIT, stderr[-3000:]
    (line,) = _error_lines(stderr)
    assert f"cannot listen on admin port 127.0.0.1:{first.admin_port}: Address already in use" in line
    assert f"held by pid {first.pid} (" in line
    _still_serves(first)


def test_ports_stay_reserved_while_no_worker_listens(server_factory):
    """With every worker dead (and the supervisor stopped, so none restarts), the ports are still
    held: a plain bind fails. The reservation never listens: a connection is refused, not queued."""
    first = server_factory()
    supervisor = psutil.Process(first.pid)
    workers = [c.process for c in first.children() if c.role == "worker"]
    assert workers
    os.kill(first.pid, signal.SIGSTOP)
    try:
        for worker in workers:
            worker.kill()
        wait_until(  # zombies: their parent is stopped, but their sockets are closed
            lambda: all(w.status() == psutil.STATUS_ZOMBIE for w in workers if w.is_running()),
            10,
            what="workers dead",
        )
        for port in (first.grpc_port, first.http_port):
            with socket.socket() as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    probe.bind(("127.0.0.1", port))
                except OSError as exc:
                    assert exc.errno == errno.EADDRINUSE
                else:
                    raise AssertionError(f"port {port} was free with the supervisor alive")
            with socket.socket() as client:
                client.settimeout(5)
                assert client.connect_ex(("127.0.0.1", port)) == errno.ECONNREFUSED
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(first.pid, signal.SIGCONT)
    assert supervisor.is_running()
    old = {w.pid for w in workers}

    def restarted() -> bool:  # new workers beside the reservations, and ready (not a stale /ready)
        pids = {c.process.pid for c in first.children() if c.role == "worker"}
        return len(pids) == len(old) and not pids & old and first.ready()

    wait_until(restarted, 30, what="workers restarted and ready")
    _still_serves(first)


def test_start_up_line_names_the_interfaces():
    from otlp_ingest.config import Settings
    from otlp_ingest.supervisor.main import serving_line

    assert Settings().bind == "127.0.0.1"  # loopback unless told otherwise (collector issue #8510)
    assert serving_line(Settings()).startswith("serving on 127.0.0.1 only (loopback)")
    assert serving_line(Settings(bind="localhost")).startswith("serving on localhost only (loopback)")
    assert serving_line(Settings(bind="0.0.0.0")).startswith("serving on all interfaces (0.0.0.0)")
    assert serving_line(Settings(bind="::")).startswith("serving on all interfaces (::)")
    assert serving_line(Settings(bind="10.1.2.3")).startswith("serving on 10.1.2.3 only")
