"""The HTTP/1.1 fast path: the plain, valid, small protobuf request served in one call.

What OTLP/HTTP exporters send almost every time is the same shape: `POST /v1/<signal>` with a
Content-Length and `Content-Type: application/x-protobuf`, uncompressed, a few KiB of valid
items. For that shape `HttpConnection.data_received` skips llhttp's callbacks, the `Exchange`,
staging and the flush: `_http1scan.scan` (C) reads the head, `ExportService.export_proven`
proves the body valid on the wire and writes it to the ring as one record, and the connection
writes the 200 at once. Why: for a 10-span request that general machinery costs the process tree
more than a Rust collector spends on the whole request (docs/performance.md, "Small HTTP
requests").

It is only a shortcut. Any request it does not take whole (another head form, a body not proven
valid, a full ring, a draining worker, ...) goes to llhttp and the general path from its first
byte, exactly as if the fast path did not exist, and that path gives every answer that is not a
plain 200. So the HTTP rules of http1.py and http_app.py stay in one place; this module only
has to be right about what it takes. Off (None from `fast_path_for`) with authentication (tokens
are the general path's), in durable mode (the answer waits for the fsync) or without the C
extensions.

Bodies up to MAX_BODY bytes: beyond it the general path's staging and offloading pay off. While
a body arrives the fast path holds at most HOLD_MAX_BYTES of one request per connection (a
client that sends its head and then its body, as Python's http.client does, is held once);
more than that goes to llhttp, whose body bytes the worker's body budget charges. So held bytes
stay within what llhttp buffers of a head anyway (http1.MAX_HEADER_BYTES).
"""

from __future__ import annotations

from otlp_ingest.otlp import wire_check
from otlp_ingest.receiver.export import ExportService
from otlp_ingest.transport.http1 import FastPath

try:
    from otlp_ingest.receiver._http1scan import scan as _scan
except ImportError:  # pragma: no cover - built without a C compiler
    _scan = None

MAX_BODY = 64 * 1024


def fast_path_for(
    service: ExportService, body_limit: int, authenticating: bool, ok_head: bytes
) -> FastPath | None:
    """The worker's fast path, or None where it must not run (see the module docstring)."""
    if _scan is None or not wire_check.COMPILED or authenticating or service.is_durable:
        return None
    return FastPath(_scan, service.export_proven, min(MAX_BODY, body_limit), ok_head)
