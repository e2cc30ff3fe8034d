"""OTLP/HTTP transport: a thin Starlette app for `POST /v1/traces|metrics|logs`.

Per request: with bearer-token authentication on (`otlp_ingest.auth`), check `Authorization`
first (401 + `WWW-Authenticate` + `Connection: close` before anything else, the body unread); then
check the content type (application/x-protobuf or application/json, parameters
allowed; else 415) and `Content-Encoding` (gzip, zstd, deflate, identity; else 415), read the body with a
running size cap (413 as soon as `Content-Length` or the bytes read pass `http_max_body_bytes`, so
chunked bodies are capped too), decompress with the same cap (413), then call the shared
`ExportService.export`. The response uses the request's content type. Errors are mapped with
`otlp_ingest.status`: 400 carries a `google.rpc.Status` (protobuf or JSON like the request), 503
carries `Retry-After`. An unexpected exception is logged and answered 503, never a bare 500.

Deadlines: uvicorn bounds neither the time to send headers nor the time to send a body (its
`timeout_keep_alive` only covers idle connections *between* requests). The worker's protocol
(`worker.DeadlineHttpToolsProtocol`) closes connections whose headers take longer than
`http_read_timeout` and stamps the request start into the ASGI scope (`REQUEST_START_EXTENSION`);
here the body must then be complete by that same deadline, else 503 + Retry-After +
`Connection: close` (not 408: OTLP clients retry only 429/502/503/504, and a slow link or a stalled
proxy is a transient failure, so the data must be resent, not dropped). So a chunked body that
never ends, or one dribbled a byte at a time, holds a connection for at most `http_read_timeout`.

Overload (docs/architecture.md, Memory): while the memory limiter refuses, a request is answered
503 + Retry-After before its body is read (and the connection closed: the client resends anyway).
Bodies held at once are bounded by a per-worker byte budget (`inflight.BodyBudget`, charged with
the raw bytes as they arrive, then twice the decompressed size); a request that does not fit gets
503 + Retry-After and a close. Decompression and `export` of bodies above OFFLOAD_BYTES run in a
small thread pool, so one big body does not stall every other connection of the worker's event
loop (small bodies stay inline: the executor hop would cost more than their work).

TLS is the listener's business, not the app's: `server_ssl_context` builds the context the worker
hands to uvicorn (see worker.py).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from otlp_ingest import errors
from otlp_ingest.auth import TokenStore
from otlp_ingest.config import Settings
from otlp_ingest.otlp.signals import SIGNAL_BY_PATH, SIGNALS, Signal
from otlp_ingest.receiver.export import MEMORY_RETRY_AFTER, ContentFormat, ExportResult, ExportService
from otlp_ingest.receiver.inflight import BODY_FACTOR, BodyBudget, http_body_slots, memory_limits
from otlp_ingest.receiver.limits import decompress, normalize_encoding
from otlp_ingest.receiver.rpc_status import client_message, status_bytes, status_json
from otlp_ingest.status import retry_after_seconds, status_for
from otlp_ingest.telemetry.logging import RateLimitedLogger

log = logging.getLogger(__name__)
_unexpected_log = RateLimitedLogger(log)

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
_MEDIA_TYPE = {"protobuf": PROTOBUF, "json": JSON}

# ASGI scope["extensions"] key holding the loop time (time.monotonic) the request's first byte
# arrived; set by the worker's protocol, absent when the app runs under another server.
REQUEST_START_EXTENSION = "otlp_ingest.request_start"
_UNAVAILABLE = 14  # google.rpc.Code.UNAVAILABLE: what the 503 of a body timeout carries
# Retry-After of a body timeout: the client's link was slow or stalled, not the server busy.
_TIMEOUT_RETRY_AFTER = 1

# Bodies (raw, or compressed above OFFLOAD_COMPRESSED_BYTES: they may inflate up to the body limit)
# whose decompress + decode + validate run off the event loop. Measured: a 22 MiB OTLP/JSON body
# held the loop ~2 s; 256 KiB of protobuf takes ~1-2 ms, about the cost of the thread hop.
OFFLOAD_BYTES = 256 * 1024
OFFLOAD_COMPRESSED_BYTES = 32 * 1024
# Two threads: big bodies hold the GIL anyway, more threads would only share it further; the
# body budget bounds how many wait for them.
OFFLOAD_THREADS = 2
_BUSY_RETRY_AFTER = 1.0


class BodyTimeout(errors.PermanentError):
    """The body did not arrive within `http_read_timeout` of the request's start (HTTP 503 +
    Retry-After: retryable for an OTLP client, which drops data on 408).

    HTTP-only (gRPC has its own deadlines), so it is answered here rather than in the status table.
    """


def server_ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """The TLS context for the HTTP port from the settings' PEM files; None -> plaintext.

    TLS 1.2 or newer; with settings.tls_client_ca_file a client certificate signed by that CA is
    required (mTLS), as on the gRPC port. Read when called (worker start), so a rolling restart
    picks up rotated files. Raises OSError (ssl.SSLError included) for unreadable or bad files.
    """
    if not settings.tls_cert_file or not settings.tls_key_file:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(settings.tls_cert_file, settings.tls_key_file)
    if settings.tls_client_ca_file:
        context.load_verify_locations(cafile=settings.tls_client_ca_file)
        context.verify_mode = ssl.CERT_REQUIRED
    context.set_alpn_protocols(["http/1.1"])  # what uvicorn's httptools protocol speaks
    return context


def content_format(content_type: str | None) -> ContentFormat:
    """ "protobuf" or "json" for a Content-Type header (parameters ignored); else UnsupportedMediaType."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media == PROTOBUF:
        return "protobuf"
    if media == JSON:
        return "json"
    raise errors.UnsupportedMediaType(f"unsupported Content-Type {content_type!r}; use {PROTOBUF} or {JSON}")


