"""Receiver worker process: OTLP/gRPC and OTLP/HTTP listeners feeding one queue.

The queue is a shared-memory ring, or in durable mode a write-ahead log (`otlp_ingest.queue`):
then a request is answered only once its record is fsynced (group commit, see export.py).

`run_worker` is the whole life of the process (started fresh by the supervisor with fork+exec):
open the queue, bind both ports with SO_REUSEPORT (so every worker binds the same ports and the
kernel spreads connections), report ready, serve until SIGTERM/SIGINT, then stop listening on both
ports at once, let in-flight requests finish within a grace period, close the queue writer and
return 0. Everything process-wide is created here, never at import time.

Threads: one uvloop event loop in the main thread serves both ports: HTTP/2 for gRPC
(`h2.H2Connection` + `grpc_service.GrpcReceiver`) and HTTP/1.1 (`http1.HttpConnection` +
`http_app.OtlpHttpApp`). Small requests are decoded and queued inline, in the `data_received`
call that completed them; big bodies go to a 2-thread pool (`dispatch.ExportRunner`). One sweeper
task checks every connection's deadlines about every 0.25 s (header, body and preface deadlines,
stalled gRPC calls, connection ageing, idle keep-alive), so no request arms a timer of its own,
writes out the receiver metrics counted since the last sweep (export.py, `_Series`) and lets the
ring give back pages while writes are slow (ring/layout.py, "Memory follows the load").

Connection ageing (issue "traffic that follows the HPA"): gRPC connections get GOAWAY after
`grpc_max_connection_age` (x0.9-1.1 jitter, as grpc does) and are closed
`grpc_max_connection_age_grace` later; HTTP keep-alive connections are closed after the response
that passes `http_max_connection_age` or `http_max_connection_requests`. Clients reconnect, and
SO_REUSEPORT / the Service spread them again.

Authentication (settings.auth_tokens_file, `otlp_ingest.auth`): the worker loads its token store
at boot (a bad file: exit CHILD_BOOT) and hands it to both transports. SIGUSR1 (sent by the
supervisor when the tokens changed) only flags a reload; the event loop then re-reads the tokens,
and so would the next request: no listener or connection is touched. The handler is installed
even without authentication: SIGUSR1's default action would kill the worker.

Connections per worker: at most `connection_limit()` on each port (half of the file descriptors
left after a reserve each), closed at once beyond it.
"""

from __future__ import annotations

import asyncio
import logging
import random
import resource
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import uvloop

from otlp_ingest.auth import TokenFileError, TokenStore
from otlp_ingest.config import Settings
from otlp_ingest.errors import ExitCode
from otlp_ingest.queue import open_writer, parse_queue
from otlp_ingest.receiver.dispatch import ExportRunner, Receiving
from otlp_ingest.receiver.export import ExportService
from otlp_ingest.receiver.grpc_service import GrpcReceiver
from otlp_ingest.receiver.http_app import OtlpHttpApp
from otlp_ingest.receiver.inflight import (
    grpc_admission_bytes,
    grpc_connection_window,
    memory_limits,
)
from otlp_ingest.receiver.tls import GRPC_ALPN, HTTP_ALPN, server_ssl_context, tls_mode
from otlp_ingest.telemetry import metrics
from otlp_ingest.telemetry.memory import MemoryGate
from otlp_ingest.transport.defences import BodyBudget, Defences
from otlp_ingest.transport.h2 import H2Config, H2Connection
from otlp_ingest.transport.http1 import HttpConfig, HttpConnection

log = logging.getLogger(__name__)

# File descriptors kept out of the connection budgets: the ring, logs, pipes and the like.
_FD_RESERVE = 256
SWEEP_EVERY = 0.25
# grpc's jitter of max_connection_age: +-10%.
AGE_JITTER = 0.1


def connection_limit() -> int:
    """Open connections one worker allows per port: half of the file descriptors left after a
    reserve, so a flood of idle HTTP sockets can neither make accept() fail with EMFILE nor
    starve the gRPC port of descriptors (nor the other way round)."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = 65536
    return max(16, (soft - _FD_RESERVE) // 2)


def drain_grace(settings: Settings) -> float:
    """Seconds in-flight requests get after SIGTERM. Receivers stop first and must leave most of
    the shutdown budget to the exporters' drain (design: stop upstream first)."""
    return max(0.5, min(10.0, settings.shutdown_timeout / 3))


