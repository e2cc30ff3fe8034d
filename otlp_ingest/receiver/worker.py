"""Receiver worker process: OTLP/gRPC and OTLP/HTTP listeners feeding one queue.

The queue is a shared-memory ring, or in durable mode a write-ahead log (`otlp_ingest.queue`):
then a request is answered only once its record is fsynced (group commit, see export.py).

`run_worker` is the whole life of the process (started fresh by the supervisor with fork+exec):
open the queue, bind both ports with SO_REUSEPORT (so every worker binds the same ports and the
kernel spreads connections), report ready, serve until SIGTERM/SIGINT, then stop listening on both
ports at once, let in-flight requests finish within a grace period, close the ring writer and
return 0. Everything process-wide is created here, never at import time.

Threads: uvicorn's asyncio (uvloop) loop runs in the main thread; grpc runs its own thread pool.

Hostile clients (docs/hostile-input.md): uvicorn bounds neither how long a client may take to send
its request headers nor how many connections it holds, so the HTTP listener runs
`DeadlineHttpToolsProtocol`: a request's headers must arrive within `http_read_timeout` of the
connection opening (or of the request's first byte on a kept-alive connection), else 503 +
Retry-After and close once part of a request arrived (OTLP clients retry 503, never 408), or 408
and close for a connection that sent nothing; the body deadline that follows is enforced in
http_app. Connections beyond `http_connection_limit()` are closed at once. uvicorn's own
`limit_concurrency` is not used: it counts idle connections too and answers 503 without
Retry-After, so a flood of idle sockets would turn valid requests into refusals the client cannot
pace itself by.

Authentication (settings.auth_tokens_file, `otlp_ingest.auth`): the worker loads its token store
at boot (a bad file: exit CHILD_BOOT) and hands it to both transports. SIGUSR1 (sent by the
supervisor when the tokens changed) only flags a reload; the event loop then re-reads the tokens,
and so would the next request: no listener or connection is touched.

TLS (settings.tls_*): both ports serve TLS, or mTLS with a client CA. The PEM files are read here,
at worker start, and nowhere else: a SIGHUP rolling restart is how rotated certificates (e.g. a
cert-manager renewal) take effect, one worker at a time and without refusing connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import uvicorn
import uvloop
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from otlp_ingest.auth import TokenFileError, TokenStore
from otlp_ingest.config import Settings
from otlp_ingest.errors import ExitCode
from otlp_ingest.queue import open_writer, parse_queue
from otlp_ingest.receiver.export import ExportService
from otlp_ingest.receiver.grpc_service import build_grpc_server, grpc_address
from otlp_ingest.receiver.http_app import REQUEST_START_EXTENSION, build_http_app, server_ssl_context
from otlp_ingest.telemetry import metrics
from otlp_ingest.telemetry.logging import RateLimitedLogger
from otlp_ingest.telemetry.memory import MemoryGate

log = logging.getLogger(__name__)
_hostile_log = RateLimitedLogger(log)

# File descriptors kept out of the HTTP connection budget: gRPC listener and connections' share is
# the other half (see http_connection_limit), this covers the ring, logs, pipes and the like.
_FD_RESERVE = 256

# Request line plus headers of one request. httptools has no limit of its own (it buffers a header
# value until it ends), so without this a client could send gigabytes of "header" within the
# deadline. OTLP clients send well under 8 KiB; 64 KiB leaves room for large auth tokens.
MAX_HEADER_BYTES = 64 * 1024


def _plain_response(status: bytes, message: bytes) -> bytes:
    return (
        b"HTTP/1.1 " + status + b"\r\ncontent-type: text/plain; charset=utf-8\r\n"
        b"content-length: " + str(len(message)).encode() + b"\r\nconnection: close\r\n\r\n" + message
    )


# Headers started but not finished in time: 503 + Retry-After, which OTLP clients retry (they
# drop the data on 408). A connection that sent nothing gets 408, HTTP's "closing an unused
# connection" (RFC 9110 15.5.9): there is no request to retry, and clients such as Go's transport
# expect exactly that on an idle connection and close it quietly.
_TIMEOUT_RESPONSE = _plain_response(
    b"503 Service Unavailable\r\nretry-after: 1", b"request headers not received in time\n"
)
_IDLE_TIMEOUT_RESPONSE = _plain_response(b"408 Request Timeout", b"no request received in time\n")
_HEADERS_TOO_LARGE_RESPONSE = _plain_response(
    b"431 Request Header Fields Too Large", b"request headers larger than 64 KiB\n"
)


def http_connection_limit() -> int:
    """Open HTTP connections one worker allows: half of the file descriptors left after a reserve.

    The other half stays for gRPC connections, so a flood of idle HTTP sockets can neither make
    accept() fail with EMFILE nor starve the gRPC port of descriptors.
    """
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = 65536
    return max(16, (soft - _FD_RESERVE) // 2)


class DeadlineHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a header deadline, a header size cap and a connection cap.

    `read_timeout` and `max_connections` are set on a subclass by `deadline_protocol`, because
    uvicorn builds protocol instances itself. The deadline runs from the connection opening (or, on
    a kept-alive connection, from the next request's first byte) until the headers are complete;
    when it passes, the client gets 503 + Retry-After (408 if it sent nothing) and the connection
    is closed. Headers beyond
    MAX_HEADER_BYTES get 431 and a close. The request's start is put in the ASGI scope so the app
    holds the body to the same deadline.
    """

    read_timeout: float = 30.0
    max_connections: int = 4096

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_deadline: asyncio.TimerHandle | None = None
        self._request_start = time.monotonic()
        self._header_bytes = 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            _hostile_log.warning(
                "connections",
                "HTTP connection limit (%d) reached: closing new connections",
                self.max_connections,
            )
            transport.close()
            return
        self._arm_header_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_deadline()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        # Still waiting for the end of the headers after this chunk: all of it was header bytes.
        # (Checked after feeding so a chunk holding the headers' end and body bytes is not counted.)
        if self._header_deadline is not None and not self.transport.is_closing():
            self._header_bytes += len(data)
            if self._header_bytes > MAX_HEADER_BYTES:
                _hostile_log.warning(
                    "header-size", "HTTP request headers over %d bytes: closing", MAX_HEADER_BYTES
                )
                self._cancel_header_deadline()
                if self.cycle is None or self.cycle.response_complete:
                    self.transport.write(_HEADERS_TOO_LARGE_RESPONSE)
                self.transport.close()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._header_deadline is None:  # a kept-alive connection's next request
            self._arm_header_deadline()
        self.scope["extensions"] = {REQUEST_START_EXTENSION: self._request_start}

    def on_headers_complete(self) -> None:
        self._cancel_header_deadline()
        super().on_headers_complete()

    def _arm_header_deadline(self) -> None:
        self._request_start = time.monotonic()
        self._header_bytes = 0
        self._header_deadline = self.loop.call_later(self.read_timeout, self._header_timeout)

    def _cancel_header_deadline(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _header_timeout(self) -> None:
        self._header_deadline = None
        if self.transport.is_closing():
            return
        _hostile_log.warning(
            "header-timeout", "HTTP request headers not received within %.1fs: closing", self.read_timeout
        )
        # A pipelined response may still be on its way: only an idle connection gets an answer.
        if self.cycle is None or self.cycle.response_complete:
            self.transport.write(_TIMEOUT_RESPONSE if self._header_bytes else _IDLE_TIMEOUT_RESPONSE)
        self.transport.close()


def deadline_protocol(settings: Settings) -> type[DeadlineHttpToolsProtocol]:
    """The protocol class for uvicorn's `http=` with this worker's timeout and connection cap."""
    return type(
        "WorkerHttpProtocol",
        (DeadlineHttpToolsProtocol,),
        {"read_timeout": settings.http_read_timeout, "max_connections": http_connection_limit()},
    )


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

    `ring_name` is a queue spec (`shm:<ring>`, `wal:<dir>`, or a bare ring name). Returns
    ExitCode.OK after a graceful stop, ExitCode.CHILD_BOOT if the queue cannot be opened or a port
    cannot be bound.
    """
    stop = threading.Event()
    wakeups: list[Callable[[], None]] = []
    reloads: list[Callable[[], None]] = []
    try:
        tokens = TokenStore.for_worker(settings)
    except TokenFileError as exc:
        log.error("worker %d cannot load the bearer tokens: %s", worker_index, exc)
        return ExitCode.CHILD_BOOT

    def on_signal(signum: int, frame: object) -> None:
        # Only record the request; the main coroutine does the work.
        stop.set()
        for wake in wakeups:
            wake()

    def on_reload(signum: int, frame: object) -> None:
        # Installed even without authentication: SIGUSR1's default action would kill the worker.
        if tokens is not None:
            tokens.request_reload()
            for wake in reloads:
                wake()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    previous[signal.SIGUSR1] = signal.signal(signal.SIGUSR1, on_reload)
    try:
        return _run(settings, worker_index, ring_name, notify_ready, stop, wakeups, tokens, reloads)
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
    tokens: TokenStore | None = None,
    reloads: list[Callable[[], None]] | None = None,
) -> int:
    try:
        writer = open_writer(parse_queue(ring_name), settings)
    except Exception as exc:
        log.error("worker %d cannot open queue %s: %s", worker_index, ring_name, exc)
        return ExitCode.CHILD_BOOT
    metrics.count_recovery(getattr(writer, "recovery_report", None))
    # The supervisor's memory limiter flag (None without a limit): one byte read per request.
    service = ExportService(writer, settings, memory=MemoryGate.attach())
    grpc_addr = grpc_address(settings.bind, settings.grpc_port)
    http_addr = grpc_address(settings.bind, settings.http_port)
    try:
        ssl_context = server_ssl_context(settings)
    except OSError as exc:  # ssl.SSLError too: a file replaced by something unreadable since load
        log.error("worker %d cannot load TLS certificate %s: %s", worker_index, settings.tls_cert_file, exc)
        service.close()
        return ExitCode.CHILD_BOOT
    try:
        grpc_server = build_grpc_server(service, settings, tokens)
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
        build_http_app(service, settings, tokens),
        loop="uvloop",
        http=deadline_protocol(settings),
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
        if tokens is not None and reloads is not None:
            reloads.append(lambda: loop.call_soon_threadsafe(tokens.reload_if_requested))
        serving = asyncio.create_task(http_server.serve(sockets=[sock]))
        # uvicorn's startup is immediate with a ready socket; wait for it, or for it to fail.
        while not http_server.started and not serving.done() and not stop.is_set():
            await asyncio.sleep(0.005)
        if not http_server.started:
            http_server.should_exit = True
            await asyncio.gather(serving, return_exceptions=True)
            return False
        log.info(
            "worker %d listening: grpc %s, http %s (%s, %s), queue %s",
            worker_index,
            grpc_addr,
            http_addr,
            _tls_mode(settings),
            f"{len(tokens)} bearer token(s)" if tokens is not None else "no authentication",
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
        service.close()  # refuse anything still arriving, then close the queue (a log: final fsync)
        sock.close()
    if not started:
        if stop.is_set():
            return ExitCode.OK
        log.error("worker %d: HTTP server failed to start on %s", worker_index, http_addr)
        return ExitCode.CHILD_BOOT
    log.info("worker %d stopped", worker_index)
    return ExitCode.OK