def _reply_format(content_type: str | None) -> ContentFormat:
    """The format for an error body: protobuf only when the request was protobuf."""
    try:
        return content_format(content_type)
    except errors.UnsupportedMediaType:
        return "json"


def error_response(exc: BaseException, fmt: ContentFormat, context: str = "") -> Response:
    """The HTTP response for `exc`: status from the table, google.rpc.Status body, Retry-After."""
    wire = status_for(exc)
    message = client_message(exc, _unexpected_log, f"HTTP {context} (answered 503)")
    headers: dict[str, str] = {}
    retry = None
    if wire.retry_hint:
        retry = retry_after_seconds(exc)
        headers["Retry-After"] = str(retry)
    if isinstance(exc, errors.PayloadTooLarge | errors.Unauthenticated):
        # The rest of the body may still be on its way: do not try to reuse this connection.
        headers["Connection"] = "close"
    if isinstance(exc, errors.Unauthenticated):
        headers["WWW-Authenticate"] = exc.challenge
    if isinstance(exc, errors.MethodNotAllowed):
        headers["Allow"] = "POST"
    code = wire.grpc_code.value[0]
    body = status_bytes(code, message, retry) if fmt == "protobuf" else status_json(code, message, retry)
    return Response(body, wire.http_status, headers, _MEDIA_TYPE[fmt])


def request_deadline(request: Request, read_timeout: float) -> float:
    """time.monotonic() by which the whole body must have arrived."""
    started = request.scope.get("extensions", {}).get(REQUEST_START_EXTENSION)
    if not isinstance(started, float):
        started = time.monotonic()
    return started + read_timeout


def timeout_response(exc: BodyTimeout, fmt: ContentFormat) -> Response:
    """503 + Retry-After with a google.rpc.Status (UNAVAILABLE); the connection is closed after it
    (the rest of the body may still be on its way). Not 408: OTLP clients never retry that."""
    if fmt == "protobuf":
        body = status_bytes(_UNAVAILABLE, exc.message)
    else:
        body = status_json(_UNAVAILABLE, exc.message)
    headers = {"Connection": "close", "Retry-After": str(_TIMEOUT_RETRY_AFTER)}
    return Response(body, 503, headers, _MEDIA_TYPE[fmt])


async def read_body_by(
    request: Request, limit: int, deadline: float, charge: Callable[[int], None] | None = None
) -> bytes:
    """`read_body`, refused with BodyTimeout once time.monotonic() passes `deadline`."""
    remaining = deadline - time.monotonic()
    try:
        if remaining <= 0:
            raise TimeoutError
        async with asyncio.timeout(remaining):
            return await read_body(request, limit, charge)
    except TimeoutError:
        raise BodyTimeout("request body not received within the read timeout; connection closed") from None


async def read_body(request: Request, limit: int, charge: Callable[[int], None] | None = None) -> bytes:
    """The raw (possibly compressed) body, refusing with PayloadTooLarge as soon as it passes
    `limit` bytes: by Content-Length before reading, else while streaming (chunked bodies).
    `charge(n)` is called for every chunk kept (it raises to refuse the request)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise errors.InvalidArgument(f"invalid Content-Length {declared!r}") from None
        if size > limit:
            raise errors.PayloadTooLarge(f"body of {size} bytes exceeds the limit of {limit}")
    chunks: list[bytes] = []
    total = 0
    async for chunk in request.stream():
        if chunk:
            total += len(chunk)
            if total > limit:
                raise errors.PayloadTooLarge(f"body exceeds the limit of {limit} bytes")
            if charge is not None:
                charge(len(chunk))
            chunks.append(chunk)
    if len(chunks) == 1:
        return chunks[0]
    return b"".join(chunks)


class _BodiesInFlight(errors.QueueFull):
    """The worker's body budget is spent: 503 + Retry-After (retryable), the connection closed."""


