"""The one table that maps error types to wire codes.

Every transport asks `status_for(error)` and uses the row it gets: the gRPC status code, the HTTP
status and whether a retry hint (gRPC `RetryInfo`, HTTP `Retry-After`) is attached. The order of
rows matters only for subclasses: the first row whose type matches wins.

Per the OTLP specification (opentelemetry-proto docs/specification.md): malformed data is
INVALID_ARGUMENT / 400 and never retryable; overload is UNAVAILABLE + RetryInfo / 503 +
Retry-After; a request that is too large is RESOURCE_EXHAUSTED *without* RetryInfo / 413; a
missing or wrong bearer token is UNAUTHENTICATED / 401, never retryable (the OTLP clients treat
both as permanent: retrying with the same credentials cannot help).
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc

from otlp_ingest import errors


@dataclass(frozen=True)
class WireStatus:
    grpc_code: grpc.StatusCode
    http_status: int
    retry_hint: bool


STATUS_TABLE: tuple[tuple[type[BaseException], WireStatus], ...] = (
    (errors.InvalidArgument, WireStatus(grpc.StatusCode.INVALID_ARGUMENT, 400, False)),
    (errors.UnsupportedMediaType, WireStatus(grpc.StatusCode.INVALID_ARGUMENT, 415, False)),
    (errors.UnsupportedEncoding, WireStatus(grpc.StatusCode.INVALID_ARGUMENT, 415, False)),
    (errors.PayloadTooLarge, WireStatus(grpc.StatusCode.RESOURCE_EXHAUSTED, 413, False)),
    (errors.Unauthenticated, WireStatus(grpc.StatusCode.UNAUTHENTICATED, 401, False)),
    (errors.NotFound, WireStatus(grpc.StatusCode.UNIMPLEMENTED, 404, False)),
    (errors.MethodNotAllowed, WireStatus(grpc.StatusCode.UNIMPLEMENTED, 405, False)),
    (errors.PermanentError, WireStatus(grpc.StatusCode.INVALID_ARGUMENT, 400, False)),
    (errors.QueueFull, WireStatus(grpc.StatusCode.UNAVAILABLE, 503, True)),
    (errors.ShuttingDown, WireStatus(grpc.StatusCode.UNAVAILABLE, 503, True)),
    (errors.MemoryLimited, WireStatus(grpc.StatusCode.UNAVAILABLE, 503, True)),
    (errors.RetryableError, WireStatus(grpc.StatusCode.UNAVAILABLE, 503, True)),
)

# Anything unexpected is still reported as retryable: the data was not accepted, and a bare 500
# tells the client nothing. The exception is logged by the transport.
INTERNAL = WireStatus(grpc.StatusCode.UNAVAILABLE, 503, True)


def status_for(error: BaseException) -> WireStatus:
    """The wire status for `error` (first matching row of STATUS_TABLE, else INTERNAL)."""
    for error_type, wire in STATUS_TABLE:
        if isinstance(error, error_type):
            return wire
    return INTERNAL


def retry_after_seconds(error: BaseException) -> int:
    """Whole seconds for a Retry-After header / RetryInfo (at least 1)."""
    delay = getattr(error, "retry_after", 1.0)
    return max(1, round(delay))
