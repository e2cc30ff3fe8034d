"""Real third-party peers in front of / against the server: fixtures and helpers (issue 20).

- `grpcgo`: the grpc-go client of `tests/peers/grpcgo/main.go`, built once per test session in
  GOPATH mode against Debian's golang-google-grpc-dev, offline, into a cache directory keyed by
  the source's hash (`$XDG_CACHE_HOME` or `~/.cache`, `otlp-ingest-tests/grpcgo-<hash>/`).
- `Nginx`: nginx with `grpc_pass` to a keepalive upstream, the way ingress-nginx runs it; `Haproxy`:
  HAProxy with an h2 frontend and an h2 backend. Each is a foreground subprocess with its own
  config, pid and logs in a temporary directory, listening on an ephemeral port.
- `peer_stack`: one server per test module with connection ageing on (GOAWAY after 0.5 s), a small
  gRPC message limit and bearer tokens, forwarding to a recording backend; `refusing_stack` (one
  per session): a server whose queue is full (its backend refuses everything), so each Export is refused with
  UNAVAILABLE + RetryInfo.
- `mixed_load`: grpcio senders, the OpenTelemetry SDK's gRPC exporter and the grpc-go client
  sending at once through one endpoint, every request in a `Ledger`, reconciled against the
  backend: every span exactly once, every call OK.

A missing tool skips its tests with the reason (`make tools` installs them all).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import struct
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from otlp_ingest.exporter.retry import grpc_retry_delay
from otlp_ingest.loadgen import PayloadFactory, token_for
from otlp_ingest.otlp.signals import SIGNALS, Signal
from tests.conftest import ServerProcess
from tests.faults.load import Load
from tests.support.backend import RecordingBackend
from tests.support.reconcile import ACKED, FAILED, Ledger, Reconciliation, reconcile
from tests.support.waiting import free_port, wait_until

GRPCGO_SOURCE = Path(__file__).with_name("grpcgo")
GOPATH = "/usr/share/gocode"  # Debian's Go library packages (golang-*-dev) install their sources here
TRACES_METHOD = SIGNALS[Signal.TRACES].grpc_method
TOKEN = "peers-token-5b1f0c9e7a3d2468"
MAX_RECV_BYTES = 64 * 1024
# Ageing on every connection: GOAWAY after 0.5 s (jittered by the server), closed 3 s later at
# most. A proxy's upstream connections are then replaced ~10 times while the load runs: enough
# GOAWAYs crossing calls in flight to show a loss, a duplicate or a failed call in every run.
PEER_ENV = {
    "OTLP_GRPC_MAX_CONNECTION_AGE": "500ms",
    "OTLP_GRPC_MAX_CONNECTION_AGE_GRACE": "3s",
    "OTLP_GRPC_MAX_RECV_BYTES": str(MAX_RECV_BYTES),
}
LOAD_SECONDS = 5.0


# --- messages -------------------------------------------------------------------------------------


def over_limit_request() -> bytes:
    """A valid ExportTraceServiceRequest of 512 KiB: 8 times the server's message limit, so that
    the client is still sending when the answer comes (more than the flow-control windows let
    through), and below the proxies' own body limits."""
    request = trace_service_pb2.ExportTraceServiceRequest()
    span = request.resource_spans.add().scope_spans.add().spans.add()
    span.trace_id, span.span_id, span.name = os.urandom(16), os.urandom(8), "x" * (512 * 1024)
    body = request.SerializeToString()
    assert len(body) > MAX_RECV_BYTES
    return body


# Field 1 (resource_spans) announcing 10 bytes of which 2 follow: no protobuf decoder accepts it.
MALFORMED_REQUEST = b"\x0a\x0a\x0a\x00"


def small_request() -> bytes:
    return PayloadFactory(Signal.TRACES, 1).build(os.urandom(16))


# --- the grpc-go client ---------------------------------------------------------------------------