class _Held:
    """The budget one request holds; released in full when the request ends."""

    __slots__ = ("budget", "bytes", "exported")

    def __init__(self, budget: BodyBudget) -> None:
        self.budget = budget
        self.bytes = 0
        self.exported = False

    def charge(self, n: int) -> None:
        if not self.budget.try_charge(n):
            raise _BodiesInFlight(
                "too many request bodies in flight on this worker; retry later", retry_after=_BUSY_RETRY_AFTER
            )
        self.bytes += n

    def release(self) -> None:
        self.budget.release(self.bytes)
        self.bytes = 0


def build_http_app(service: ExportService, settings: Settings, tokens: TokenStore | None = None) -> Starlette:
    """The Starlette app: three POST routes; 404/405 and any stray exception answered by the table.
    With `tokens`, every POST needs a bearer token (checked before anything is read)."""
    limit = settings.http_max_body_bytes
    read_timeout = settings.http_read_timeout
    slots = http_body_slots(settings, memory_limits(settings))
    budget = BodyBudget(slots * BODY_FACTOR * limit)
    offload = ThreadPoolExecutor(max_workers=OFFLOAD_THREADS, thread_name_prefix="http-offload")
    log.debug(
        "HTTP body budget %d bytes (%d bodies of %d bytes x %d)", budget.capacity, slots, limit, BODY_FACTOR
    )

    def make_endpoint(signal: Signal):
        def decode(held: _Held, encoding: str, raw: bytes, fmt: ContentFormat) -> ExportResult:
            body = raw if encoding == "identity" else decompress(encoding, raw, limit)
            held.charge(2 * len(body))  # the decompressed bytes and the decoded request
            held.exported = True  # from here on export() counts the outcome itself
            return service.export(signal, body, fmt, "http")

        async def endpoint(request: Request) -> Response:
            headers = request.headers
            content_type = headers.get("content-type")
            fmt: ContentFormat = "json"
            held = _Held(budget)
            try:
                if tokens is not None:  # first: an unauthenticated client learns nothing more
                    tokens.check(headers.get("authorization"), "http")
                fmt = content_format(content_type)
                encoding = normalize_encoding(headers.get("content-encoding"))
                if service.memory_refusing():  # before reading: the body would only add to it
                    raise errors.MemoryLimited(
                        "memory limit reached: the server is overloaded, retry later",
                        retry_after=MEMORY_RETRY_AFTER,
                    )
                raw = await read_body_by(request, limit, request_deadline(request, read_timeout), held.charge)
                big = len(raw) > (OFFLOAD_BYTES if encoding == "identity" else OFFLOAD_COMPRESSED_BYTES)
                if big:  # off the loop: other connections keep being served meanwhile
                    result = await asyncio.get_running_loop().run_in_executor(
                        offload, decode, held, encoding, raw, fmt
                    )
                else:
                    result = decode(held, encoding, raw, fmt)
                del raw
                if result.ticket is not None:  # durable mode: answer once the record is fsynced
                    result = await service.durable(result)
            except BodyTimeout as exc:
                service.record_failure(signal, "http", exc)
                return timeout_response(exc, fmt)
            except errors.Unauthenticated as exc:  # counted by the token store
                return error_response(exc, _reply_format(content_type))
            except (_BodiesInFlight, errors.MemoryLimited) as exc:
                if not held.exported:
                    service.record_failure(signal, "http", exc)
                response = error_response(exc, fmt)
                response.headers["Connection"] = "close"  # the body may be unread: do not reuse
                return response
            except errors.OtlpError as exc:
                if not held.exported:  # export() counts its own outcomes
                    service.record_failure(signal, "http", exc)
                return error_response(exc, fmt)
            except Exception as exc:  # every failure becomes a status: never a bare 500
                return error_response(exc, fmt, f"{SIGNALS[signal].name} export")
            finally:
                held.release()
            return Response(result.response, 200, media_type=_MEDIA_TYPE[fmt])

        return endpoint

    async def http_exception(request: Request, exc: Exception) -> Response:
        fmt = _reply_format(request.headers.get("content-type"))
        if isinstance(exc, HTTPException) and exc.status_code == 405:
            return error_response(
                errors.MethodNotAllowed(f"method {request.method} not allowed; use POST"), fmt
            )
        if isinstance(exc, HTTPException) and exc.status_code == 404:
            return error_response(errors.NotFound(f"no such path {request.url.path!r}"), fmt)
        if isinstance(exc, HTTPException):
            return Response(exc.detail, exc.status_code, exc.headers)
        return error_response(exc, fmt, f"{request.method} {request.url.path}")

    routes = [Route(path, make_endpoint(signal), methods=["POST"]) for path, signal in SIGNAL_BY_PATH.items()]
    return Starlette(
        routes=routes,
        exception_handlers={HTTPException: http_exception, Exception: http_exception},
    )
