"""Admin HTTP endpoint in the supervisor: /health, /ready, /metrics, /status.json and the page at /.

uvicorn (its h11 protocol) and starlette on one event loop, on one thread of the supervisor (safe:
the supervisor never forks bare). The supervisor binds the listening socket itself (`listen_socket`),
before any child starts, so a taken port fails start-up; uvicorn is handed that socket and never
installs signal handlers (the supervisor owns signals, house rule 1). The handlers only read: the
supervisor publishes an immutable `TreeSnapshot` after each change and they read whichever
snapshot is current.

- `/health`  200 "ok" while the supervisor runs.
- `/ready`   200 "ready" when every worker and exporter reported ready and we are not draining;
             else 503 with the reason (load balancers and the Kubernetes readiness probe).
- `/metrics` Prometheus text: every process's counters summed, plus tree-wide gauges.
- `/status.json`  the live status document (supervisor/status.py; fields in docs/operations.md).
- `/`        the status page: one static HTML file with its script inline (status_page.html, no
             build step, nothing from elsewhere) that polls `status.json` every second while the
             tab is visible. Served from memory: read once when the server starts.

The port is network-facing (house rule 13), and the supervisor is PID 1 in the container: no
client may grow it. Every bound, and the `reason` it is counted under in
`otlp_transport_defences_total{transport="admin"}`:

- open connections: `OTLP_ADMIN_MAX_CONNECTIONS` (128). At the cap a new connection closes the
  oldest one still waiting for a request head (so a flood of idle or half-sent connections cannot
  lock the probes out), or is itself closed when none waits: `connection_limit`.
- request head (and body) arrival: `OTLP_ADMIN_HEADER_TIMEOUT` (10s) from the connection's start
  or the end of the previous answer, then close: `header_timeout` / `body_timeout`.
- request head size: `MAX_HEAD_BYTES` (16 KiB, also h11's incomplete-event limit), then 431 and
  close: `header_too_large`; requests pipelined behind one being answered, the same bound (abort).
  A malformed request: 400 and close (h11's parser): `bad_request`.
- an answer the client does not take: `SEND_TIMEOUT` (30s) from the request to the answer's last
  byte, then abort: `send_timeout`.
- an idle keep-alive connection: closed after `KEEP_ALIVE` (5s); normal, not counted.
- requests in progress: uvicorn's `limit_concurrency` at twice the connection cap, a backstop the
  cap keeps out of reach (503 if ever reached): `concurrency_limit`.

Defences are logged at most once per `LOG_EVERY` seconds per reason (`RateLimitedLogger`, with the
number suppressed since); uvicorn's own per-request warnings are silenced (a client could
otherwise fill the log).

/metrics and /status.json are built on a pool of `RENDER_THREADS` threads, so a slow scrape does
not hold the loop (and /health) up; everything else answers on the loop.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import logging
import os
import socket
import threading
from collections.abc import Callable, Iterator
from importlib import resources
from typing import Any

import h11
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.values import MultiProcessValue

from otlp_ingest import __version__
from otlp_ingest.telemetry.collect import TreeSnapshot, render_metrics
from otlp_ingest.telemetry.logging import RateLimitedLogger
from otlp_ingest.telemetry.metrics import TRANSPORT_DEFENCES

log = logging.getLogger(__name__)

MAX_HEAD_BYTES = 16 * 1024  # a browser with a few cookies for localhost stays well below
KEEP_ALIVE = 5.0  # uvicorn's default; Prometheus re-scrapes after 15s or more anyway
SEND_TIMEOUT = 30.0  # /metrics of a big tree is ~100 KB: seconds even on a slow link
RENDER_THREADS = 2  # /metrics and /status.json builders; the rest answers on the loop
LOG_EVERY = 10.0  # seconds between two log lines about the same defence
STOP_TIMEOUT = 2.0  # for open admin connections to finish when the supervisor exits
BACKLOG = 1024
REASONS = (
    "connection_limit",
    "header_timeout",
    "body_timeout",
    "header_too_large",
    "bad_request",
    "send_timeout",
    "concurrency_limit",
)


def readiness(snapshot: TreeSnapshot) -> tuple[bool, str]:
    """(ready, reason): ready only when not draining and every child slot is up and ready."""
    if snapshot.draining:
        return False, "draining"
    if not snapshot.processes:
        return False, "starting"
    waiting = [f"{p.role}[{p.index}]" for p in snapshot.processes if not (p.up and p.ready)]
    if waiting:
        return False, "not ready: " + ", ".join(waiting)
    return True, "ready"


def listen_socket(bind: str, port: int) -> socket.socket:
    """The admin listener, bound and listening (raises OSError, e.g. EADDRINUSE). SO_REUSEADDR
    only, as http.server did: a restart is not refused by connections in TIME_WAIT, while a live
    listener on the port (another server) still is."""
    family = socket.AF_INET6 if ":" in bind else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((bind.strip("[]"), port))
        sock.listen(BACKLOG)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class Defences:
    """Counts the admin port's defences into `TRANSPORT_DEFENCES{transport="admin"}`.

    The supervisor imported prometheus_client before it set PROMETHEUS_MULTIPROC_DIR, so its own
    metric objects would live in its memory, outside the files `/metrics` sums (render_metrics).
    These values are written to the supervisor's `counter_<pid>.db` in `multiproc_dir` instead,
    under TRANSPORT_DEFENCES's name, labels and help text: the scrape then sums them with the
    receivers' (transport grpc/http) into one family, exactly as it sums the children's."""

    def __init__(self, multiproc_dir: str) -> None:
        self._values: dict[str, Any] = {}
        self._multiproc_dir = multiproc_dir
        self._lock = threading.Lock()
        self._value_class: Any = None

    def inc(self, reason: str) -> None:
        with self._lock:
            value = self._values.get(reason)
            if value is None:
                value = self._values[reason] = self._make(reason)
        value.inc(1)

    def _make(self, reason: str) -> Any:
        if self._value_class is None:
            # MultiProcessValue reads the directory from the environment when a value is made.
            with _environ("PROMETHEUS_MULTIPROC_DIR", self._multiproc_dir):
                self._value_class = MultiProcessValue()
        metric = TRANSPORT_DEFENCES
        with _environ("PROMETHEUS_MULTIPROC_DIR", self._multiproc_dir):
            return self._value_class(
                "counter",
                metric._name,
                metric._name + "_total",
                metric._labelnames,
                ("admin", reason),
                metric._documentation,
            )


@contextlib.contextmanager
def _environ(name: str, value: str) -> Iterator[None]:
    previous = os.environ.get(name)
    if previous == value:
        yield
        return
    os.environ[name] = value
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = previous


class _Guard:
    """What the connections of one admin server share: the cap, the deadlines, the counter, and
    the connections waiting for a request head, oldest first (the ones a new connection evicts)."""

    def __init__(self, max_connections: int, header_timeout: float, count: Callable[[str], None]) -> None:
        self.max_connections = max_connections
        self.header_timeout = header_timeout
        self.count = count
        self.open = 0
        self.waiting: collections.OrderedDict[Any, None] = collections.OrderedDict()


def _protocol_class(guard: _Guard) -> type:
    """uvicorn's h11 protocol with the admin port's bounds (module docstring). Imported here:
    uvicorn is only needed once the supervisor serves."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class AdminProtocol(H11Protocol):
        # The phase decides which deadline runs: "head" (waiting for a request head: evictable),
        # "body" (head in, body still arriving), "answer" (request in, answer being sent), "closed".
        _phase = "head"
        _deadline: asyncio.TimerHandle | None = None
        _head_bytes = 0
        _counted = False  # in guard.open: from connection_made until we close it or it is lost

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            guard.open += 1
            self._counted = True
            if guard.open > guard.max_connections:
                if guard.waiting:  # make room: the oldest connection still without a request head
                    oldest = next(iter(guard.waiting))
                    oldest._close("connection_limit")
                else:  # every connection is in a request: this one waits for none of them
                    self._close("connection_limit")
                    return
            self._enter("head")

        def connection_lost(self, exc: Exception | None) -> None:
            self._enter("closed")
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if self._phase == "head":
                # h11 bounds only a head still incomplete; this bounds one that arrives whole too
                # (pipelined GETs over the bound in one read are refused alike: no client does it).
                self._head_bytes += len(data)
                if self._head_bytes > MAX_HEAD_BYTES:
                    guard.count("header_too_large")
                    self._enter("closed")
                    self._send_431()
                    return
            elif self._phase == "answer" and len(self.conn.trailing_data[0]) + len(data) > MAX_HEAD_BYTES:
                # Requests pipelined behind one being answered wait in h11's buffer: the same bound.
                guard.count("header_too_large")
                self._enter("closed")
                self.transport.abort()
                return
            super().data_received(data)
            self._follow()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._follow()

        def send_400_response(self, msg: str) -> None:
            guard.count("bad_request")
            super().send_400_response(msg)
            self._enter("closed")

        def handle_events(self) -> None:
            # uvicorn swaps the app for a 503 past limit_concurrency (its test, made first here)
            # and only says so in a log line: count it.
            limit, tasks = self.limit_concurrency, len(self.tasks)
            over = limit is not None and (len(self.connections) >= limit or tasks >= limit)
            super().handle_events()
            if over and len(self.tasks) > tasks:
                guard.count("concurrency_limit")

        # -- the bounds --------------------------------------------------------------------------

        def _follow(self) -> None:
            """Move to the phase h11's state says we are in."""
            if self.transport is None or self.transport.is_closing():
                self._enter("closed")
                return
            state = self.conn.their_state
            if state is h11.IDLE:
                self._enter("head")
            elif state is h11.SEND_BODY:
                self._enter("body")
            elif state in (h11.DONE, h11.MUST_CLOSE):
                self._enter("answer")
            else:
                self._enter("closed")

        def _enter(self, phase: str) -> None:
            if phase == self._phase and (self._deadline is not None or phase == "closed"):
                return  # a deadline runs from the phase's start, not from the last byte
            previous, self._phase = self._phase, phase
            guard.waiting.pop(self, None)
            if phase == "closed" and self._counted:
                self._counted = False
                guard.open -= 1
            if phase == "body" and previous == "head":
                return  # the head's deadline covers the body too
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None
            if phase == "head":
                self._head_bytes = 0
                guard.waiting[self] = None
                self._deadline = self.loop.call_later(guard.header_timeout, self._expire)
            elif phase == "body":
                self._deadline = self.loop.call_later(guard.header_timeout, self._expire)
            elif phase == "answer":
                self._deadline = self.loop.call_later(SEND_TIMEOUT, self._expire)

        def _expire(self) -> None:
            self._deadline = None
            reason = {"head": "header_timeout", "body": "body_timeout", "answer": "send_timeout"}
            if self._phase in reason:
                self._close(reason[self._phase])

        def _close(self, reason: str) -> None:
            guard.count(reason)
            phase = self._phase
            self._enter("closed")
            if self.transport is None or self.transport.is_closing():
                return
            if phase == "answer":
                self.transport.abort()  # its write buffer would hold a graceful close open
            else:
                self.transport.close()

        def _send_431(self) -> None:
            body = b"request head too large\n"
            self.transport.write(
                b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
                b"content-type: text/plain; charset=utf-8\r\n"
                b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body)
            )
            self.transport.close()

    return AdminProtocol


