"""OTLP/HTTP: what a request to :4318 means, independent of how HTTP/1.1 is parsed (http1.py).

`OtlpHttpApp.start(method, path, headers)` is called once a request's headers are complete and
returns an `Exchange`: either already refused (`exchange.refusal`, a complete response; the body
is then discarded) or waiting for its body. The connection feeds body chunks to
`Exchange.chunk` (which may refuse mid-body) and calls `Exchange.complete(done)` at the end of the
message; `done(response)` is called once with the answer, inline for small bodies.

Authentication (`otlp_ingest.auth`, with settings.auth_tokens_file): right after routing, before
anything about the body, `Authorization: Bearer <token>` is checked; a missing or unknown token
gets 401 + `WWW-Authenticate` + a google.rpc.Status (UNAUTHENTICATED) and the connection closes
with the body unread.

Rules (design.md section 4): POST /v1/traces, /v1/metrics, /v1/logs; Content-Type
application/x-protobuf or application/json (parameters allowed), else 415; unknown path 404,
wrong method 405 (with `Allow: POST`); `Content-Encoding` gzip/zstd/deflate/identity, else 415; the
body limit applies before and after decompression (413, connection closed: the rest of the body
may still be on its way). The response uses the request's content type; errors carry a
`google.rpc.Status` (protobuf or JSON like the request) and, when retryable, `Retry-After`.
An unexpected exception is logged and answered 503, never a bare 500.

Overload (docs/architecture.md, Memory): while the memory limiter refuses, a request is answered
503 + Retry-After before its body is read (and the connection closed: the client resends anyway).
Bodies held at once are bounded by a per-worker byte budget (`transport.defences.BodyBudget`, charged with
the raw bytes as they arrive, then twice the decompressed size); a request that does not fit gets
503 + Retry-After and a close. Big bodies are decompressed and decoded off the event loop
(`dispatch.ExportRunner`).

Deadlines are the connection's (http1.py): when a body does not arrive within
`http_read_timeout` of the request's first byte, the connection asks `Exchange.timeout()` for the
answer: 503 + Retry-After and a close, not 408 (OTLP clients retry only 429/502/503/504, and a
slow link or a stalled proxy is a transient failure, so the data must be resent, not dropped).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from otlp_ingest import errors
from otlp_ingest.otlp.signals import SIGNAL_BY_PATH, SIGNALS, Signal
from otlp_ingest.receiver.dispatch import Done, Receiving, should_offload
from otlp_ingest.receiver.export import MEMORY_RETRY_AFTER, ContentFormat, ExportResult
from otlp_ingest.receiver.http1_fast import fast_path_for
from otlp_ingest.receiver.inflight import BODY_FACTOR, http_body_slots, memory_limits
from otlp_ingest.receiver.limits import decompress, normalize_encoding
from otlp_ingest.receiver.rpc_status import client_message, status_bytes, status_json
from otlp_ingest.status import retry_after_seconds, status_for
from otlp_ingest.telemetry.logging import RateLimitedLogger
from otlp_ingest.transport.defences import BodyBudget
from otlp_ingest.transport.http1 import FastPath, Response, response

log = logging.getLogger(__name__)
_unexpected_log = RateLimitedLogger(log)

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
_MEDIA_TYPE = {"protobuf": PROTOBUF.encode(), "json": JSON.encode()}
# Retry-After of a body timeout: the client's link was slow or stalled, not the server busy.
_TIMEOUT_RETRY_AFTER = 1
_BUSY_RETRY_AFTER = 1.0
_PATHS = {path.encode(): signal for path, signal in SIGNAL_BY_PATH.items()}

_FORMATS: dict[bytes | None, ContentFormat] = {}  # header values seen -> format (the hot path)
_FORMATS_MAX = 64


def content_format(content_type: bytes | None) -> ContentFormat:
    """ "protobuf" or "json" for a Content-Type header (parameters ignored); else UnsupportedMediaType."""
    known = _FORMATS.get(content_type)
    if known is not None:
        return known
    fmt = _parse_content_format(content_type)
    if len(_FORMATS) < _FORMATS_MAX:  # clients send a handful of spellings; attackers many
        _FORMATS[content_type] = fmt
    return fmt


def _parse_content_format(content_type: bytes | None) -> ContentFormat:
    media = (content_type or b"").split(b";", 1)[0].strip().lower()
    if media == b"application/x-protobuf":
        return "protobuf"
    if media == b"application/json":
        return "json"
    shown = (content_type or b"").decode("latin-1")
    raise errors.UnsupportedMediaType(f"unsupported Content-Type {shown!r}; use {PROTOBUF} or {JSON}")


def _reply_format(content_type: bytes | None) -> ContentFormat:
    """The format for an error body: protobuf only when the request was protobuf."""
    try:
        return content_format(content_type)
    except errors.UnsupportedMediaType:
        return "json"


def error_response(exc: BaseException, fmt: ContentFormat, context: str = "") -> Response:
    """The HTTP response for `exc`: status from the table, google.rpc.Status body, Retry-After."""
    wire = status_for(exc)
    message = client_message(exc, _unexpected_log, f"HTTP {context} (answered 503)")
    headers: list[bytes] = []
    retry = None
    if wire.retry_hint:
        retry = retry_after_seconds(exc)
        headers.append(b"retry-after: %d" % retry)
    if isinstance(exc, errors.MethodNotAllowed):
        headers.append(b"allow: POST")
    if isinstance(exc, errors.Unauthenticated):
        headers.append(b"www-authenticate: " + exc.challenge.encode("latin-1"))
    code = int(wire.grpc_code)
    body = status_bytes(code, message, retry) if fmt == "protobuf" else status_json(code, message, retry)
    # Too large: the rest of the body may still be on its way; unauthenticated: it is never read.
    # Either way, do not try to reuse the connection.
    close = isinstance(exc, errors.PayloadTooLarge | errors.Unauthenticated)
    return response(wire.http_status, _MEDIA_TYPE[fmt], body, tuple(headers), close)


# The answer to almost every request: an empty Export*ServiceResponse (the same for every signal).
_EMPTY_BODY: dict[ContentFormat, bytes] = {"protobuf": b"", "json": b"{}"}
_OK_EMPTY = {fmt: response(200, _MEDIA_TYPE[fmt], body) for fmt, body in _EMPTY_BODY.items()}


class _BodiesInFlight(errors.QueueFull):
    """The worker's body budget is spent: 503 + Retry-After (retryable), the connection closed."""