def _cache_root() -> Path:
    """`$XDG_CACHE_HOME` or `~/.cache`, else (no home, read-only home) the temporary directory."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    root = Path(base) / "otlp-ingest-tests"
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError:
        root = Path(tempfile.gettempdir()) / f"otlp-ingest-tests-{os.getuid()}"
        root.mkdir(parents=True, exist_ok=True)
    return root


def build_grpcgo() -> Path:
    """Build the grpc-go client (or reuse the build of the same source); skip without `go`."""
    go = shutil.which("go")
    if go is None:
        pytest.skip("grpc-go client: `go` not found (Debian: golang-go golang-google-grpc-dev; `make tools`)")
    digest = hashlib.sha256()
    for path in sorted(GRPCGO_SOURCE.glob("*.go")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    version = subprocess.run([go, "version"], capture_output=True, text=True, check=False).stdout
    digest.update(version.encode())
    with contextlib.suppress(OSError):  # a grpc-go package upgrade makes a new build
        digest.update(Path(GOPATH, "src/google.golang.org/grpc/version.go").read_bytes())
    out_dir = _cache_root() / f"grpcgo-{digest.hexdigest()[:16]}"
    binary = out_dir / "grpcgo-client"
    if binary.exists():
        return binary
    out_dir.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        # GOPATH mode against the Debian packages: no module proxy, no network.
        "GO111MODULE": "off",
        "GOPATH": GOPATH,
        "GOFLAGS": "",
        "GOCACHE": str(_cache_root() / "go-build"),
        "CGO_ENABLED": "0",
    }
    tmp = out_dir / f"grpcgo-client.{os.getpid()}.tmp"
    result = subprocess.run(
        [go, "build", "-o", str(tmp), "."],
        cwd=GRPCGO_SOURCE,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, (
        "building the grpc-go client failed (is golang-google-grpc-dev installed? `make tools`):\n"
        + result.stderr[-4000:]
    )
    os.replace(tmp, binary)  # atomic: a concurrent session sees the whole binary or none
    return binary


@dataclass
class GoReport:
    """The grpc-go client's report (see main.go): per call index, the code and its details."""

    raw: dict[str, Any]

    @property
    def calls(self) -> list[dict[str, Any]]:
        return self.raw["calls"]

    @property
    def counts(self) -> dict[str, int]:
        return self.raw["counts"]

    @property
    def connections(self) -> int:
        return self.raw["connections"]


class GrpcGo:
    """Runs the built grpc-go client on a list of request messages."""

    def __init__(self, binary: Path, workdir: Path) -> None:
        self.binary = binary
        self.workdir = workdir
        self._runs = 0

    def run(
        self,
        endpoint: str,
        bodies: list[bytes],
        token: str | None = TOKEN,
        timeout: float = 120.0,
        **flags: object,
    ) -> GoReport:
        """Send `bodies` (each at most once) to the trace Export; `flags` are main.go's flags
        (`concurrency=12, rate=3000, duration="5s", conns=2`)."""
        self._runs += 1
        path = self.workdir / f"grpcgo-requests-{self._runs}.bin"
        with open(path, "wb") as f:
            for body in bodies:
                f.write(struct.pack(">I", len(body)) + body)
        args = [str(self.binary), "-addr", endpoint, "-requests", str(path)]
        if token:
            args += ["-token", token]
        for name, value in flags.items():
            args += [f"-{name}", str(value)]
        result = subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)
        path.unlink()
        assert result.returncode == 0, f"grpc-go client exited {result.returncode}: {result.stderr[-2000:]}"
        return GoReport(json.loads(result.stdout))


@pytest.fixture(scope="session")
def grpcgo_binary() -> Path:
    return build_grpcgo()


@pytest.fixture
def grpcgo(grpcgo_binary: Path, tmp_path: Path) -> GrpcGo:
    return GrpcGo(grpcgo_binary, tmp_path)


# --- one exchange, either client ------------------------------------------------------------------

CLIENTS = ("grpcio", "grpc-go")


@dataclass
class Answer:
    code: str  # grpcio's name for the status code: "OK", "RESOURCE_EXHAUSTED", ...
    message: str
    retry_delay: float | None  # RetryInfo's delay in seconds, None without one

    def __str__(self) -> str:
        hint = "" if self.retry_delay is None else f" RetryInfo {self.retry_delay:g}s"
        return f"{self.code} {self.message[:160]!r}{hint}"


_CODE_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}


