"""OTLP/gRPC transport: a grpcio sync server with raw-bytes handlers for the three Export methods.

The handlers get the request as bytes (no request deserializer) so the body is decoded exactly
once, by `validate`, and return the already-serialized response bytes. Errors are mapped with
`otlp_ingest.status`; every error carries a `google.rpc.Status` in the `grpc-status-details-bin`
trailer, with a `google.rpc.RetryInfo` detail when the client should retry. Messages above
`settings.grpc_max_recv_bytes` are refused by grpc itself with RESOURCE_EXHAUSTED (no RetryInfo).
gzip request compression is handled by grpc.

Overload (docs/hostile-input.md): grpcio's sync server reads a unary request message inside a pool
thread and queues calls without bound when every thread is busy, so one client that opens an
Export and never sends its body blocked every other call on the worker until they timed out with
DEADLINE_EXCEEDED. So:
- the Export methods are registered as stream-unary (the client still calls them as unary; the
  wire is the same): the handler starts before the message arrives and reads it itself, with a
  deadline (`StallWatchdog`: `http_read_timeout`, the same setting as for HTTP bodies). A call
  whose message has not arrived by then is cancelled (`context.cancel()`; the client sees
  CANCELLED). grpcio offers no server-side per-call deadline, and keepalive / ping-strike
  options only act on idle or misbehaving connections, not on a stream that is merely silent;
- `InFlightLimit`, a `grpc.ServerInterceptor`, counts admitted calls and refuses calls beyond
  `inflight.grpc_in_flight_limit()` with UNAVAILABLE + RetryInfo (`errors.QueueFull`: the worker
  is overloaded, retry later) before their body is read. Interceptors run in grpc's serving
  thread, before the call is queued for a handler thread, and the limit is below GRPC_THREADS,
  so a refusal always finds a free thread. grpc's own `maximum_concurrent_rpcs` is not used: it
  answers RESOURCE_EXHAUSTED without RetryInfo, which OTLP clients treat as permanent.

Authentication (`otlp_ingest.auth`, with settings.auth_tokens_file): `BearerAuth`, the first
interceptor, checks the `authorization` metadata of every Export call before anything else (the
in-flight limit, the body): a missing or unknown token is answered UNAUTHENTICATED by a handler
that never reads the message.

TLS: with settings.tls_cert_file/tls_key_file the port serves TLS only (a plaintext client fails
its handshake, UNAVAILABLE on its side); with settings.tls_client_ca_file too, clients must present
a certificate signed by that CA (mTLS). The files are read in `build_grpc_server`, i.e. when a
worker starts, so a rolling restart (SIGHUP) picks up rotated certificates.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc

from otlp_ingest import errors
from otlp_ingest.auth import TokenStore
from otlp_ingest.config import Settings
from otlp_ingest.otlp.signals import SIGNALS, Signal
from otlp_ingest.receiver.export import ExportService
from otlp_ingest.receiver.inflight import grpc_in_flight_limit, memory_limits
from otlp_ingest.receiver.rpc_status import DETAILS_TRAILER, client_message, status_bytes
from otlp_ingest.status import retry_after_seconds, status_for
from otlp_ingest.telemetry.logging import RateLimitedLogger

log = logging.getLogger(__name__)
_unexpected_log = RateLimitedLogger(log)

# Handler threads. A handler holds its thread while the request message arrives (a slow client:
# up to http_read_timeout) and, in durable mode, while its fsync completes (group commit wants
# many waiters), so one thread let a single stalled client block the whole port. The decode work
# holds the GIL, so the question was only what idle threads cost: measured with
# /tmp/exp/cpu_split.py (2 workers, loadgen 100-span RPCs, 8 senders, 8 s, 2 cores shared with
# the load generator), worker CPU per RPC: 1 thread 506 us, 4 threads 528 us, 8 threads 553 us,
# 16 threads 471 us - within the run-to-run noise (+-10%). 16 it is.
GRPC_THREADS = 16
# Threads never given to admitted calls, so refusals (no body read, microseconds) always run.
GRPC_REFUSAL_THREADS = 4
_OVERLOAD_RETRY_AFTER = 1.0


def grpc_address(bind: str, port: int) -> str:
    """`host:port` as grpc wants it (IPv6 literals in brackets)."""
    host = f"[{bind}]" if ":" in bind and not bind.startswith("[") else bind
    return f"{host}:{port}"


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS credentials for the gRPC port from the settings' PEM files; None -> plaintext.

    Raises OSError when a file cannot be read (the worker then exits with its boot-failure code).
    """
    if not settings.tls_cert_file or not settings.tls_key_file:
        return None
    client_ca = _read(settings.tls_client_ca_file) if settings.tls_client_ca_file else None
    return grpc.ssl_server_credentials(
        [(_read(settings.tls_key_file), _read(settings.tls_cert_file))],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )


def _abort(context: grpc.ServicerContext, signal: Signal, exc: BaseException) -> None:
    wire = status_for(exc)
    where = f"gRPC {SIGNALS[signal].name} export (answered UNAVAILABLE)"
    message = client_message(exc, _unexpected_log, where)
    retry = retry_after_seconds(exc) if wire.retry_hint else None
    details = status_bytes(wire.grpc_code.value[0], message, retry)
    context.set_trailing_metadata(((DETAILS_TRAILER, details),))
    context.abort(wire.grpc_code, message)


class StallWatchdog:
    """Cancels calls whose request message has not arrived within `timeout` seconds.

    Handlers register while they wait for the message (`receive`); a daemon thread wakes at the
    earliest deadline (or every second when nothing waits) and cancels what is overdue. At most
    GRPC_THREADS calls wait at once, so a scan is a handful of comparisons.
    """

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._lock = threading.Lock()
        self._waiting: dict[object, tuple[float, grpc.ServicerContext]] = {}
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="grpc-stall-watchdog", daemon=True)
        self._thread.start()

    def receive(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes | None:
        """The call's one request message; None when the client sent none. Raises grpc.RpcError
        when the call was cancelled (by us or the client): grpc then answers nothing more."""
        token = object()
        with self._lock:
            self._waiting[token] = (time.monotonic() + self.timeout, context)
            if len(self._waiting) == 1:
                self._wake.set()
        try:
            return next(requests, None)
        finally:
            with self._lock:
                self._waiting.pop(token, None)

    def _run(self) -> None:
        while True:
            now = time.monotonic()
            with self._lock:
                overdue = [t for t, (deadline, _) in self._waiting.items() if deadline <= now]
                contexts = [self._waiting.pop(t)[1] for t in overdue]
                wait = min((d for d, _ in self._waiting.values()), default=now + 1.0) - now
                self._wake.clear()
            for context in contexts:
                _stall_log.warning(
                    "stalled",
                    "gRPC request message not received within %.1fs: call cancelled",
                    self.timeout,
                )
                context.cancel()
            self._wake.wait(max(0.01, min(wait, 1.0)))


_stall_log = RateLimitedLogger(log)


class InFlightLimit(grpc.ServerInterceptor):
    """Admits at most `limit` calls at once; refuses the rest with UNAVAILABLE + RetryInfo.

    `intercept_service` runs in grpc's serving thread for every call, before the call is queued
    for a handler thread: an admitted call is counted until its handler returns; a refused one is
    answered by a stream-unary handler that never reads the body. Only stream-unary handlers (the
    Export methods) are counted; unknown methods pass through (grpc answers UNIMPLEMENTED).
    """

    def __init__(self, limit: int, service: ExportService, signals: dict[str, Signal]) -> None:
        self.limit = limit
        self.in_flight = 0
        self._lock = threading.Lock()
        self._refusals = {
            method: grpc.stream_unary_rpc_method_handler(self._refuse_behavior(service, signal))
            for method, signal in signals.items()
        }

    def _refuse_behavior(
        self, service: ExportService, signal: Signal
    ) -> Callable[[Iterator[bytes], grpc.ServicerContext], bytes]:
        def refuse(requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
            exc = errors.QueueFull(
                f"too many concurrent requests on this worker (limit {self.limit}); retry later",
                retry_after=_OVERLOAD_RETRY_AFTER,
            )
            service.record_failure(signal, "grpc", exc)
            _overload_log.warning(
                "overload", "gRPC in-flight limit (%d) reached: refusing with UNAVAILABLE", self.limit
            )
            _abort(context, signal, exc)  # raises
            raise AssertionError("unreachable")  # pragma: no cover

        return refuse

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None or handler.stream_unary is None:
            return handler
        with self._lock:
            admitted = self.in_flight < self.limit
            if admitted:
                self.in_flight += 1
        if not admitted:
            return self._refusals.get(handler_call_details.method, handler)
        behavior = handler.stream_unary

        def counted(requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
            try:
                return behavior(requests, context)
            finally:
                with self._lock:
                    self.in_flight -= 1

        return handler._replace(stream_unary=counted)  # type: ignore[attr-defined]


_overload_log = RateLimitedLogger(log)


class BearerAuth(grpc.ServerInterceptor):
    """Refuses Export calls without a valid `authorization: Bearer <token>` with UNAUTHENTICATED.

    Runs first, in grpc's serving thread, from the call's metadata alone: a refused call is
    answered by a handler that never reads the request message, and never takes an in-flight slot
    (the next interceptor is not called). Other methods pass (grpc answers UNIMPLEMENTED).
    """

    def __init__(self, tokens: TokenStore, signals: dict[str, Signal]) -> None:
        self._tokens = tokens
        self._signals = signals

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        signal = self._signals.get(handler_call_details.method)
        if signal is None:
            return continuation(handler_call_details)
        authorization = next(
            (v for k, v in handler_call_details.invocation_metadata or () if k == "authorization"), None
        )
        try:
            self._tokens.check(authorization, "grpc")
        except errors.Unauthenticated as exc:
            error = exc

            def refuse(requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
                _abort(context, signal, error)  # raises; the message is never read
                raise AssertionError("unreachable")  # pragma: no cover

            return grpc.stream_unary_rpc_method_handler(refuse)
        return continuation(handler_call_details)


def _export_handler(
    service: ExportService, signal: Signal, watchdog: StallWatchdog
) -> Callable[[Iterator[bytes], grpc.ServicerContext], bytes]:
    def export(requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
        request = watchdog.receive(requests, context)  # grpc.RpcError when cancelled: propagates
        if request is None:  # what grpc says for a unary method called without a message
            context.abort(grpc.StatusCode.UNIMPLEMENTED, "Export requires exactly one request message")
        try:
            result = service.export(signal, request, "protobuf", "grpc")
            if result.ticket is not None:  # durable mode: answer once the record is fsynced
                result = service.wait_durable(result)
            return result.response
        except Exception as exc:  # every failure becomes a status: never an unhandled error
            failure = exc
        _abort(context, signal, failure)  # raises
        raise AssertionError("unreachable")  # pragma: no cover

    return export


def build_grpc_server(
    service: ExportService, settings: Settings, tokens: TokenStore | None = None
) -> grpc.Server:
    """A grpc server bound (SO_REUSEPORT) to settings.bind:settings.grpc_port, not yet started.

    Serves TLS (or mTLS) when the settings name a certificate (`server_credentials`); with
    `tokens`, Export calls need a bearer token (`BearerAuth`). Raises RuntimeError when the port
    cannot be bound, OSError when a TLS file cannot be read.
    """
    credentials = server_credentials(settings)  # before the server exists: nothing to clean up
    limit = grpc_in_flight_limit(settings, memory_limits(settings), GRPC_THREADS - GRPC_REFUSAL_THREADS)
    methods = {info.grpc_method: signal for signal, info in SIGNALS.items()}
    watchdog = StallWatchdog(settings.http_read_timeout)
    server = grpc.server(
        ThreadPoolExecutor(max_workers=GRPC_THREADS, thread_name_prefix="grpc-export"),
        interceptors=[
            *([BearerAuth(tokens, methods)] if tokens is not None else []),
            InFlightLimit(limit, service, methods),
        ],
        options=[
            ("grpc.so_reuseport", 1),
            ("grpc.max_receive_message_length", settings.grpc_max_recv_bytes),
        ],
    )
    handlers = []
    for signal, info in SIGNALS.items():
        # Stream-unary on our side so the handler reads the message itself, under the watchdog.
        method = grpc.stream_unary_rpc_method_handler(
            _export_handler(service, signal, watchdog),
            request_deserializer=None,  # raw bytes: validate decodes once
            response_serializer=None,  # the response is already serialized
        )
        handlers.append(grpc.method_handlers_generic_handler(info.grpc_service, {"Export": method}))
    server.add_generic_rpc_handlers(tuple(handlers))
    address = grpc_address(settings.bind, settings.grpc_port)
    if credentials is not None:
        bound = server.add_secure_port(address, credentials)
    else:
        bound = server.add_insecure_port(address)
    if bound == 0:  # older grpcio reports failure as port 0
        raise RuntimeError(f"cannot bind gRPC port {address}")
    return server