def jittered(age: float) -> float:
    """A connection's own age limit: `age` x [0.9, 1.1), so connections opened together (a
    client fleet after a rollout) do not all reconnect at once. 0 stays 0 (no limit)."""
    return age * (1 - AGE_JITTER + 2 * AGE_JITTER * random.random()) if age > 0 else 0.0


def reuseport_socket(bind: str, port: int) -> socket.socket:
    """A listening TCP socket with SO_REUSEPORT (IPv6 when `bind` is an IPv6 literal)."""
    family = socket.AF_INET6 if ":" in bind else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((bind.strip("[]"), port))
        sock.listen(2048)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def address(bind: str, port: int) -> str:
    """`host:port` for log lines (IPv6 literals in brackets)."""
    host = f"[{bind}]" if ":" in bind and not bind.startswith("[") else bind
    return f"{host}:{port}"


def run_worker(
    settings: Settings, worker_index: int, ring_name: str, notify_ready: Callable[[], None]
) -> int:
    """Serve OTLP on settings.grpc_port and settings.http_port until SIGTERM/SIGINT.

    `ring_name` is a queue spec (`shm:<ring>`, `wal:<dir>`, or a bare ring name). Returns
    ExitCode.OK after a graceful stop, ExitCode.CHILD_BOOT if the queue cannot be opened, a TLS
    file cannot be read or a port cannot be bound.
    """
    try:
        tokens = TokenStore.for_worker(settings)
    except TokenFileError as exc:
        log.error("worker %d cannot load the bearer tokens: %s", worker_index, exc)
        return ExitCode.CHILD_BOOT
    control = _Control(tokens)
    previous = {sig: signal.signal(sig, control.on_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    previous[signal.SIGUSR1] = signal.signal(signal.SIGUSR1, control.on_reload)
    try:
        return _run(_Worker(settings, worker_index, ring_name, notify_ready), control)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@dataclass(frozen=True, slots=True)
class _Worker:
    settings: Settings
    index: int
    ring_name: str
    notify_ready: Callable[[], None]


class _Control:
    """What the signal handlers tell the event loop: stop (SIGTERM/SIGINT) and re-read the tokens
    (SIGUSR1). Handlers only set a flag and wake the loop, which does the work."""

    def __init__(self, tokens: TokenStore | None) -> None:
        self.tokens = tokens
        self.stop = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._woken: asyncio.Event | None = None

    def attach(self, loop: asyncio.AbstractEventLoop) -> asyncio.Event:
        """The event the loop waits on for a stop (set already if one came before the loop)."""
        self._woken = asyncio.Event()
        self._loop = loop
        if self.stop.is_set():
            self._woken.set()
        return self._woken

    def on_stop(self, signum: int, frame: object) -> None:
        self.stop.set()
        if self._loop is not None and self._woken is not None:
            self._loop.call_soon_threadsafe(self._woken.set)

    def on_reload(self, signum: int, frame: object) -> None:
        # Installed even without authentication: SIGUSR1's default action would kill the worker.
        if self.tokens is not None:
            self.tokens.request_reload()
            if self._loop is not None:
                self._loop.call_soon_threadsafe(self.tokens.reload_if_requested)


def _open_listeners(settings: Settings, worker_index: int) -> list[socket.socket] | None:
    sockets: list[socket.socket] = []
    for port, what in ((settings.grpc_port, "gRPC"), (settings.http_port, "HTTP")):
        try:
            sockets.append(reuseport_socket(settings.bind, port))
        except OSError as exc:
            log.error(
                "worker %d cannot bind %s %s: %s", worker_index, what, address(settings.bind, port), exc
            )
            for sock in sockets:
                sock.close()
            return None
    return sockets


def _run(worker: _Worker, control: _Control) -> int:
    settings, worker_index, ring_name = worker.settings, worker.index, worker.ring_name
    try:
        writer = open_writer(parse_queue(ring_name), settings)
    except Exception as exc:
        log.error("worker %d cannot open queue %s: %s", worker_index, ring_name, exc)
        return ExitCode.CHILD_BOOT
    metrics.count_recovery(getattr(writer, "recovery_report", None))
    # The supervisor's memory limiter flag (None without a limit): one byte read per request.
    service = ExportService(writer, settings, memory=MemoryGate.attach())
    try:
        grpc_tls = server_ssl_context(settings, GRPC_ALPN)
        http_tls = server_ssl_context(settings, HTTP_ALPN)
    except OSError as exc:  # ssl.SSLError too: a file replaced by something unreadable since load
        log.error("worker %d cannot load TLS certificate %s: %s", worker_index, settings.tls_cert_file, exc)
        service.close()
        return ExitCode.CHILD_BOOT
    sockets = _open_listeners(settings, worker_index)
    if sockets is None:
        service.close()
        return ExitCode.CHILD_BOOT
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(_serve(worker, control, service, sockets, (grpc_tls, http_tls)))
    finally:
        service.close()  # refuse anything still arriving, then close the queue (a log: final fsync)
        for sock in sockets:
            sock.close()
    log.info("worker %d stopped", worker_index)
    return ExitCode.OK


async def _serve(
    worker: _Worker,
    control: _Control,
    service: ExportService,
    sockets: list[socket.socket],
    tls: tuple[object, object],
) -> None:
    settings, worker_index = worker.settings, worker.index
    loop = asyncio.get_running_loop()
    woken = control.attach(loop)
    runner = ExportRunner(service, loop)
    clock = time.monotonic
    limit = connection_limit()
    grpc_budget = BodyBudget(grpc_admission_bytes(settings, memory_limits(settings)))
    h2_config = H2Config(
        read_timeout=settings.http_read_timeout,
        write_timeout=settings.write_timeout,
        connection_window=grpc_connection_window(grpc_budget.capacity, settings.grpc_max_recv_bytes),
        max_age=settings.grpc_max_connection_age,
        age_grace=settings.grpc_max_connection_age_grace,
    )
    http_config = HttpConfig(
        read_timeout=settings.http_read_timeout,
        write_timeout=settings.write_timeout,
        max_connections=limit,
        max_requests=settings.http_max_connection_requests,
    )
    receiving = Receiving(service, runner, settings, control.tokens)
    grpc_receiver = GrpcReceiver(receiving, grpc_budget)
    http_app = OtlpHttpApp(receiving)
    h2_connections: set[H2Connection] = set()
    http_connections: set[HttpConnection] = set()
    grpc_defences, http_defences = Defences("grpc"), Defences("http")

    def h2_factory() -> H2Connection:
        age = jittered(settings.grpc_max_connection_age)
        return H2Connection(
            grpc_receiver, h2_config, h2_connections, clock, limit, age, grpc_budget, grpc_defences
        )

    def http_factory() -> HttpConnection:
        return HttpConnection(
            http_app,
            http_config,
            http_connections,
            clock,
            jittered(settings.http_max_connection_age),
            http_defences,
        )

    grpc_sock, http_sock = sockets
    servers = [
        await loop.create_server(h2_factory, sock=grpc_sock, ssl=tls[0], backlog=2048),  # type: ignore[arg-type]
        await loop.create_server(http_factory, sock=http_sock, ssl=tls[1], backlog=2048),  # type: ignore[arg-type]
    ]

    async def sweep() -> None:
        while True:
            await asyncio.sleep(SWEEP_EVERY)
            now = clock()
            for conn in (*h2_connections, *http_connections):
                conn.sweep(now)
            service.flush_metrics()
            metrics.count_defences(grpc_defences, http_defences)
            service.trim_queue(now)

    sweeper = loop.create_task(sweep())
    log.info(
        "worker %d listening: grpc %s, http %s (%s), queue %s",
        worker_index,
        address(settings.bind, settings.grpc_port),
        address(settings.bind, settings.http_port),
        tls_mode(settings),
        worker.ring_name,
    )
    worker.notify_ready()
    await woken.wait()

    # Stop listening on both ports at once, then let in-flight requests finish.
    grace = drain_grace(settings)
    log.info("worker %d stopping: finishing in-flight requests (grace %.1fs)", worker_index, grace)
    for server in servers:
        server.close()
    for h2 in list(h2_connections):
        h2.goaway()
    for http in list(http_connections):
        http.drain()
    deadline = clock() + grace
    while (h2_connections or http_connections or runner.busy) and clock() < deadline:
        await asyncio.sleep(0.02)
    for conn in (*h2_connections, *http_connections):
        conn.abort()
    sweeper.cancel()
    await asyncio.sleep(0)  # let the transports close
    runner.close()
    service.flush_metrics()
    metrics.count_defences(grpc_defences, http_defences)
