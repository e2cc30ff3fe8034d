"""OTLP/gRPC: the three Export methods over our HTTP/2 connections (h2.py).

A call is one HTTP/2 stream: request headers (`:method POST`, `:path
/<service>/Export`, `content-type: application/grpc...`, optional `grpc-encoding`), one
length-prefixed message (1 byte compressed flag, 4 bytes big-endian length, the serialized
`Export*ServiceRequest`), and the response: HEADERS, one length-prefixed
`Export*ServiceResponse`, trailers with `grpc-status: 0`. Errors are "trailers-only" (one HEADERS
frame ending the stream) with `grpc-status`, a percent-encoded `grpc-message` and a
`google.rpc.Status` in `grpc-status-details-bin` (base64), carrying `google.rpc.RetryInfo` when
the client should retry; codes come from `otlp_ingest.status`.

The request body is decoded once, by `validate` (no request deserializer), and the response is
built from bytes prepared once per signal. Decompression (`grpc-encoding: gzip | zstd | deflate`,
which grpcio's own server could not offer for zstd) is ours, capped at `grpc_max_recv_bytes` like
the compressed message (RESOURCE_EXHAUSTED, no RetryInfo).

Authentication (`otlp_ingest.auth`, with settings.auth_tokens_file): an Export call's
`authorization: Bearer <token>` metadata is checked right after its path, before its encoding,
the memory limiter, the in-flight limit or its message: a missing or unknown token is answered
UNAUTHENTICATED (+ google.rpc.Status) and takes no in-flight slot.

Overload (docs/hostile-input.md): admission counts bytes, not calls. The HTTP/2 connection
charges a call's message bytes to the worker's budget (`inflight.grpc_admission_bytes`) as they
arrive and each connection's flow-control window is its fair share of it; a call the budget
cannot hold is refused with UNAVAILABLE + RetryInfo (`on_over_budget`), as it is at its headers
while the memory limiter refuses. A compressed message is charged again for its decompressed
size while it is decoded and queued. A call whose message has not arrived within
`http_read_timeout` is reset with CANCEL (the client sees CANCELLED). Nothing here holds a
thread: a stalled client costs the bytes it sent.
"""

from __future__ import annotations

import base64
import logging
from urllib.parse import quote

from otlp_ingest import errors
from otlp_ingest.otlp.signals import SIGNALS, Signal
from otlp_ingest.receiver.dispatch import Done, Receiving, should_offload
from otlp_ingest.receiver.export import MEMORY_RETRY_AFTER, ExportResult
from otlp_ingest.receiver.limits import decompress
from otlp_ingest.receiver.rpc_status import DETAILS_TRAILER, client_message, status_bytes
from otlp_ingest.status import GrpcCode, retry_after_seconds, status_for
from otlp_ingest.telemetry.logging import RateLimitedLogger
from otlp_ingest.transport.defences import BodyBudget
from otlp_ingest.transport.h2 import H2Connection
from otlp_ingest.transport.hpack import encode_literal
from otlp_ingest.transport.streams import Stream

log = logging.getLogger(__name__)
_unexpected_log = RateLimitedLogger(log)

_OVERLOAD_RETRY_AFTER = 1.0
# grpc-encoding values we decompress (the compressed flag of a message must match one of them).
_ENCODINGS = {b"identity": "identity", b"gzip": "gzip", b"deflate": "deflate", b"zstd": "zstd"}
ACCEPT_ENCODING = b"identity,gzip,deflate,zstd"
_STATUS_200 = b"\x88"  # ":status: 200", static table index 8 (RFC 7541 Appendix A)
_CONTENT_TYPE = (b"content-type", b"application/grpc")
RESPONSE_HEADERS = _STATUS_200 + encode_literal([_CONTENT_TYPE, (b"grpc-accept-encoding", ACCEPT_ENCODING)])
OK_TRAILERS = encode_literal([(b"grpc-status", b"0")])
# Printable ASCII but '%' stays as is in grpc-message (the gRPC HTTP/2 spec's percent-encoding).
_MESSAGE_SAFE = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) != "%" and not chr(c).isalnum())
_MESSAGE_MAX = 1024
# A client's path echoed in an UNIMPLEMENTED message is cut here: an answer must not cost much
# more than the request that caused it.
_PATH_ECHO_MAX = 128
_HTTP_REASONS = {405: b"method not allowed: gRPC calls are POST\n", 415: b"not a gRPC request\n"}


