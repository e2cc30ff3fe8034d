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

import enum
from dataclasses import dataclass

from otlp_ingest import errors


class GrpcCode(enum.IntEnum):
    """gRPC status codes (grpc/doc/statuscodes.md), the numbers grpc's own `StatusCode` carries.

    Our own enum so that the receiver workers, which serve gRPC themselves (receiver/h2.py), do
    not import grpcio at all: it costs memory in every worker and is not fork-safe.
    """

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


@dataclass(frozen=True)
class WireStatus:
    grpc_code: GrpcCode
    http_status: int
    retry_hint: bool


STATUS_TABLE: tuple[tuple[type[BaseException], WireStatus], ...] = (
    (errors.InvalidArgument, WireStatus(GrpcCode.INVALID_ARGUMENT, 400, False)),
    (errors.UnsupportedMediaType, WireStatus(GrpcCode.INVALID_ARGUMENT, 415, False)),
    (errors.UnsupportedEncoding, WireStatus(GrpcCode.INVALID_ARGUMENT, 415, False)),
    (errors.PayloadTooLarge, WireStatus(GrpcCode.RESOURCE_EXHAUSTED, 413, False)),
    (errors.Unauthenticated, WireStatus(GrpcCode.UNAUTHENTICATED, 401, False)),
    (errors.NotFound, WireStatus(GrpcCode.UNIMPLEMENTED, 404, False)),
    (errors.MethodNotAllowed, WireStatus(GrpcCode.UNIMPLEMENTED, 405, False)),
    (errors.PermanentError, WireStatus(GrpcCode.INVALID_ARGUMENT, 400, False)),
    (errors.QueueFull, WireStatus(GrpcCode.UNAVAILABLE, 503, True)),
    (errors.ShuttingDown, WireStatus(GrpcCode.UNAVAILABLE, 503, True)),
    (errors.MemoryLimited, WireStatus(GrpcCode.UNAVAILABLE, 503, True)),
    (errors.RetryableError, WireStatus(GrpcCode.UNAVAILABLE, 503, True)),
)

# Anything unexpected is still reported as retryable: the data was not accepted, and a bare 500
# tells the client nothing. The exception is logged by the transport.
INTERNAL = WireStatus(GrpcCode.UNAVAILABLE, 503, True)


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