class Exchange:
    """One OTLP/HTTP request from its headers to its answer (see the module docstring)."""

    __slots__ = (
        "_app",
        "_charged",
        "_chunks",
        "_exported",
        "_received",
        "encoding",
        "fmt",
        "refusal",
        "signal",
    )

    def __init__(self, app: OtlpHttpApp, signal: Signal, fmt: ContentFormat, encoding: str) -> None:
        self._app = app
        self.signal = signal
        self.fmt = fmt
        self.encoding = encoding
        self.refusal: Response | None = None
        self._chunks: list[bytes] = []
        self._received = 0
        self._charged = 0
        self._exported = False  # from then on export() counts the outcome itself

    @classmethod
    def refused(cls, app: OtlpHttpApp, answer: Response) -> Exchange:
        exchange = cls(app, Signal.TRACES, "json", "identity")
        exchange.refusal = answer
        return exchange

    def _refuse(self, exc: errors.OtlpError, close: bool = False) -> Response:
        """Count a refusal made before export() and build its answer."""
        app = self._app
        if not self._exported:
            app.service.record_failure(self.signal, "http", exc)
        self.release()
        answer = error_response(exc, self.fmt)
        if close and not answer.close:
            answer = Response(answer.head, answer.body, True)
        self.refusal = answer
        return answer

    def chunk(self, data: bytes) -> Response | None:
        """Keep one chunk of the body; a Response (closing) when the request is refused now."""
        if self.refusal is not None:
            return None
        self._received += len(data)
        limit = self._app.limit
        if self._received > limit:
            return self._refuse(errors.PayloadTooLarge(f"body exceeds the limit of {limit} bytes"))
        if not self._app.budget.try_charge(len(data)):
            return self._refuse(self._app.busy(), close=True)
        self._charged += len(data)
        self._chunks.append(data)
        return None

    def release(self) -> None:
        """Give the bytes this request holds back to the budget."""
        if self._charged:
            self._app.budget.release(self._charged)
            self._charged = 0
        self._chunks = []

    def timeout(self) -> Response:
        """The answer when the body did not arrive in time (the connection then closes)."""
        exc = errors.RetryableError(
            "request body not received within the read timeout; connection closed",
            retry_after=_TIMEOUT_RETRY_AFTER,
        )
        return self._refuse(exc, close=True)

    def complete(self, done: Callable[[Response], None]) -> bool:
        """The body is complete: export it and call `done` with the answer (once). True when the
        answer comes from a slow path (`ExportRunner.run`), False when it is given in this loop
        turn."""
        if self.refusal is not None:
            done(self.refusal)
            return False
        chunks = self._chunks
        raw = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        self._chunks = []
        app = self._app
        signal, fmt, encoding = self.signal, self.fmt, self.encoding

        def work(done: Done | None) -> ExportResult | None:
            body = raw if encoding == "identity" else decompress(encoding, raw, app.limit)
            # the decompressed bytes and the decoded request
            if not app.budget.try_charge(2 * len(body)):
                raise app.busy()
            self._charged += 2 * len(body)
            self._exported = True
            return app.service.export(signal, body, fmt, "http", done)

        def answer(result: ExportResult | None, exc: BaseException | None) -> None:
            if result is not None:
                self.release()
                body = result.response
                done(_OK_EMPTY[fmt] if body == _EMPTY_BODY[fmt] else response(200, _MEDIA_TYPE[fmt], body))
            elif isinstance(exc, errors.OtlpError):
                done(self._refuse(exc, close=isinstance(exc, _BodiesInFlight | errors.MemoryLimited)))
            else:
                self.release()
                done(error_response(exc or RuntimeError("no result"), fmt, f"{SIGNALS[signal].name} export"))

        return app.runner.run(work, should_offload(len(raw), encoding != "identity"), answer)


