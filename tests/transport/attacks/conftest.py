"""Denial-of-service tests: one abuser against the one worker that legitimate clients use too.

Each test module gets one real server (`ServerProcess`: supervisor, ONE receiver worker, one
exporter, the file sink) so the abuser and the legitimate clients share a worker, its event loop
and its admission budget, with short deadlines (`OTLP_HTTP_READ_TIMEOUT` and `OTLP_WRITE_TIMEOUT`
2 s) so that every defence that waits for a deadline acts within the test.

A test wraps its attack in `attack(transport, reason)` (an `Attack`), which, for the duration:

- runs the legitimate load (`LegitLoad`): a grpcio channel making a small Export call every
  ~20 ms and an HTTP/1.1 keep-alive connection POSTing a small OTLP/protobuf body every ~20 ms,
  both opened fresh for the test; every call must succeed and the p99 latency stay under 1 s;
- samples the worker's RSS (`RssWatch`): the peak may exceed the baseline taken when the attack
  starts by at most `GROWTH_MAX` (an attack that passes `SAFETY_GROWTH` is told to stop, so a
  server without the defence cannot take the machine down with it);
- reads `otlp_transport_defences_total{transport, reason}` from the admin /metrics before and
  after: the expected reason must have been counted (and reasons a test forbids must not);
- checks that the worker was not restarted.

The abuser's own expectations go through `Attack.expect`, so one failing test reports everything
that went wrong at once (what the abuser saw, the legitimate clients, the memory, the counter).
"""

from __future__ import annotations

import contextlib
import http.client
import math
import resource
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import psutil
import pytest

from otlp_ingest.otlp.signals import SIGNALS, Signal
from tests.conftest import ServerProcess, wait_until
from tests.golden import samples

KiB = 1024
MiB = 1024 * KiB
READ_TIMEOUT = 2.0  # OTLP_HTTP_READ_TIMEOUT: headers, bodies and the preface must arrive within this
WRITE_TIMEOUT = 2.0  # OTLP_WRITE_TIMEOUT: unsent response bytes may wait this long for the peer
GROWTH_MAX = 50 * MiB  # the worker's RSS may grow at most this much during an attack
SAFETY_GROWTH = 400 * MiB  # past this the attack is stopped: the defence is missing, the point made
P99_MAX = 1.0  # seconds, legitimate calls during an attack
CALL_TIMEOUT = 5.0  # a legitimate call slower than this has failed
PACE = 0.02  # seconds between two legitimate calls of one client
MIN_LEGIT_CALLS = 10  # per transport: the legitimate clients really were served during the attack
MIN_ATTACK_SECONDS = 1.0  # the legitimate load runs at least this long, even if the abuser is cut off at once
COUNTER = "otlp_transport_defences_total"
TRACE_METHOD = SIGNALS[Signal.TRACES].grpc_method
LEGIT_BODY = samples.build(Signal.TRACES, 1).SerializeToString()
TCP_ESTABLISHED = 1
NOFILE_WANTED = 8192  # 2,000-connection floods, plus the server's answers and the legitimate clients


# ------------------------------------------------------------------------------------ the server


SERVER_ENV = {
    "OTLP_WORKERS": "1",
    "OTLP_HTTP_READ_TIMEOUT": f"{int(READ_TIMEOUT * 1000)}ms",
    "OTLP_WRITE_TIMEOUT": f"{int(WRITE_TIMEOUT * 1000)}ms",
    "OTLP_SHUTDOWN_TIMEOUT": "5s",
}


