"""Pins every row of the error -> wire status table (otlp_ingest.status)."""

from __future__ import annotations

import grpc
import pytest

from otlp_ingest import errors
from otlp_ingest.status import INTERNAL, STATUS_TABLE, GrpcCode, WireStatus, retry_after_seconds, status_for

C = grpc.StatusCode

# (error instance, gRPC code, HTTP status, retry hint): one line per row of the table, plus the
# fallback for anything unexpected.
EXPECTED = [
    (errors.InvalidArgument("bad"), C.INVALID_ARGUMENT, 400, False),
    (errors.UnsupportedMediaType("text/plain"), C.INVALID_ARGUMENT, 415, False),
    (errors.UnsupportedEncoding("br"), C.INVALID_ARGUMENT, 415, False),
    (errors.PayloadTooLarge("big"), C.RESOURCE_EXHAUSTED, 413, False),
    (errors.Unauthenticated("no token"), C.UNAUTHENTICATED, 401, False),
    (errors.NotFound("/nope"), C.UNIMPLEMENTED, 404, False),
    (errors.MethodNotAllowed("GET"), C.UNIMPLEMENTED, 405, False),
    (errors.PermanentError("other permanent"), C.INVALID_ARGUMENT, 400, False),
    (errors.QueueFull("full"), C.UNAVAILABLE, 503, True),
    (errors.ShuttingDown("draining"), C.UNAVAILABLE, 503, True),
    (errors.MemoryLimited("memory"), C.UNAVAILABLE, 503, True),
    (errors.RetryableError("later"), C.UNAVAILABLE, 503, True),
    (RuntimeError("bug"), C.UNAVAILABLE, 503, True),
    (ValueError("bug"), C.UNAVAILABLE, 503, True),
]


@pytest.mark.parametrize(("error", "code", "http", "retry"), EXPECTED, ids=lambda v: type(v).__name__)
def test_row(error: BaseException, code: grpc.StatusCode, http: int, retry: bool) -> None:
    # Our GrpcCode carries grpc's own numbers (code.value[0]): the wire value is what is pinned.
    assert status_for(error) == WireStatus(GrpcCode(code.value[0]), http, retry)


def test_every_row_is_pinned() -> None:
    pinned = {type(e) for e, *_ in EXPECTED}
    assert {t for t, _ in STATUS_TABLE} <= pinned
    assert len(STATUS_TABLE) == 12  # a new row needs a new line in EXPECTED


def test_unexpected_is_retryable_never_500() -> None:
    assert INTERNAL.http_status == 503 and INTERNAL.retry_hint
    assert all(wire.http_status != 500 for _, wire in STATUS_TABLE)


def test_permanent_errors_never_carry_a_retry_hint() -> None:
    for error_type, wire in STATUS_TABLE:
        assert wire.retry_hint == issubclass(error_type, errors.RetryableError), error_type


def test_subclass_of_a_row_gets_that_row() -> None:
    class MyFull(errors.QueueFull):
        pass

    assert status_for(MyFull("x")) == status_for(errors.QueueFull("x"))


@pytest.mark.parametrize(
    ("error", "seconds"),
    [
        (errors.QueueFull("x", retry_after=0.1), 1),
        (errors.QueueFull("x", retry_after=1.0), 1),
        (errors.QueueFull("x", retry_after=2.6), 3),
        (errors.ShuttingDown("x", retry_after=5), 5),
        (RuntimeError("x"), 1),
    ],
)
def test_retry_after_seconds(error: BaseException, seconds: int) -> None:
    assert retry_after_seconds(error) == seconds