class OtlpHttpApp:
    """The OTLP/HTTP routes of one worker: three POST paths, the body limit and budget, and the
    fast path for the plain request (`fast`, None where it is off)."""

    def __init__(self, receiving: Receiving) -> None:
        self.service = receiving.service
        self.runner = receiving.runner
        self.tokens = receiving.tokens
        settings = receiving.settings
        self.limit = settings.http_max_body_bytes
        slots = http_body_slots(settings, memory_limits(settings))
        self.budget = BodyBudget(slots * BODY_FACTOR * self.limit)
        # The plain valid protobuf request, served without the general path (http1_fast.py).
        self.fast: FastPath | None = fast_path_for(
            self.service, self.limit, self.tokens is not None, _OK_EMPTY["protobuf"].head
        )
        log.debug(
            "HTTP body budget %d bytes (%d bodies of %d bytes x %d)",
            self.budget.capacity,
            slots,
            self.limit,
            BODY_FACTOR,
        )

    @staticmethod
    def busy() -> errors.QueueFull:
        return _BodiesInFlight(
            "too many request bodies in flight on this worker; retry later", retry_after=_BUSY_RETRY_AFTER
        )

    def start(self, method: bytes, path: bytes, headers: dict[bytes, bytes], length: int | None) -> Exchange:
        """A request's headers are complete (`length`: its Content-Length, None when chunked)."""
        content_type = headers.get(b"content-type")
        signal = _PATHS.get(path)
        if signal is None:
            shown = path.decode("latin-1")
            return Exchange.refused(
                self, error_response(errors.NotFound(f"no such path {shown!r}"), _reply_format(content_type))
            )
        if method != b"POST":
            exc = errors.MethodNotAllowed(f"method {method.decode('latin-1')} not allowed; use POST")
            return Exchange.refused(self, error_response(exc, _reply_format(content_type)))
        if self.tokens is not None:  # first: an unauthenticated client learns nothing more
            try:
                self.tokens.check(headers.get(b"authorization"), "http")  # counts both outcomes
            except errors.Unauthenticated as exc:
                return Exchange.refused(self, error_response(exc, _reply_format(content_type)))
        exchange = Exchange(self, signal, "json", "identity")
        try:
            exchange.fmt = content_format(content_type)
            encoding = headers.get(b"content-encoding")
            if encoding is not None:
                exchange.encoding = normalize_encoding(encoding.decode("latin-1"))
            if self.service.memory_refusing():  # before reading: the body would only add to it
                raise errors.MemoryLimited(
                    "memory limit reached: the server is overloaded, retry later",
                    retry_after=MEMORY_RETRY_AFTER,
                )
            if length is not None and length > self.limit:
                raise errors.PayloadTooLarge(f"body of {length} bytes exceeds the limit of {self.limit}")
        except errors.OtlpError as exc:
            exchange._refuse(exc, close=isinstance(exc, errors.MemoryLimited))
        return exchange