class Gateway:
    """The module's server. An attack the server has no defence against can leave its worker
    wedged (busy for minutes on what it already read); the next test then gets a fresh server
    (`ensure_healthy`) instead of failing for the previous test's reason."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.replaced = 0
        self.server, self.worker = self._start()

    def _start(self) -> tuple[ServerProcess, psutil.Process]:
        server = ServerProcess(self.workdir / f"server{self.replaced}", env=SERVER_ENV).start()
        return server, server.child("worker", 0).process

    @property
    def grpc_address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.server.grpc_port)

    @property
    def http_address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.server.http_port)

    def healthy(self, timeout: float = 3.0) -> bool:
        """The worker answers a small OTLP/HTTP request within `timeout`."""
        conn = http.client.HTTPConnection(*self.http_address, timeout=timeout)
        try:
            conn.request("POST", "/v1/traces", LEGIT_BODY, headers={"Content-Type": "application/x-protobuf"})
            response = conn.getresponse()
            response.read()
            return response.status == 200
        except (OSError, http.client.HTTPException):
            return False
        finally:
            conn.close()

    def ensure_healthy(self) -> None:
        if self.server.proc is not None and self.server.proc.poll() is None and self.healthy():
            return
        print(f"the server does not answer after the previous test: replacing it\n{self.server.log_tail(10)}")
        self.server.kill()
        self.replaced += 1
        self.server, self.worker = self._start()

    def stop(self) -> None:
        code = self.server.stop()
        assert code == 0, f"server exit code {code}; log:\n{self.server.log_tail()}"


def raise_nofile(wanted: int = NOFILE_WANTED) -> None:
    """Raise this (test) process's soft descriptor limit: the floods open thousands of sockets."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """One server per test module, ONE worker (abuser and legitimate clients share it)."""
    raise_nofile()
    gw = Gateway(Path(tmp_path_factory.mktemp("attacks")))
    try:
        yield gw
    finally:
        gw.stop()


def defences(server: ServerProcess, transport: str, reason: str) -> float:
    """`otlp_transport_defences_total{transport, reason}` now."""
    return server.metrics().value(COUNTER, transport=transport, reason=reason)


# ----------------------------------------------------------------------------- legitimate load


