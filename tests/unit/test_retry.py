"""Retry classification (OTLP spec table), server hints, backoff and the abortable retry loop."""

from __future__ import annotations

import email.utils
import threading
import time

import grpc
import pytest
from google.protobuf import duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from otlp_ingest.exporter.congestion import OK, OTHER, RETRY, SendWindow
from otlp_ingest.exporter.retry import (
    RetriesExhausted,
    RetryAborted,
    RetryPolicy,
    call_with_retry,
    grpc_retry_delay,
    grpc_send_error,
    http_send_error,
    parse_retry_after,
)
from otlp_ingest.exporter.sender import SendError
from otlp_ingest.receiver.export import QueueFullHint


def retry_info_trailer(seconds: float) -> tuple[tuple[str, bytes], ...]:
    delay = duration_pb2.Duration()
    delay.FromNanoseconds(int(seconds * 1e9))
    status = status_pb2.Status(code=code_pb2.UNAVAILABLE, message="busy")
    status.details.add().Pack(error_details_pb2.RetryInfo(retry_delay=delay))
    return (("grpc-status-details-bin", status.SerializeToString()),)


@pytest.mark.parametrize(
    ("code", "retryable"),
    [
        (grpc.StatusCode.UNAVAILABLE, True),
        (grpc.StatusCode.ABORTED, True),
        (grpc.StatusCode.CANCELLED, True),
        (grpc.StatusCode.DEADLINE_EXCEEDED, True),
        (grpc.StatusCode.OUT_OF_RANGE, True),
        (grpc.StatusCode.DATA_LOSS, True),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, False),
        (grpc.StatusCode.INVALID_ARGUMENT, False),
        (grpc.StatusCode.UNAUTHENTICATED, False),
        (grpc.StatusCode.PERMISSION_DENIED, False),
        (grpc.StatusCode.UNIMPLEMENTED, False),
        (grpc.StatusCode.INTERNAL, False),
    ],
)
def test_grpc_codes(code: grpc.StatusCode, retryable: bool) -> None:
    assert grpc_send_error(code, "x", ()).retryable is retryable


def test_resource_exhausted_is_retryable_only_with_retry_info() -> None:
    error = grpc_send_error(grpc.StatusCode.RESOURCE_EXHAUSTED, "slow down", retry_info_trailer(2.5))
    assert (error.retryable, error.retry_after) == (True, 2.5)


def test_retry_info_is_read_from_the_status_details_trailer() -> None:
    assert grpc_retry_delay(retry_info_trailer(0.25)) == pytest.approx(0.25)
    assert grpc_retry_delay((("other", "x"),)) is None
    assert grpc_retry_delay(None) is None
    assert grpc_retry_delay((("grpc-status-details-bin", b"\xff\xff not a status"),)) is None


@pytest.mark.parametrize(
    ("status", "retryable"),
    [
        (429, True),
        (502, True),
        (503, True),
        (504, True),
        (400, False),
        (401, False),
        (413, False),
        (500, False),
    ],
)
def test_http_statuses(status: int, retryable: bool) -> None:
    assert http_send_error(status, None).retryable is retryable


def test_retry_after_seconds_and_http_date() -> None:
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(" 0.5 ") == 0.5
    now = time.time()
    assert parse_retry_after(email.utils.formatdate(now + 30, usegmt=True), now=now) == pytest.approx(
        30, abs=1
    )
    assert parse_retry_after(email.utils.formatdate(now - 30, usegmt=True), now=now) == 0.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None
    assert http_send_error(503, "3").retry_after == 3.0


