"""Admin HTTP endpoint in the supervisor: /health, /ready, /metrics and a status page at /.

A `ThreadingHTTPServer` on a thread of the supervisor (safe: the supervisor never forks bare).
It only reads: the supervisor publishes an immutable `TreeSnapshot` after each change and the
handlers read whichever snapshot is current.

- `/health`  200 "ok" while the supervisor runs.
- `/ready`   200 "ready" when every worker and exporter reported ready and we are not draining;
             else 503 with the reason (load balancers and the Kubernetes readiness probe).
- `/metrics` Prometheus text: every process's counters summed, plus tree-wide gauges.
- `/`        a small HTML status page.
"""

from __future__ import annotations

import html
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST

from otlp_ingest import __version__
from otlp_ingest.telemetry.collect import TreeSnapshot, exporter_queue_usage, render_metrics

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
    """Owns the HTTP server and its thread. `snapshot` returns the current TreeSnapshot."""

    def __init__(
        self, bind: str, port: int, multiproc_dir: str, snapshot: Callable[[], TreeSnapshot]
    ) -> None:
        self._snapshot = snapshot
        self._multiproc_dir = multiproc_dir
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
                    elif path == "/":
                        self._send(200, status_page(admin._snapshot()), "text/html; charset=utf-8")
                    else:
                        self._send(404, b"not found\n")
                except Exception:
                    log.exception("admin %s failed", path)
                    self._send(500, b"internal error\n")

            def _send(self, status: int, body: bytes, content_type: str = "text/plain; charset=utf-8"):
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:  # probes every few seconds
                log.debug("admin: " + format, *args)

        return Handler


def status_page(snapshot: TreeSnapshot) -> bytes:
    _, reason = readiness(snapshot)
    queues = exporter_queue_usage(snapshot)
    rows = []
    for p in snapshot.processes:
        queue = ""
        if p.role == "exporter" and p.index in queues:
            q = queues[p.index]
            queue = f"{q.records}/{q.max_records} records, {q.used_bytes}/{q.capacity_bytes} bytes"
        rows.append(
            f"<tr><td>{p.role}[{p.index}]</td><td>{p.pid or '-'}</td><td>{'up' if p.up else 'down'}</td>"
            f"<td>{'yes' if p.ready else 'no'}</td><td>{html.escape(queue)}</td></tr>"
        )
    restarts = ", ".join(f"{k}: {v}" for k, v in sorted(snapshot.restarts.items())) or "none"
    page = (
        "<!doctype html><html><head><title>otlp-ingest</title></head><body>"
        f"<h1>otlp-ingest {html.escape(__version__)}</h1>"
        f"<p>supervisor pid {snapshot.supervisor_pid}; {html.escape(reason)}"
        f"; restarts: {html.escape(restarts)}</p>"
        "<table border=1 cellpadding=4><tr><th>process</th><th>pid</th><th>state</th><th>ready</th>"
        "<th>queue</th></tr>" + "".join(rows) + "</table>"
        '<p><a href="/metrics">/metrics</a> <a href="/health">/health</a> <a href="/ready">/ready</a></p>'
        "</body></html>"
    )
    return page.encode()