class LegitLoad:
    """Two legitimate clients of the worker under attack, each on its own fresh connection:
    gRPC Export calls (grpcio) and HTTP/1.1 keep-alive POSTs of OTLP/protobuf, every ~20 ms."""

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.stop_event = threading.Event()
        self.latencies: dict[str, list[float]] = {"grpc": [], "http": []}
        self.failures: dict[str, list[str]] = {"grpc": [], "http": []}
        self.threads: list[threading.Thread] = []
        self.channel: grpc.Channel | None = None

    def start(self) -> LegitLoad:
        # A channel of its own (no subchannel shared with an earlier test): a fresh connection.
        self.channel = grpc.insecure_channel(
            self.gw.server.grpc_endpoint, options=[("grpc.use_local_subchannel_pool", 1)]
        )
        export = self.channel.unary_unary(TRACE_METHOD)
        http_conn = http.client.HTTPConnection(*self.gw.http_address, timeout=CALL_TIMEOUT)
        # One call each before the attack: the connections are up, and a server already broken
        # by an earlier test shows here, not as the attack's fault.
        self._grpc_call(export, "warm-up")
        http_conn = self._http_call(http_conn, "warm-up")
        for target, args in ((self._grpc_loop, (export,)), (self._http_loop, (http_conn,))):
            thread = threading.Thread(target=target, args=args, daemon=True, name=target.__name__)
            thread.start()
            self.threads.append(thread)
        return self

    def stop(self) -> None:
        self.stop_event.set()
        for thread in self.threads:
            thread.join(CALL_TIMEOUT * 2)
        if self.channel is not None:
            self.channel.close()

    def _grpc_call(self, export: grpc.UnaryUnaryMultiCallable, what: str = "") -> None:
        started = time.perf_counter()
        try:
            export(LEGIT_BODY, timeout=CALL_TIMEOUT)
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else None
            details = exc.details() if hasattr(exc, "details") else str(exc)
            self.failures["grpc"].append(f"{what or 'call'}: {code} {details!r}"[:300])
            return
        if not what:
            self.latencies["grpc"].append(time.perf_counter() - started)

    def _grpc_loop(self, export: grpc.UnaryUnaryMultiCallable) -> None:
        while not self.stop_event.is_set():
            self._grpc_call(export)
            self.stop_event.wait(PACE)  # pacing, not correctness: a steady trickle

    def _http_call(
        self, conn: http.client.HTTPConnection | None, what: str = ""
    ) -> http.client.HTTPConnection | None:
        """One POST; returns the connection to use next (None: open a new one)."""
        if conn is None:
            conn = http.client.HTTPConnection(*self.gw.http_address, timeout=CALL_TIMEOUT)
        started = time.perf_counter()
        try:
            conn.request("POST", "/v1/traces", LEGIT_BODY, headers={"Content-Type": "application/x-protobuf"})
            response = conn.getresponse()
            body = response.read()
            close = (response.getheader("connection") or "").lower() == "close"
        except (OSError, http.client.HTTPException) as exc:
            self.failures["http"].append(f"{what or 'call'}: {exc!r}"[:300])
            conn.close()
            return None
        if response.status != 200:
            self.failures["http"].append(f"{what or 'call'}: {response.status} {body[:200]!r}")
        elif not what:
            self.latencies["http"].append(time.perf_counter() - started)
        if close:  # the server ages connections out: a client simply reconnects
            conn.close()
            return None
        return conn

    def _http_loop(self, conn: http.client.HTTPConnection | None) -> None:
        try:
            while not self.stop_event.is_set():
                conn = self._http_call(conn)
                self.stop_event.wait(PACE)
        finally:
            if conn is not None:
                conn.close()

    def summary(self) -> str:
        parts = []
        for transport, lat in self.latencies.items():
            parts.append(
                f"{transport}: {len(lat)} ok, {len(self.failures[transport])} failed, "
                f"p99 {p99(lat):.3f}s, max {max(lat, default=0.0):.3f}s"
            )
        return "; ".join(parts)

    def problems(self) -> list[str]:
        out = []
        for transport in ("grpc", "http"):
            lat, failed = self.latencies[transport], self.failures[transport]
            if failed:
                out.append(
                    f"legitimate {transport} calls failed: {len(failed)} "
                    f"(of {len(failed) + len(lat)}), first: {failed[:3]}"
                )
            if len(lat) < MIN_LEGIT_CALLS:
                out.append(f"legitimate {transport} client served only {len(lat)} calls during the attack")
            if lat and p99(lat) >= P99_MAX:
                out.append(
                    f"legitimate {transport} p99 {p99(lat):.3f}s >= {P99_MAX}s "
                    f"(max {max(lat):.3f}s, n={len(lat)})"
                )
        return out


def p99(values: list[float]) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[max(0, math.ceil(len(ordered) * 0.99) - 1)]


# ------------------------------------------------------------------------------------- memory


class RssWatch:
    """The worker's RSS, sampled every 50 ms: its peak above the value at the start."""

    def __init__(self, process: psutil.Process) -> None:
        self.process = process
        self.baseline = self.peak = self._rss()
        self.exceeded = threading.Event()  # past SAFETY_GROWTH: the attack should stop
        self.gone = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="rss-watch")

    def _rss(self) -> int:
        try:
            return self.process.memory_info().rss
        except psutil.Error:
            self.gone = True
            return 0

    def start(self) -> RssWatch:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.05):  # sampling interval
            rss = self._rss()
            self.peak = max(self.peak, rss)
            if self.peak - self.baseline > SAFETY_GROWTH:
                self.exceeded.set()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.peak = max(self.peak, self._rss())

    @property
    def growth(self) -> int:
        return self.peak - self.baseline


# -------------------------------------------------------------------------------- the attack


