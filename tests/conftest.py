"""Shared fixtures: free ports, a real `python -m otlp_ingest serve` subprocess, metric scraping.

`ServerProcess` runs the whole server tree (supervisor, workers, exporters) exactly as a user
would, configured through `OTLP_*` environment variables on ephemeral ports with a per-test data
directory. Teardown SIGTERMs it and asserts it exits 0: every test is also a clean-shutdown test.
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.waiting import free_port, wait_until

REPO_ROOT = Path(__file__).resolve().parent.parent
CHILD_BOOT_EXIT = 3  # errors.ExitCode.CHILD_BOOT: e.g. a port we picked was taken in between
CONFIG_EXIT = 2  # errors.ExitCode.CONFIG: also a port taken before start-up (supervisor/ports.py)


def port_was_taken(code: int | None, log: str) -> bool:
    """Whether a server exited because a port we picked was taken in between (then: new ports)."""
    return code == CHILD_BOOT_EXIT or (code == CONFIG_EXIT and "Address already in use" in log)


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    """(status, body) of a GET; connection errors give status 0."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except (OSError, urllib.error.URLError):
        return 0, b""


@dataclass(frozen=True)
class Sample:
    name: str
    labels: dict[str, str]
    value: float


class Metrics:
    """A parsed /metrics scrape. `value("otlp_receiver_accepted_spans_total", transport="grpc")`
    sums every sample with that name whose labels match the given ones."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.samples: list[Sample] = [
            Sample(s.name, dict(s.labels), float(s.value))
            for family in text_string_to_metric_families(text)
            for s in family.samples
        ]

    def value(self, name: str, **labels: str) -> float:
        return sum(
            s.value
            for s in self.samples
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
        )

    def has(self, name: str) -> bool:
        return any(s.name == name for s in self.samples)

    def as_dict(self) -> dict[str, float]:
        """`name{k="v",...}` -> value, for printing and ad-hoc assertions."""
        out: dict[str, float] = {}
        for s in self.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
        return out


def scrape_metrics(admin_url: str) -> Metrics:
    status, body = http_get(admin_url + "/metrics")
    assert status == 200, f"/metrics answered {status}: {body[:200]!r}"
    return Metrics(body.decode())


@dataclass
class Child:
    role: str  # "worker" | "exporter"
    index: int
    process: psutil.Process


class LoopbackEndpoints:
    """Addresses of a server listening on loopback at `grpc_port`, `http_port` and `admin_port`
    (a server tree here, or a container on the host's network)."""

    grpc_port: int
    http_port: int
    admin_port: int

    @property
    def grpc_endpoint(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"


class ServerProcess(LoopbackEndpoints):
    """`python -m otlp_ingest serve` on free ports; use as a context manager or via the
    `server_factory` fixture. `env` entries override the test defaults below."""

    def __init__(
        self,
        workdir: Path,
        env: dict[str, str] | None = None,
        args: list[str] | None = None,
        nofile: int | None = None,
    ) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.data_dir = self.workdir / "otlp-data"
        self.log_path = self.workdir / "server.log"
        self.extra_env = dict(env or {})
        self.args = list(args or [])
        self.nofile = nofile  # RLIMIT_NOFILE soft limit for the server tree (None: inherited)
        self.proc: subprocess.Popen[bytes] | None = None
        self.returncode: int | None = None
        self.grpc_port = self.http_port = self.admin_port = 0

    # -- lifecycle ------------------------------------------------------------------------------

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        for key in [k for k in env if k.startswith("OTLP_") or k.startswith("OTEL_")]:
            del env[key]  # the developer's shell must not leak into the test's server
        env.update(
            {
                "OTLP_BIND": "127.0.0.1",
                "OTLP_GRPC_PORT": str(self.grpc_port),
                "OTLP_HTTP_PORT": str(self.http_port),
                "OTLP_ADMIN_PORT": str(self.admin_port),
                "OTLP_DATA_DIR": str(self.data_dir),
                "OTLP_WORKERS": "2",
                "OTLP_EXPORTERS": "1",
                "OTLP_BATCH_TIMEOUT": "200ms",
                "OTLP_SHUTDOWN_TIMEOUT": "15s",
                "OTLP_QUEUE_BYTES": "16MiB",
                "OTLP_RETRY_INITIAL_INTERVAL": "50ms",
                "OTLP_RETRY_MAX_INTERVAL": "500ms",
                "OTLP_LOG_LEVEL": "info",
                "PYTHONPATH": str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", ""),
            }
        )
        env.update(self.extra_env)
        return env

    def start(self, ready_timeout: float = 30.0) -> ServerProcess:
        """Start and wait for /ready. Retries with new ports if a picked port was taken."""
        for _attempt in range(3):
            self.grpc_port, self.http_port, self.admin_port = free_port(), free_port(), free_port()
            with open(self.log_path, "ab") as log:
                self.proc = subprocess.Popen(
                    [sys.executable, "-m", "otlp_ingest", "serve", *self.args],
                    cwd=self.workdir,
                    env=self._env(),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    preexec_fn=self._limit_files if self.nofile else None,
                )
            try:
                self.wait_ready(ready_timeout)
                return self
            except AssertionError:
                code = self.proc.poll()
                if port_was_taken(code, self.log_tail()):
                    continue
                self.kill()
                raise
        raise AssertionError(f"server could not start on free ports; log:\n{self.log_tail()}")

    def _limit_files(self) -> None:
        """In the child before exec: lower the descriptor limit the server tree inherits."""
        _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (self.nofile, hard))

    def wait_ready(self, timeout: float = 30.0) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}; log:\n{self.log_tail()}")
            if self.ready():
                return
            time.sleep(0.05)
        raise AssertionError(f"server not ready after {timeout}s; log:\n{self.log_tail()}")

    def ready(self) -> bool:
        return http_get(self.admin_url + "/ready", timeout=2.0)[0] == 200

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait; returns the exit code (kills and fails if it does not exit)."""
        if self.returncode is not None:
            return self.returncode
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.returncode = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                f"server did not exit {timeout}s after SIGTERM; log:\n{self.log_tail()}"
            ) from None
        return self.returncode

    def kill(self) -> None:
        """SIGKILL the whole tree and wait for every process: a crash (kill -9) in fault
        scenarios, and the teardown of a failed test. Children first: they are in their own
        process groups and get SIGTERM when the supervisor dies (PDEATHSIG), a clean stop."""
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            children = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            children = []
        for p in children:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        self.proc.kill()
        self.returncode = self.proc.wait(10)
        psutil.wait_procs(children, timeout=10)

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        code = self.stop()
        assert code == 0, f"server exit code {code}; log:\n{self.log_tail()}"

    # -- introspection --------------------------------------------------------------------------

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def metrics(self) -> Metrics:
        return scrape_metrics(self.admin_url)

    def children(self) -> list[Child]:
        """Live worker/exporter children, found by their `_child <role> <index>` command line."""
        found: list[Child] = []
        for p in psutil.Process(self.pid).children():
            try:
                cmd = p.cmdline()
            except (psutil.NoSuchProcess, psutil.ZombieProcess):
                continue
            if "_child" not in cmd:
                continue
            rest = cmd[cmd.index("_child") + 1 :]
            role = next((r for r in ("worker", "exporter") if r in rest), None)
            if role is None:
                continue
            index = 0
            after = rest[rest.index(role) + 1 :]
            for token in after:
                # "--index 1", "--index=1" or a bare "1" right after the role
                if token.isdigit():
                    index = int(token)
                    break
                if token.startswith("--index="):
                    index = int(token.split("=", 1)[1])
                    break
            if p.status() == psutil.STATUS_ZOMBIE:
                continue
            found.append(Child(role, index, p))
        return found

    def child(self, role: str, index: int = 0) -> Child:
        return wait_until(
            lambda: next((c for c in self.children() if c.role == role and c.index == index), None),
            15.0,
            what=f"{role} {index} process",
        )

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


@pytest.fixture
def server_factory(
    tmp_path: Path, backend_factory: Callable[..., object]
) -> Iterator[Callable[..., ServerProcess]]:
    """`server_factory(env={...}, args=[...], start=True)` -> a started ServerProcess.

    Teardown stops every server still running and asserts exit 0 (a test that stopped its
    server itself checks the code it got). It depends on `backend_factory` only so that servers
    stop (and drain into their backend) before any backend goes away."""
    servers: list[ServerProcess] = []

    def make(
        env: dict[str, str] | None = None, args: list[str] | None = None, start: bool = True
    ) -> ServerProcess:
        server = ServerProcess(tmp_path / f"server{len(servers)}", env, args)
        servers.append(server)
        return server.start() if start else server

    yield make
    failures = []
    for server in servers:
        if server.proc is None or server.returncode is not None:
            continue
        code = server.stop()
        if code != 0:
            failures.append(f"server exit code {code}; log:\n{server.log_tail()}")
    assert not failures, "\n".join(failures)


@pytest.fixture
def backend_factory(tmp_path: Path) -> Iterator[Callable[..., object]]:
    """`backend_factory(**kwargs)` -> a started RecordingBackend (tests/support/backend.py)."""
    started: list[object] = []

    def make(**kwargs: object) -> object:
        from tests.support.backend import RecordingBackend  # imported late: file-sink tests skip it

        backend = RecordingBackend(**kwargs)
        backend.__enter__()
        started.append(backend)
        return backend

    yield make
    for backend in reversed(started):
        backend.__exit__(None, None, None)


@pytest.fixture
def backend(backend_factory: Callable[..., object]) -> object:
    """A running recording backend with no fault injection."""
    return backend_factory()