class AdminServer:
    """Owns the admin app, its event loop thread and its listening socket (`listen_socket`).
    `snapshot` returns the current TreeSnapshot; `status_json` the body of /status.json (None:
    the endpoint answers 503)."""

    def __init__(
        self,
        sock: socket.socket,
        multiproc_dir: str,
        snapshot: Callable[[], TreeSnapshot],
        status_json: Callable[[], bytes] | None = None,
        *,
        max_connections: int = 128,
        header_timeout: float = 10.0,
    ) -> None:
        self._sock = sock
        self._snapshot = snapshot
        self._multiproc_dir = multiproc_dir
        self._status_json = status_json
        self._page = status_page()
        self.defences = Defences(multiproc_dir)
        self._guard = _Guard(max_connections, header_timeout, self._count)
        self._render = concurrent.futures.ThreadPoolExecutor(
            RENDER_THREADS, thread_name_prefix="admin-render"
        )
        self._server: Any = None
        self._log = RateLimitedLogger(log, LOG_EVERY)  # one line per reason per LOG_EVERY
        self._thread = threading.Thread(target=self._run, name="admin", daemon=True)

    @property
    def port(self) -> int:
        return self._sock.getsockname()[1]

    def start(self) -> None:
        import uvicorn

        class Server(uvicorn.Server):
            # The supervisor owns every signal (house rule 1): uvicorn must not take any. It does
            # not off the main thread anyway; this says so for every version.
            @contextlib.contextmanager
            def capture_signals(self) -> Iterator[None]:
                yield

            def install_signal_handlers(self) -> None:  # uvicorn < 0.29
                pass

            async def main_loop(self) -> None:
                # uvicorn wakes every 0.1 s to look at its stop flag (and, every tenth time, to
                # renew the Date header): that was +0.25% of a core in an idle supervisor. Once
                # a second is enough for a flag set only at shutdown.
                counter = 0
                while not await self.on_tick(counter):
                    counter = (counter + 10) % 864000
                    await asyncio.sleep(1.0)

        config = uvicorn.Config(
            self._app(),
            http=_protocol_class(self._guard),
            loop="asyncio",
            lifespan="off",
            log_config=None,  # the supervisor's logging stays as configured
            access_log=False,
            server_header=False,
            headers=[("server", f"otlp-ingest/{__version__}")],
            backlog=BACKLOG,
            # A backstop that the cap above keeps out of reach; if it is reached, it is counted.
            limit_concurrency=2 * self._guard.max_connections,
            timeout_keep_alive=int(KEEP_ALIVE),
            timeout_graceful_shutdown=int(STOP_TIMEOUT),
            h11_max_incomplete_event_size=MAX_HEAD_BYTES,
        )
        # Its per-request warnings (bad requests, the concurrency backstop) are counted instead.
        logging.getLogger("uvicorn.error").setLevel(logging.ERROR)
        self._server = Server(config)
        self._thread.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
            self._thread.join(STOP_TIMEOUT + 3.0)
        self._render.shutdown(wait=False, cancel_futures=True)
        self._sock.close()

    def _run(self) -> None:
        try:
            asyncio.run(self._server.serve(sockets=[self._sock]))
        except BaseException:  # a dead admin port must be visible: the probes will fail too
            log.exception("admin server stopped")

    def _count(self, reason: str) -> None:
        try:
            self.defences.inc(reason)
        except Exception as exc:  # a full /tmp must not break the defence itself
            log.debug("cannot count admin defence %s: %s", reason, exc)
        self._log.warning(
            reason,
            "admin port: a connection closed or refused for %s "
            '(otlp_transport_defences_total{transport="admin"}, docs/hostile-input.md)',
            reason,
        )

    # -- the app ---------------------------------------------------------------------------------

    def _app(self) -> Any:
        from starlette.applications import Starlette
        from starlette.requests import Request
        from starlette.responses import Response
        from starlette.routing import Route

        admin = self

        def answer(
            status: int,
            body: bytes,
            content_type: str = "text/plain; charset=utf-8",
            cache: bool = True,
        ) -> Response:
            # live data: a proxy or the browser must not serve an old copy
            headers = None if cache else {"Cache-Control": "no-store"}
            return Response(body, status, headers=headers, media_type=content_type)

        def guarded(handler: Callable[[], Any]) -> Callable[[Request], Any]:
            async def endpoint(request: Request) -> Response:
                try:
                    return await handler()
                except Exception:
                    log.exception("admin %s failed", request.url.path)
                    return answer(500, b"internal error\n")

            return endpoint

        async def in_thread(fn: Callable[[], bytes]) -> bytes:
            return await asyncio.get_running_loop().run_in_executor(admin._render, fn)

        async def health() -> Response:
            return answer(200, b"ok\n")

        async def ready() -> Response:
            ok, reason = readiness(admin._snapshot())
            return answer(200 if ok else 503, (reason + "\n").encode())

        async def metrics() -> Response:
            body = await in_thread(lambda: render_metrics(admin._multiproc_dir, admin._snapshot))
            return answer(200, body, CONTENT_TYPE_LATEST)

        async def page() -> Response:
            return answer(200, admin._page, "text/html; charset=utf-8", cache=False)

        async def status() -> Response:
            if admin._status_json is None:
                return answer(503, b"status not available yet\n")
            body = await in_thread(admin._status_json)
            return answer(200, body, "application/json", cache=False)

        async def not_found(request: Request, exc: Exception) -> Response:
            return answer(404, b"not found\n")

        async def not_allowed(request: Request, exc: Exception) -> Response:
            response = answer(405, b"method not allowed\n")
            response.headers["Allow"] = "GET, HEAD"
            return response

        routes = [
            Route("/health", guarded(health), methods=["GET"]),
            Route("/ready", guarded(ready), methods=["GET"]),
            Route("/metrics", guarded(metrics), methods=["GET"]),
            Route("/", guarded(page), methods=["GET"]),
            Route("/index.html", guarded(page), methods=["GET"]),
            Route("/status.json", guarded(status), methods=["GET"]),
        ]
        app = Starlette(routes=routes, exception_handlers={404: not_found, 405: not_allowed})
        app.router.redirect_slashes = False  # "/health/" is a 404, as it always was
        return app


def status_page() -> bytes:
    """The status page's HTML (a package file, so it ships in the wheel and the image). An
    installation without it still serves the probes and /status.json: the page says what is wrong."""
    try:
        return resources.files("otlp_ingest.supervisor").joinpath("status_page.html").read_bytes()
    except OSError as exc:
        log.error("status page missing from the installation (%s): / serves a placeholder", exc)
        return (
            b"<!doctype html><title>otlp-ingest</title><p>The status page is missing from this "
            b'installation; see <a href="status.json">status.json</a> or <code>otlp-ingest top</code>.</p>'
        )
