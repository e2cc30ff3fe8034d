"""Receiver worker process: OTLP/gRPC and OTLP/HTTP listeners feeding one ring.

`run_worker` is the whole life of the process (started fresh by the supervisor with fork+exec):
attach the ring, bind both ports with SO_REUSEPORT (so every worker binds the same ports and the
kernel spreads connections), report ready, serve until SIGTERM/SIGINT, then stop listening on both
ports at once, let in-flight requests finish within a grace period, close the ring writer and
return 0. Everything process-wide is created here, never at import time.

Threads: uvicorn's asyncio (uvloop) loop runs in the main thread; grpc runs its own thread pool.

TLS (settings.tls_*): both ports serve TLS, or mTLS with a client CA. The PEM files are read here,
at worker start, and nowhere else: a SIGHUP rolling restart is how rotated certificates (e.g. a
cert-manager renewal) take effect, one worker at a time and without refusing connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import threading
from collections.abc import Callable, Iterator

import uvicorn
import uvloop

from otlp_ingest.config import Settings
from otlp_ingest.errors import ExitCode
from otlp_ingest.receiver.export import ExportService
from otlp_ingest.receiver.grpc_service import build_grpc_server, grpc_address
from otlp_ingest.receiver.http_app import build_http_app, server_ssl_context
from otlp_ingest.ring import RingWriter

log = logging.getLogger(__name__)


def drain_grace(settings: Settings) -> float:
    """Seconds in-flight requests get after SIGTERM. Receivers stop first and must leave most of
    the shutdown budget to the exporters' drain (design: stop upstream first)."""
    return max(0.5, min(10.0, settings.shutdown_timeout / 3))


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


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the worker owns SIGTERM/SIGINT (uvicorn would
    re-raise the signal after shutdown and kill the process before it returns its exit code)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _tls_mode(settings: Settings) -> str:
    if not settings.tls_cert_file:
        return "plaintext"
    return "mTLS" if settings.tls_client_ca_file else "TLS"


def run_worker(
    settings: Settings, worker_index: int, ring_name: str, notify_ready: Callable[[], None]
) -> int:
    """Serve OTLP on settings.grpc_port and settings.http_port until SIGTERM/SIGINT.

    Returns ExitCode.OK after a graceful stop, ExitCode.CHILD_BOOT if the ring cannot be attached
    or a port cannot be bound.
    """
    stop = threading.Event()
    wakeups: list[Callable[[], None]] = []

    def on_signal(signum: int, frame: object) -> None:
        # Only record the request; the main coroutine does the work.
        stop.set()
        for wake in wakeups:
            wake()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        return _run(settings, worker_index, ring_name, notify_ready, stop, wakeups)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _run(
    settings: Settings,
    worker_index: int,
    ring_name: str,
    notify_ready: Callable[[], None],
    stop: threading.Event,
    wakeups: list[Callable[[], None]],
) -> int:
    try:
        writer = RingWriter.attach(ring_name)
    except Exception as exc:
        log.error("worker %d cannot attach ring %s: %s", worker_index, ring_name, exc)
        return ExitCode.CHILD_BOOT
    service = ExportService(writer, settings)
    grpc_addr = grpc_address(settings.bind, settings.grpc_port)
    http_addr = grpc_address(settings.bind, settings.http_port)
    try:
        ssl_context = server_ssl_context(settings)
    except OSError as exc:  # ssl.SSLError too: a file replaced by something unreadable since load
        log.error("worker %d cannot load TLS certificate %s: %s", worker_index, settings.tls_cert_file, exc)
        service.close()
        return ExitCode.CHILD_BOOT
    try:
        grpc_server = build_grpc_server(service, settings)
    except Exception as exc:
        log.error("worker %d cannot bind gRPC %s: %s", worker_index, grpc_addr, exc)
        service.close()
        return ExitCode.CHILD_BOOT
    try:
        sock = reuseport_socket(settings.bind, settings.http_port)
    except OSError as exc:
        log.error("worker %d cannot bind HTTP %s: %s", worker_index, http_addr, exc)
        grpc_server.stop(None)
        service.close()
        return ExitCode.CHILD_BOOT

    grace = drain_grace(settings)
    config = uvicorn.Config(
        build_http_app(service, settings),
        loop="uvloop",
        http="httptools",
        lifespan="off",
        access_log=False,
        log_config=None,  # the supervisor configured logging for this process
        server_header=False,
        timeout_graceful_shutdown=grace,
    )
    if ssl_context is not None:
        # Our context is already loaded and checked. uvicorn serves `config.ssl` once the config is
        # loaded (serve() skips load() then); Config(ssl_context_factory=...) would say the same
        # but needs uvicorn >= 0.47 and pyproject allows >= 0.29.
        config.load()
        config.ssl = ssl_context
    http_server = _Server(config)
    grpc_server.start()

    async def serve() -> bool:
        loop = asyncio.get_running_loop()
        woken = asyncio.Event()
        wakeups.append(lambda: loop.call_soon_threadsafe(woken.set))
        serving = asyncio.create_task(http_server.serve(sockets=[sock]))
        # uvicorn's startup is immediate with a ready socket; wait for it, or for it to fail.
        while not http_server.started and not serving.done() and not stop.is_set():
            await asyncio.sleep(0.005)
        if not http_server.started:
            http_server.should_exit = True
            await asyncio.gather(serving, return_exceptions=True)
            return False
        log.info(
            "worker %d listening: grpc %s, http %s (%s), ring %s",
            worker_index,
            grpc_addr,
            http_addr,
            _tls_mode(settings),
            ring_name,
        )
        notify_ready()
        stop_wait = asyncio.create_task(woken.wait())
        if not stop.is_set():
            await asyncio.wait({serving, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
        stop_wait.cancel()
        # Stop listening on both ports at once, then let in-flight requests finish.
        log.info("worker %d stopping: finishing in-flight requests (grace %.1fs)", worker_index, grace)
        grpc_stopped = grpc_server.stop(grace)
        http_server.should_exit = True
        await serving
        await loop.run_in_executor(None, grpc_stopped.wait, grace + 1.0)
        return True

    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            started = runner.run(serve())
    finally:
        grpc_server.stop(None)
        service.close()  # refuse anything still arriving, then close the ring writer
        sock.close()
    if not started:
        if stop.is_set():
            return ExitCode.OK
        log.error("worker %d: HTTP server failed to start on %s", worker_index, http_addr)
        return ExitCode.CHILD_BOOT
    log.info("worker %d stopped", worker_index)
    return ExitCode.OK