def message_frame(payload: bytes) -> bytes:
    """A gRPC length-prefixed message, uncompressed."""
    return b"\x00" + len(payload).to_bytes(4, "big") + payload


def error_block(code: int, message: str, retry_after: int | None = None) -> bytes:
    """A trailers-only response header block for a failed call."""
    if len(message) > _MESSAGE_MAX:
        message = message[:_MESSAGE_MAX] + "..."
    details = base64.b64encode(status_bytes(code, message, retry_after)).rstrip(b"=")
    return _STATUS_200 + encode_literal(
        [
            _CONTENT_TYPE,
            # Always: an UNIMPLEMENTED for an encoding must name the ones we take (gRPC's
            # compression spec), and it costs a few bytes on errors only.
            (b"grpc-accept-encoding", ACCEPT_ENCODING),
            (b"grpc-status", str(code).encode()),
            (b"grpc-message", quote(message, safe=_MESSAGE_SAFE).encode()),
            (DETAILS_TRAILER.encode(), details),
        ]
    )


def http_error_block(status: int) -> bytes:
    """A response that is not gRPC at all (wrong method or content type), as grpc servers answer;
    its body is `_HTTP_REASONS[status]`."""
    return encode_literal([(b":status", str(status).encode()), (b"content-type", b"text/plain")])


