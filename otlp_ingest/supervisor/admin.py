"""Admin HTTP endpoint in the supervisor: /health, /ready, /metrics, /status.json and the page at /.

A `ThreadingHTTPServer` on a thread of the supervisor (safe: the supervisor never forks bare).
It only reads: the supervisor publishes an immutable `TreeSnapshot` after each change and the
handlers read whichever snapshot is current.

- `/health`  200 "ok" while the supervisor runs.
- `/ready`   200 "ready" when every worker and exporter reported ready and we are not draining;
             else 503 with the reason (load balancers and the Kubernetes readiness probe).
- `/metrics` Prometheus text: every process's counters summed, plus tree-wide gauges.
- `/status.json`  the live status document (supervisor/status.py; fields in docs/operations.md).
- `/`        the status page: one static HTML file with its script inline (status_page.html, no
             build step, nothing from elsewhere) that polls `status.json` every second while the
             tab is visible. Served from memory: read once when the server starts.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources

from prometheus_client import CONTENT_TYPE_LATEST

from otlp_ingest import __version__
from otlp_ingest.telemetry.collect import TreeSnapshot, render_metrics

log = logging.getLogger(__name__)


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


class AdminServer:
    """Owns the HTTP server and its thread. `snapshot` returns the current TreeSnapshot;
    `status_json` the body of /status.json (None: the endpoint answers 503)."""

    def __init__(
        self,
        bind: str,
        port: int,
        multiproc_dir: str,
        snapshot: Callable[[], TreeSnapshot],
        status_json: Callable[[], bytes] | None = None,
    ) -> None:
        self._snapshot = snapshot
        self._multiproc_dir = multiproc_dir
        self._status_json = status_json
        self._page = status_page()
        handler = self._make_handler()
        # Raises OSError (e.g. EADDRINUSE) here, before any child starts.
        self._server = ThreadingHTTPServer((bind, port), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="admin", daemon=True)

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _make_handler(self) -> type[BaseHTTPRequestHandler]:
        admin = self

        class Handler(BaseHTTPRequestHandler):
            server_version = f"otlp-ingest/{__version__}"

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                try:
                    if path == "/health":
                        self._send(200, b"ok\n")
                    elif path == "/ready":
                        ok, reason = readiness(admin._snapshot())
                        self._send(200 if ok else 503, (reason + "\n").encode())
                    elif path == "/metrics":
                        body = render_metrics(admin._multiproc_dir, admin._snapshot)
                        self._send(200, body, CONTENT_TYPE_LATEST)
                    elif path in ("/", "/index.html"):
                        self._send(200, admin._page, "text/html; charset=utf-8", cache=False)
                    elif path == "/status.json":
                        if admin._status_json is None:
                            self._send(503, b"status not available yet\n")
                        else:
                            self._send(200, admin._status_json(), "application/json", cache=False)
                    else:
                        self._send(404, b"not found\n")
                except Exception:
                    log.exception("admin %s failed", path)
                    self._send(500, b"internal error\n")

            def _send(
                self,
                status: int,
                body: bytes,
                content_type: str = "text/plain; charset=utf-8",
                cache: bool = True,
            ) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                if not cache:  # live data: a proxy or the browser must not serve an old copy
                    self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:  # probes every few seconds
                log.debug("admin: " + format, *args)

        return Handler


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