class Attack:
    """The frame of one attack (see the module docstring). `reason` may be a tuple: any of them."""

    def __init__(
        self, gw: Gateway, transport: str, reason: str | tuple[str, ...] | None, forbid: tuple[str, ...] = ()
    ) -> None:
        self.gw = gw
        self.transport = transport
        self.reasons = (reason,) if isinstance(reason, str) else tuple(reason or ())
        self.forbid = forbid
        self.problems: list[str] = []
        self.notes: list[str] = []
        self.started = 0.0
        self.legit = LegitLoad(gw)
        self.rss: RssWatch | None = None
        self.before: dict[str, float] = {}

    def __enter__(self) -> Attack:
        self.worker_pid = self.gw.worker.pid
        self.before = {r: defences(self.gw.server, self.transport, r) for r in (*self.reasons, *self.forbid)}
        self.rss = RssWatch(self.gw.worker).start()
        self.legit.start()
        self.started = time.monotonic()
        return self

    # -- used by the attack

    @property
    def stopped(self) -> bool:
        """The attack should stop: the worker's memory is past SAFETY_GROWTH (or it is gone)."""
        assert self.rss is not None
        return self.rss.exceeded.is_set() or self.rss.gone

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def expect(self, ok: object, message: str) -> bool:
        """An expectation about what the abuser saw; all are reported together at the end."""
        if not ok:
            self.problems.append(message)
        return bool(ok)

    def note(self, message: str) -> None:
        """What happened, printed with any failure (and with -s)."""
        self.notes.append(message)

    # -- the verdict

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        lasted = self.elapsed()
        if exc_type is None and lasted < MIN_ATTACK_SECONDS:
            time.sleep(MIN_ATTACK_SECONDS - lasted)  # enough legitimate calls to judge them by
        self.legit.stop()
        assert self.rss is not None
        self.rss.stop()
        if exc_type is not None:
            return
        problems = list(self.problems)
        problems += self.legit.problems()
        if self.rss.gone:
            problems.append("the worker process went away during the attack")
        elif self.rss.growth > GROWTH_MAX:
            problems.append(
                f"worker RSS grew by {self.rss.growth / MiB:.0f} MiB (limit {GROWTH_MAX / MiB:.0f} MiB)"
                + (" - attack stopped at the safety limit" if self.rss.exceeded.is_set() else "")
            )
        if self.reasons:
            counted = self._counted()
            if not counted:
                wanted = " or ".join(f'reason="{r}"' for r in self.reasons)
                problems.append(f'{COUNTER}{{transport="{self.transport}", {wanted}}} did not increase')
        for reason in self.forbid:
            after = defences(self.gw.server, self.transport, reason)
            if after > self.before[reason]:
                problems.append(
                    f'{COUNTER}{{transport="{self.transport}", reason="{reason}"}} increased by '
                    f"{after - self.before[reason]:.0f}: that defence must not act here"
                )
        if not self.gw.healthy():
            problems.append("the worker does not answer a small request 3s after the attack ended")
        with contextlib.suppress(AssertionError):
            current = self.gw.server.child("worker", 0).process.pid
            if current != self.worker_pid:
                problems.append(f"the worker was restarted (pid {self.worker_pid} -> {current})")
        summary = [
            f"attack lasted {lasted:.1f}s",
            f"legitimate load: {self.legit.summary()}",
            f"worker RSS growth: {self.rss.growth / MiB:.1f} MiB",
            *self.notes,
        ]
        print("\n".join(summary))
        if problems:
            raise AssertionError("\n".join(["", *problems, "-- what happened:", *summary]))

    def _counted(self) -> bool:
        def increased() -> bool:
            return any(defences(self.gw.server, self.transport, r) > self.before[r] for r in self.reasons)

        try:
            wait_until(increased, 3.0, interval=0.1, what="the defence counter")
            return True
        except AssertionError:
            return False


@pytest.fixture
def attack(gateway: Gateway) -> Callable[..., Attack]:
    """`with attack("grpc", "rapid_reset") as a: ...` (see `Attack`)."""

    gateway.ensure_healthy()

    def make(transport: str, reason: str | tuple[str, ...] | None, forbid: tuple[str, ...] = ()) -> Attack:
        return Attack(gateway, transport, reason, forbid)

    return make


# ------------------------------------------------------------------------------ raw sockets