def grpcio_exchange(endpoint: str, bodies: list[bytes], token: str | None = TOKEN) -> list[Answer]:
    """Trace Exports with plain grpcio, one after the other on one fresh channel."""
    metadata = (("authorization", f"Bearer {token}"),) if token else None
    answers = []
    with grpc.insecure_channel(endpoint, options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
        call = channel.unary_unary(TRACES_METHOD, request_serializer=None, response_deserializer=None)
        for body in bodies:
            try:
                call(body, timeout=10, metadata=metadata)
                answers.append(Answer("OK", "", None))
            except grpc.RpcError as e:
                trailers = e.trailing_metadata()  # type: ignore[attr-defined]
                answers.append(Answer(e.code().name, e.details() or "", grpc_retry_delay(trailers)))  # type: ignore[attr-defined]
    return answers


def exchange(
    client: str, endpoint: str, bodies: list[bytes], request: pytest.FixtureRequest, token: str | None = TOKEN
) -> list[Answer]:
    """`bodies` sent one after the other on one connection by `client` (one of CLIENTS)."""
    if client == "grpcio":
        return grpcio_exchange(endpoint, bodies, token)
    go: GrpcGo = request.getfixturevalue("grpcgo")  # built (or skipped) only when asked for
    report = go.run(endpoint, bodies, token=token, concurrency=1)
    return [
        Answer(
            _CODE_NAMES.get(c["code"], str(c["code"])),
            c["message"],
            None if c["retry_delay_ms"] < 0 else c["retry_delay_ms"] / 1000,
        )
        for c in sorted(report.calls, key=lambda c: c["i"])
    ]


def assert_error_cases(client: str, endpoint: str, request: pytest.FixtureRequest, where: str) -> None:
    """The statuses the server answers reach `client` unchanged: an over-limit message is
    RESOURCE_EXHAUSTED, a malformed one INVALID_ARGUMENT (neither with RetryInfo: retrying cannot
    help), a call without a token UNAUTHENTICATED; and the connection stays usable after each."""
    big, bad, good = over_limit_request(), MALFORMED_REQUEST, small_request()
    answers = exchange(client, endpoint, [big, good, bad, good], request)
    anonymous = exchange(client, endpoint, [good], request, token=None)
    got = [a.code for a in answers + anonymous]
    want = ["RESOURCE_EXHAUSTED", "OK", "INVALID_ARGUMENT", "OK", "UNAUTHENTICATED"]
    detail = "\n".join(
        f"  {label}: {a}"
        for label, a in zip(
            ("over-limit", "valid", "malformed", "valid", "no token"), answers + anonymous, strict=True
        )
    )
    print(f"\nPEER {where} {client} statuses:\n{detail}", flush=True)
    assert got == want, f"{where}, {client}: got {got}, want {want}\n{detail}"
    assert all(a.retry_delay is None for a in answers + anonymous), detail


def assert_refusal_has_retry_info(
    client: str, endpoint: str, request: pytest.FixtureRequest, where: str
) -> None:
    """A full queue's refusal reaches `client` as UNAVAILABLE with its RetryInfo."""
    (answer,) = exchange(client, endpoint, [small_request()], request, token=None)
    print(f"\nPEER {where} {client} refusal: {answer}", flush=True)
    assert answer.code == "UNAVAILABLE" and answer.retry_delay is not None and answer.retry_delay > 0, (
        f"{where}, {client}: {answer}"
    )


# --- proxies --------------------------------------------------------------------------------------


def _wait_listening(proc: subprocess.Popen[bytes], port: int, what: str, log: Callable[[], str]) -> bool:
    """True once `port` accepts connections; False if `proc` exited first (a port clash)."""
    deadline = time.monotonic() + 15.0
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
        time.sleep(0.05)  # polling with a deadline
    raise AssertionError(f"{what} not listening on {port} after 15 s:\n{log()}")


class Proxy:
    """A proxy binary run in the foreground on an ephemeral port, config and logs in `workdir`."""

    name = ""
    binary = ""
    # A request log line of a call that went well: left out of `logs()`.
    uneventful: re.Pattern[str] | None = None

    def __init__(self, upstream_port: int, workdir: Path) -> None:
        self.upstream_port = upstream_port
        self.workdir = Path(tempfile.mkdtemp(prefix=f"{self.name}-", dir=workdir))
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.workdir / "output.log"

    @classmethod
    def require(cls) -> str:
        path = shutil.which(cls.binary) or next(
            (p for p in (f"/usr/sbin/{cls.binary}", f"/sbin/{cls.binary}") if os.path.exists(p)), None
        )
        if path is None:
            pytest.skip(f"{cls.name}: `{cls.binary}` not found (Debian: {cls.binary}; `make tools`)")
        return path

    def config(self) -> str:
        raise NotImplementedError

    def command(self, binary: str, config_path: Path) -> list[str]:
        raise NotImplementedError

    def check(self, binary: str, config_path: Path) -> None:
        """Fail with the proxy's own words if it rejects the config."""

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def logs(self) -> str:
        """The tails of the proxy's logs, without the lines of calls that went well."""
        parts = []
        for path in sorted(self.workdir.glob("*.log")):
            with contextlib.suppress(OSError):
                lines = path.read_text(errors="replace").splitlines()
                notable = [line for line in lines if not (self.uneventful and self.uneventful.search(line))]
                parts.append(
                    f"--- {self.name} {path.name}: {len(lines)} lines, {len(notable)} about trouble;"
                    " the last 40:\n" + "\n".join(notable[-40:])
                )
        return "\n".join(parts)

    def __enter__(self) -> Proxy:
        binary = self.require()
        for _attempt in range(3):
            self.port = free_port()
            config_path = self.workdir / f"{self.name}.conf"
            config_path.write_text(self.config())
            self.check(binary, config_path)
            with open(self.log_path, "ab") as log:
                self.proc = subprocess.Popen(
                    self.command(binary, config_path),
                    cwd=self.workdir,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            if _wait_listening(self.proc, self.port, self.name, self.logs):
                return self
        raise AssertionError(f"{self.name} did not start on a free port:\n{self.logs()}")

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Nginx(Proxy):
    """nginx as ingress-nginx runs it for a gRPC backend: an HTTP/2 listener, `grpc_pass` to an
    upstream with a pool of kept-alive connections (its defaults: keepalive 320, 10000 requests a
    connection, 60 s idle, 1 h at most)."""

    name = "nginx"
    binary = "nginx"
    uneventful = re.compile(r'" 200 upstream=200 grpc=0 ')

    def config(self) -> str:
        d = self.workdir
        # As root the master would switch its workers to `nobody`, who cannot read the test's
        # 0700 directories; as any other user the directive is ignored (with a warning), so omit it.
        user = "user root;" if os.geteuid() == 0 else ""
        temp_paths = "\n".join(
            f"    {kind}_temp_path {d}/{kind}-temp;"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        return f"""
{user}
daemon off;
worker_processes 2;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{ worker_connections 1024; }}
http {{
    log_format grpc '$remote_addr "$request" $status upstream=$upstream_status '
                    'grpc=$sent_trailer_grpc_status rt=$request_time';
    access_log {d}/access.log grpc;
{temp_paths}
    upstream otlp_grpc {{
        server 127.0.0.1:{self.upstream_port};
        keepalive 320;
        keepalive_requests 10000;
        keepalive_timeout 60s;
        keepalive_time 1h;
    }}
    server {{
        listen 127.0.0.1:{self.port} http2;
        client_max_body_size 8m;  # proxy-body-size: ingresses for OTLP raise nginx's 1m
        location / {{
            grpc_connect_timeout 5s;
            grpc_send_timeout 60s;
            grpc_read_timeout 60s;
            grpc_pass grpc://otlp_grpc;
        }}
    }}
}}
"""

    def check(self, binary: str, config_path: Path) -> None:
        result = subprocess.run(
            [*self.command(binary, config_path), "-t"], capture_output=True, text=True, check=False
        )
        assert result.returncode == 0, f"nginx rejects its config:\n{result.stderr}"

    def command(self, binary: str, config_path: Path) -> list[str]:
        return [
            binary,
            "-p",
            str(self.workdir),
            "-c",
            str(config_path),
            "-e",
            str(self.workdir / "error.log"),
        ]


class Haproxy(Proxy):
    """HAProxy terminating HTTP/2 (h2c) and speaking HTTP/2 to the server, connections reused
    across requests (`http-reuse safe`, its default); every request logged to its output."""

    name = "haproxy"
    binary = "haproxy"
    uneventful = re.compile(r" 200 \d+ - - ---- |<BADREQ>")  # <BADREQ>: the readiness probe's connection

    def config(self) -> str:
        return f"""
global
    log stdout format raw local0 info
    maxconn 2000
defaults
    mode http
    log global
    option httplog
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend otlp_grpc
    bind 127.0.0.1:{self.port} proto h2
    default_backend server
backend server
    server s1 127.0.0.1:{self.upstream_port} proto h2
"""

    def check(self, binary: str, config_path: Path) -> None:
        result = subprocess.run(
            [binary, "-c", "-f", str(config_path)], capture_output=True, text=True, check=False
        )
        assert result.returncode == 0, f"haproxy rejects its config:\n{result.stdout}{result.stderr}"

    def command(self, binary: str, config_path: Path) -> list[str]:
        return [binary, "-db", "-f", str(config_path)]


# --- the servers ----------------------------------------------------------------------------------


@dataclass
class Stack:
    server: ServerProcess
    backend: RecordingBackend


@pytest.fixture(scope="module")
def peer_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A recording backend and a server in front of it: connection ageing, a 64 KiB message
    limit, bearer tokens (TOKEN). One per test module; teardown asserts a clean exit."""
    workdir = tmp_path_factory.mktemp("peers")
    tokens = workdir / "tokens"
    tokens.write_text(f"peers: {TOKEN}\n")
    with RecordingBackend() as backend:
        env = {**PEER_ENV, "OTLP_ENDPOINT": backend.grpc_endpoint, "OTLP_AUTH_TOKENS_FILE": str(tokens)}
        with ServerProcess(workdir / "server", env=env) as server:
            yield Stack(server, backend)


@pytest.fixture(scope="session")
def refusing_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A server whose queue is full and stays full: its backend refuses every batch, its queue
    holds 2 requests. Every further Export is refused with UNAVAILABLE + RetryInfo. It never
    changes, so the whole session shares it."""
    workdir = tmp_path_factory.mktemp("refusing")
    with RecordingBackend(fail_first=10**9, fail_code="unavailable", retry_after_s=0.2) as backend:
        env = {
            "OTLP_ENDPOINT": backend.grpc_endpoint,
            "OTLP_WORKERS": "1",  # one ring: the proxy's connections all meet the same full queue
            "OTLP_QUEUE_SIZE": "2",
            "OTLP_RETRY_MAX_ELAPSED": "1h",
        }
        server = ServerProcess(workdir / "server", env=env).start()
        try:
            wait_until(
                lambda: (
                    grpcio_exchange(server.grpc_endpoint, [small_request()], None)[0].retry_delay is not None
                ),
                15.0,
                what="the queue to fill and refuse with RetryInfo",
            )
            yield Stack(server, backend)
        finally:
            backend.control(fail_next=0)  # let it drain, so that it stops cleanly
            code = server.stop()
        assert code == 0, f"server exit code {code}; log:\n{server.log_tail()}"


# --- load through an endpoint and its reconciliation ----------------------------------------------


class ConnectionWatch:
    """Samples the server's established connections on `port` (from /proc/net/tcp, 20 times a
    second) while it runs: how many distinct connections were seen and how many of them were
    gone before it stopped (closed by connection ageing while the load ran)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.seen: set[str] = set()
        self.closed: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="connection-watch")

    def _sample(self) -> set[str]:
        peers = set()
        with open("/proc/net/tcp") as f:
            next(f)
            for line in f:
                fields = line.split()
                local, remote, state = fields[1], fields[2], fields[3]
                if state == "01" and int(local.rsplit(":", 1)[1], 16) == self.port:
                    peers.add(remote)
        return peers

    def _run(self) -> None:
        previous: set[str] = set()
        while not self._stop.wait(0.05):
            now = self._sample()
            self.seen |= now
            self.closed |= previous - now
            previous = now

    def __enter__(self) -> ConnectionWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


class _SdkWarnings(logging.Handler):
    """Collects the SDK exporter's warnings (a transient error it retried is one)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage()[:300])


@dataclass
class LoadResult:
    result: Reconciliation
    ledger: Ledger
    failures: dict[str, int] = field(default_factory=dict)  # "sender: reason" -> requests
    sdk_warnings: list[str] = field(default_factory=list)
    go_connections: int = 0
    server_connections: int = 0
    server_connections_closed: int = 0
    backend_keys: dict[str, int] = field(default_factory=dict)

    def summary(self, scenario: str) -> str:
        r = self.result
        return (
            f"PEER {scenario}: sent={r.sent} acked={r.acked} delivered={r.delivered}"
            f" duplicates={r.duplicates} lost={r.lost} unknown={r.unknown} | requests={r.requests}"
            f" duplicated_requests={self.duplicated_requests()}"
            f" failed_requests={self.ledger.count(FAILED)} failures={self.failures}"
            f" sdk_retries={len(self.sdk_warnings)} grpc_go_connections={self.go_connections}"
            f" server_connections={self.server_connections}"
            f" closed_during_load={self.server_connections_closed}"
        )

    def duplicated_requests(self) -> dict[str, int]:
        """Requests with a span delivered more than once, by client and by what the client was
        told ("grpc-go/acked": the client saw OK, yet the span came twice)."""
        out: dict[str, int] = {}
        for e in self.ledger.entries():
            if any(self.backend_keys.get(k, 0) > 1 for k in e.item_keys()):
                label = f"{e.sender.split('-grpc-')[0]}/{e.outcome}"
                out[label] = out.get(label, 0) + 1
        return out

    def duplicated_keys(self) -> list[str]:
        sent = {k for e in self.ledger.entries() for k in e.item_keys()}
        return [k for k, n in self.backend_keys.items() if n > 1 and k in sent]


def _sdk_sender(endpoint: str, ledger: Ledger, stop: threading.Event, failures: dict[str, int]) -> None:
    """The OpenTelemetry SDK's gRPC span exporter, 20 spans an export, back to back."""
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    from tests.e2e.test_pipeline import make_batch

    exporter = OTLPSpanExporter(
        endpoint=endpoint, insecure=True, timeout=10, headers={"authorization": f"Bearer {TOKEN}"}
    )
    try:
        index = 0
        while not stop.wait(0.02):
            batch, keys = make_batch(Signal.TRACES, 20)
            result = exporter.export(batch)
            ok = result.name == "SUCCESS"
            ledger.record(f"sdk-{index}", keys, ACKED if ok else FAILED, sender="otel-sdk")
            if not ok:
                failures[f"otel-sdk: {result.name}"] = failures.get(f"otel-sdk: {result.name}", 0) + 1
            index += 1
    finally:
        exporter.shutdown()


def settle(backend: RecordingBackend) -> None:
    """Wait until the backend's counts stop moving (batches close after 200 ms)."""
    last: list[dict[str, int]] = [{}]

    def still() -> bool:
        now = backend.counts()
        quiet, last[0] = now == last[0], now
        return quiet

    wait_until(still, 20.0, 0.5, "the backend to settle")


def mixed_load(
    stack: Stack,
    endpoint: str,
    grpcgo: GrpcGo | None,
    seconds: float = LOAD_SECONDS,
    grpcio_senders: int = 2,
    sdk: bool = True,
    go_flags: dict[str, object] | None = None,
) -> LoadResult:
    """Send through `endpoint` for `seconds` with grpcio senders (`tests.faults.load.Load`, one
    channel each), the SDK exporter and the grpc-go client at once; wait until every acked span
    reached the backend (and a moment longer, for late duplicates); reconcile."""
    settle(stack.backend)  # what earlier tests sent must not arrive after the reset
    stack.backend.reset()
    ledger = Ledger()
    failures: dict[str, int] = {}
    sdk_log = logging.getLogger("opentelemetry.exporter.otlp.proto.grpc.exporter")
    warnings = _SdkWarnings()
    sdk_log.addHandler(warnings)
    stop = threading.Event()
    threads: list[threading.Thread] = []
    load = Load(
        SimpleNamespace(grpc_endpoint=endpoint),  # type: ignore[arg-type]
        ledger,
        mix=(("grpc", "traces"),) * grpcio_senders,
        items=10,
        rate=50.0,
        name="grpcio-",
        headers={"authorization": f"Bearer {TOKEN}"},
    )
    go_report: GoReport | None = None
    go_factory = PayloadFactory(Signal.TRACES, 10)
    go_run = os.urandom(8)
    with ConnectionWatch(stack.server.grpc_port) as watch:
        try:
            if grpcio_senders:
                load.start()
            if sdk:
                threads.append(
                    threading.Thread(target=_sdk_sender, args=(endpoint, ledger, stop, failures), daemon=True)
                )
            for t in threads:
                t.start()
            if grpcgo is not None:
                # 12 calls in flight, up to 3000 a second (about what this 2-core machine does):
                # many calls cross each GOAWAY, and the 12 stay below the server's limit of 16
                # calls in flight per worker.
                flags = {"concurrency": 12, "conns": 2, "rate": 3000, **(go_flags or {})}
                count = int(float(flags["rate"]) * seconds) + 1  # type: ignore[arg-type]
                bodies = [go_factory.build(token_for(go_run, i)) for i in range(count)]
                go_report = grpcgo.run(endpoint, bodies, duration=f"{seconds}s", **flags)
            else:
                time.sleep(seconds)  # the load's length: the senders run meanwhile
        finally:
            stop.set()
            if grpcio_senders:
                load.finish()
            for t in threads:
                t.join(30)
            sdk_log.removeHandler(warnings)
    for reason, n in load.errors().items():
        failures[f"grpcio: {reason}"] = n
    if go_report is not None:
        for call in go_report.calls:
            token = token_for(go_run, call["i"])
            outcome = ACKED if call["code"] == 0 else FAILED
            ledger.record(
                token.hex(), lambda t=token: go_factory.keys(t), outcome, sender="grpc-go", items=10
            )
            if outcome != ACKED:
                reason = f"grpc-go: {call['name']} {call['message'][:120]}"
                failures[reason] = failures.get(reason, 0) + 1
    acked = set(ledger.acked_keys())

    def all_acked_arrived() -> dict[str, Any] | None:
        records = stack.backend.records()["traces"]
        return records if acked <= set(records["keys"]) else None

    with contextlib.suppress(AssertionError):  # a loss is reported by the reconciliation below
        wait_until(all_acked_arrived, 20.0, 0.2, "every acked span at the backend")
    time.sleep(1.0)  # batches close after 200 ms: a late duplicate would have arrived by now
    records = stack.backend.records()
    return LoadResult(
        reconcile(ledger, records),
        ledger,
        failures,
        warnings.messages,
        go_report.connections if go_report else 0,
        len(watch.seen),
        len(watch.closed),
        dict(records["traces"]["keys"]),
    )


def assert_exactly_once_and_all_ok(load: LoadResult, scenario: str, proxy: Proxy | None = None) -> None:
    """Every call answered OK (no client saw an error, the SDK retried nothing) and every span at
    the backend exactly once; the load must have been real and the ageing must have happened."""
    print(f"\n{load.summary(scenario)}", flush=True)
    r = load.result
    logs = f"\n{proxy.logs()}" if proxy is not None else ""
    assert r.acked > 0, f"{scenario}: nothing acknowledged{logs}"
    # Without ageing no connection to the server would end while the load runs (nginx keeps its
    # upstream connections 60 s idle, HAProxy and the clients for as long as they are used).
    assert load.server_connections_closed >= 2, f"{load.summary(scenario)}: connection ageing did not happen"
    problems = []
    if load.failures:
        problems.append(f"calls not answered OK: {load.failures}")
    if load.sdk_warnings:
        problems.append(f"the SDK retried {len(load.sdk_warnings)} exports: {load.sdk_warnings[:3]}")
    if r.lost:
        problems.append(f"{r.lost} acknowledged spans lost, e.g. {r.lost_sample}")
    if r.duplicates:
        problems.append(f"{r.duplicates} duplicate spans, e.g. {load.duplicated_keys()[:3]}")
    if r.unknown:
        problems.append(f"{r.unknown} spans at the backend nobody sent")
    assert not problems, f"{load.summary(scenario)}\n" + "\n".join(problems) + logs