def test_full_jitter_backoff_is_bounded_by_the_exponential_ceiling() -> None:
    policy = RetryPolicy(initial_interval=0.5, max_interval=4.0, max_elapsed=60)
    assert [policy.backoff(n, lambda: 1.0) for n in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert policy.backoff(3, lambda: 0.0) == 0.0
    assert policy.backoff(1000, lambda: 1.0) == 4.0


class FakeTime:
    """A clock the retry loop's waits advance, via an Event whose wait() moves time."""

    def __init__(self) -> None:
        self.now = 0.0
        self.waits: list[float] = []

    def clock(self) -> float:
        return self.now

    def event(self) -> threading.Event:
        fake = self

        class Ev(threading.Event):
            def wait(self, timeout: float | None = None) -> bool:
                fake.waits.append(timeout or 0.0)
                fake.now += timeout or 0.0
                return self.is_set()

        return Ev()


def failing(errors: list[SendError], result: str = "ok"):
    def attempt() -> str:
        if errors:
            raise errors.pop(0)
        return result

    return attempt


def test_server_hint_wins_over_backoff() -> None:
    t = FakeTime()
    errors = [SendError("busy", retryable=True, retry_after=3.0), SendError("down", retryable=True)]
    retries: list[float] = []
    result = call_with_retry(
        failing(errors),
        RetryPolicy(1.0, 10.0, 60.0),
        t.event(),
        on_retry=lambda e, d: retries.append(d),
        clock=t.clock,
        rand=lambda: 0.5,
    )
    assert result == "ok"
    assert retries == t.waits == [3.0, 1.0]  # hint, then jittered backoff of attempt 1 (0.5 * 2)


def test_permanent_error_is_raised_at_once() -> None:
    t = FakeTime()
    with pytest.raises(SendError, match="bad"):
        call_with_retry(failing([SendError("bad", retryable=False)]), RetryPolicy(), t.event(), clock=t.clock)
    assert t.waits == []


def test_gives_up_when_the_next_wait_would_pass_max_elapsed() -> None:
    t = FakeTime()
    errors = [SendError("down", retryable=True, retry_after=4.0) for _ in range(10)]
    with pytest.raises(RetriesExhausted) as info:
        call_with_retry(failing(errors), RetryPolicy(1, 10, 10.0), t.event(), clock=t.clock)
    assert info.value.retryable is False
    assert t.waits == [4.0, 4.0]  # a third wait would end at 12 s > 10 s


def test_max_elapsed_zero_retries_forever() -> None:
    # Like the Collector's max_elapsed_time: 0. Hours of fake outage, then the backend is back.
    t = FakeTime()
    errors = [SendError("down", retryable=True, retry_after=60.0) for _ in range(200)]
    assert call_with_retry(failing(errors), RetryPolicy(1, 30, 0.0), t.event(), clock=t.clock) == "ok"
    assert len(t.waits) == 200 and t.now == 200 * 60.0


def test_max_elapsed_zero_is_the_default_and_abort_still_interrupts_at_once() -> None:
    assert RetryPolicy().max_elapsed == 0.0
    abort = threading.Event()
    threading.Timer(0.1, abort.set).start()
    start = time.monotonic()
    with pytest.raises(RetryAborted):
        call_with_retry(failing([SendError("down", retryable=True, retry_after=60.0)]), RetryPolicy(), abort)
    assert time.monotonic() - start < 5.0


def test_abort_interrupts_a_long_wait_at_once() -> None:
    abort = threading.Event()
    errors = [SendError("down", retryable=True, retry_after=60.0)]
    threading.Timer(0.1, abort.set).start()
    start = time.monotonic()
    with pytest.raises(RetryAborted):
        call_with_retry(failing(errors), RetryPolicy(1, 120, 600), abort)
    assert time.monotonic() - start < 5.0


# -- "too large", the send window and the queue-full hint ----------------------------------------


def test_too_large_is_flagged_for_splitting() -> None:
    assert http_send_error(413, None).too_large
    assert not http_send_error(400, None).too_large
    assert grpc_send_error(grpc.StatusCode.RESOURCE_EXHAUSTED, "big", None).too_large
    # With RetryInfo, RESOURCE_EXHAUSTED is a rate limit, not a size problem.
    assert not grpc_send_error(grpc.StatusCode.RESOURCE_EXHAUSTED, "slow", retry_info_trailer(1)).too_large


def test_send_window_starts_at_one_doubles_on_success_and_collapses_on_retryable_failure() -> None:
    window = SendWindow(8)
    sizes = []
    for outcome in (OK, OK, OK, OK, RETRY, OTHER, OK):
        window.acquire()
        window.release(outcome)
        sizes.append(window.window)
    assert sizes == [2, 4, 8, 8, 1, 1, 2]


def test_send_window_blocks_past_the_window_and_close_wakes_waiters_at_once() -> None:
    window = SendWindow(4)
    window.acquire()  # window is 1: a second acquire waits
    got: list[str] = []

    def second() -> None:
        try:
            window.acquire()
            got.append("acquired")
        except RetryAborted:
            got.append("aborted")

    t = threading.Thread(target=second)
    t.start()
    t.join(0.2)
    assert got == []
    window.close()
    t.join(2.0)
    assert got == ["aborted"]


def test_queue_full_hint_doubles_while_full_with_jitter_and_resets() -> None:
    now = [0.0]
    hint = QueueFullHint(clock=lambda: now[0], rand=lambda: 0.5)  # jitter factor 1.0
    seen = []
    for t in (0.0, 0.5, 1.0, 3.0, 7.0, 15.0, 31.0, 600.0):
        now[0] = t
        seen.append(hint.refused())
    assert seen == [1, 1, 2, 4, 8, 16, 30, 30]
    hint.accepted()
    now[0] = 601.0
    assert hint.refused() == 1
    low = QueueFullHint(clock=lambda: 3.0, rand=lambda: 0.0)
    high = QueueFullHint(clock=lambda: 3.0, rand=lambda: 0.999)
    assert low.refused() == 0.5 and 1.49 < high.refused() < 1.5  # spread: [0.5, 1.5) x base