def raw_socket(
    address: tuple[str, int], rcvbuf: int = 0, sndbuf: int = 0, timeout: float = 5.0
) -> socket.socket:
    """A connected TCP socket; small buffers (set before connecting, so the window scale fits)
    make a peer that does not read, or a flood that must be counted, bite at once."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        if rcvbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        if sndbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        sock.settimeout(timeout)
        sock.connect(address)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except BaseException:
        sock.close()
        raise
    return sock


def tcp_state(sock: socket.socket) -> int:
    """The kernel's TCP state of `sock` (1 ESTABLISHED, 7 CLOSE after a reset, 8 CLOSE_WAIT after
    the peer's FIN), read without consuming anything: a peer that never reads can still tell."""
    try:
        return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0]
    except OSError:
        return 0


def closed_by_server(sock: socket.socket) -> bool:
    return tcp_state(sock) != TCP_ESTABLISHED


def worker_holds(gw: Gateway, sock: socket.socket) -> bool:
    """Whether the worker still has a socket connected to `sock` (it may have closed its end
    with a FIN still queued behind data a never-reading peer will not take)."""
    try:
        port = sock.getsockname()[1]
    except OSError:
        return False
    try:
        conns = gw.worker.net_connections(kind="tcp")
    except psutil.Error:
        return False
    return any(c.raddr and c.raddr[1] == port for c in conns)


def dropped(gw: Gateway, sock: socket.socket) -> bool:
    """The server is done with this connection: closed or reset it, or no longer holds it."""
    return closed_by_server(sock) or not worker_holds(gw, sock)


def wait_closed(socks: list[socket.socket], deadline: float, interval: float = 0.1) -> int:
    """Poll until every socket was closed by the server or `deadline` (monotonic); how many were."""
    while True:
        closed = sum(1 for s in socks if closed_by_server(s))
        if closed == len(socks) or time.monotonic() >= deadline:
            return closed
        time.sleep(interval)  # polling with a deadline


def expect_all_closed(
    a: Attack, socks: list[socket.socket], expected: int, deadline: float, what: str, connected: float
) -> None:
    """Every one of `expected` sockets closed by the server by `deadline` (monotonic), noted."""
    closed = wait_closed(socks, deadline)
    a.note(f"{what}: connected by {connected:.2f}s, {closed} closed by {a.elapsed():.2f}s")
    a.expect(
        closed == len(socks) == expected,
        f"{len(socks) - closed} of {len(socks)} connections still open "
        f"{READ_TIMEOUT + 2.5:.1f}s after the last was opened",
    )


def close_all(socks: list[socket.socket]) -> None:
    for sock in socks:
        with contextlib.suppress(OSError):
            sock.close()


class Sender:
    """Writes to a socket whose peer may stop reading it. What does not go out within the
    socket's timeout is kept for the next call (a flood never loses half a frame), and a closed
    or reset connection is noticed (`closed` says how)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sent = 0
        self.rest = b""
        self.closed = ""
        self.first_blocked: float | None = None  # monotonic: when a write first made no progress

    def send(self, data: bytes = b"") -> str:
        """'ok' (all sent), 'blocked' (the peer stopped reading; the rest is kept) or 'closed'."""
        if self.closed:
            return "closed"
        view = memoryview(self.rest + data if self.rest else data)
        while view:
            try:
                n = self.sock.send(view)
            except TimeoutError:
                self.rest = bytes(view)
                if self.first_blocked is None:
                    self.first_blocked = time.monotonic()
                return "blocked"
            except OSError as exc:
                self.rest = b""
                self.closed = f"send failed: {exc!r}"
                return "closed"
            self.sent += n
            view = view[n:]
        self.rest = b""
        return "ok"

    def flood(self, next_chunk: Callable[[], bytes], until: float, stop: Callable[[], bool]) -> str:
        """Send chunk after chunk until `stop()`, the connection closes or `until` (monotonic)."""
        while True:
            if self.closed:
                return "closed"
            if stop():
                return "stopped"
            if time.monotonic() >= until:
                return "time is up"
            self.send(b"" if self.rest else next_chunk())