class GrpcReceiver:
    """The `StreamHandler` of the gRPC port: one worker's OTLP Export methods."""

    def __init__(self, receiving: Receiving, budget: BodyBudget) -> None:
        self.service = receiving.service
        self.runner = receiving.runner
        self.tokens = receiving.tokens
        self.budget = budget  # also charged by the connections with the bytes of each message
        self.max_message = receiving.settings.grpc_max_recv_bytes
        self._signals = {info.grpc_method.encode(): signal for signal, info in SIGNALS.items()}
        self._services = {info.grpc_service.encode() for info in SIGNALS.values()}
        # The empty Export*ServiceResponse: what almost every call gets.
        self._ok = {signal: message_frame(b"") for signal in SIGNALS}

    # --- StreamHandler -------------------------------------------------------------------------------

    def on_request(self, conn: H2Connection, stream: Stream) -> None:
        headers = stream.headers
        if headers.get(b":method") != b"POST":
            conn.respond(stream, http_error_block(405), _HTTP_REASONS[405])
            return
        if not headers.get(b"content-type", b"").startswith(b"application/grpc"):
            conn.respond(stream, http_error_block(415), _HTTP_REASONS[415])
            return
        path = headers.get(b":path", b"")
        signal = self._signals.get(path)
        if signal is None:
            self._unimplemented(conn, stream, path)
            return
        if self.tokens is not None:  # first: an unauthenticated client learns nothing more
            try:
                self.tokens.check(headers.get(b"authorization"), "grpc")  # counts both outcomes
            except errors.Unauthenticated as exc:
                self._abort(conn, stream, signal, exc)  # no in-flight slot, the body unread
                return
        encoding = _ENCODINGS.get(headers.get(b"grpc-encoding", b"identity"))
        if encoding is None:
            shown = headers.get(b"grpc-encoding", b"").decode("latin-1")
            exc = errors.UnsupportedEncoding(
                f"grpc-encoding {shown!r} not supported; use gzip, zstd or deflate"
            )
            self._fail(conn, stream, signal, exc, GrpcCode.UNIMPLEMENTED)
            return
        if self.service.memory_refusing():  # before the body: it would only add to it
            self._refuse(
                conn,
                stream,
                signal,
                errors.MemoryLimited(
                    "memory limit reached: the server is overloaded, retry later",
                    retry_after=MEMORY_RETRY_AFTER,
                ),
            )
            return
        stream.max_body = self.max_message + 5
        stream.context = _Call(signal, encoding)

    def on_body(self, conn: H2Connection, stream: Stream) -> None:
        call: _Call = stream.context  # type: ignore[assignment]
        signal, encoding = call.signal, call.encoding
        body = stream.body()
        stream.chunks = []
        if len(body) < 5 or int.from_bytes(body[1:5], "big") != len(body) - 5:
            # No message, a truncated one or more than one: a unary method takes exactly one.
            message = "Export requires exactly one request message"
            if 5 <= len(body) < 5 + int.from_bytes(body[1:5], "big"):
                message = "truncated request message"
            self._fail(conn, stream, signal, errors.InvalidArgument(message), GrpcCode.UNIMPLEMENTED)
            return
        compressed = body[0] & 1
        if compressed and encoding == "identity":
            exc = errors.InvalidArgument("compressed message without a grpc-encoding")
            self._fail(conn, stream, signal, exc, GrpcCode.INTERNAL)
            return
        payload = body[5:]
        del body
        service = self.service
        limit = self.max_message
        budget = self.budget

        def work(done: Done | None) -> ExportResult | None:
            if not compressed:
                return service.export(signal, payload, "protobuf", "grpc", done)
            message = decompress(encoding, payload, limit)
            charged = len(message)
            if not budget.try_charge(charged):
                raise _busy()
            try:
                return service.export(signal, message, "protobuf", "grpc", done)
            finally:
                budget.release(charged)

        def answer(result: ExportResult | None, exc: BaseException | None) -> None:
            if result is not None:
                data = self._ok[signal] if result.response == b"" else message_frame(result.response)
                conn.respond(stream, RESPONSE_HEADERS, data, OK_TRAILERS)
            else:
                self._abort(conn, stream, signal, exc or RuntimeError("no result"))

        self.runner.run(work, should_offload(len(payload), bool(compressed)), answer)

    def on_too_large(self, conn: H2Connection, stream: Stream) -> None:
        signal = stream.context.signal  # type: ignore[union-attr]
        exc = errors.PayloadTooLarge(
            f"received message larger than max ({stream.received - 5} vs. {self.max_message})"
        )
        self._refuse(conn, stream, signal, exc)

    def on_over_budget(self, conn: H2Connection, stream: Stream) -> None:
        self._refuse(conn, stream, stream.context.signal, _busy())  # type: ignore[union-attr]

    def on_stalled(self, conn: H2Connection, stream: Stream) -> None:
        conn.cancel(stream)  # counted and logged by the connection (body_timeout)

    def on_closed(self, stream: Stream) -> None:
        pass  # the connection released what the stream held; nothing else is per call

    # --- answers -----------------------------------------------------------------------------------

    def _unimplemented(self, conn: H2Connection, stream: Stream, path: bytes) -> None:
        service = path[1:].rsplit(b"/", 1)[0]
        what = "method" if service in self._services else "service"
        shown = path[:_PATH_ECHO_MAX].decode("latin-1") + ("..." if len(path) > _PATH_ECHO_MAX else "")
        message = f"unknown {what} {shown!r}"
        conn.respond(stream, error_block(GrpcCode.UNIMPLEMENTED, message))

    def _refuse(self, conn: H2Connection, stream: Stream, signal: Signal, exc: errors.OtlpError) -> None:
        """A refusal before export(): counted here, answered by the table."""
        self.service.record_failure(signal, "grpc", exc)
        self._abort(conn, stream, signal, exc)

    def _fail(
        self, conn: H2Connection, stream: Stream, signal: Signal, exc: errors.OtlpError, code: GrpcCode
    ) -> None:
        """A call gRPC itself rejects (its code is gRPC's, not the table's): counted, answered."""
        self.service.record_failure(signal, "grpc", exc)
        conn.respond(stream, error_block(code, exc.message))

    def _abort(self, conn: H2Connection, stream: Stream, signal: Signal, exc: BaseException) -> None:
        wire = status_for(exc)
        where = f"gRPC {SIGNALS[signal].name} export (answered UNAVAILABLE)"
        message = client_message(exc, _unexpected_log, where)
        retry = retry_after_seconds(exc) if wire.retry_hint else None
        conn.respond(stream, error_block(int(wire.grpc_code), message, retry))


class _Call:
    """An admitted Export call's state on its stream."""

    __slots__ = ("encoding", "signal")

    def __init__(self, signal: Signal, encoding: str) -> None:
        self.signal = signal
        self.encoding = encoding


def _busy() -> errors.QueueFull:
    return errors.QueueFull(
        "request bodies held by this worker are at their limit; retry later",
        retry_after=_OVERLOAD_RETRY_AFTER,
    )
