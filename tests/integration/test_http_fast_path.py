"""The HTTP/1.1 fast path (receiver/http1_fast.py) in a real worker: it answers as the general
path does, keeps request order when the two mix on one connection, copes with bodies that
arrive in pieces or never, and queues every item it acknowledges exactly once."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from otlp_ingest.otlp.signals import Signal
from otlp_ingest.receiver.http1_fast import MAX_BODY
from tests.integration.test_receiver import Worker, logs_request, span_count, spans_request

pytest.importorskip("otlp_ingest.receiver._http1scan")
READ_TIMEOUT = 1.0


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    w = Worker(tmp_path_factory.mktemp("fast"), http_read_timeout=READ_TIMEOUT).wait_ready()
    yield w
    assert w.stop() == 0


@pytest.fixture
def w(worker: Worker) -> Worker:
    worker.drain()
    return worker


def _request(
    body: bytes, path: bytes = b"/v1/traces", extra: bytes = b"", ctype: bytes = b"x-protobuf"
) -> bytes:
    return (
        b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/%s\r\n%sContent-Length: %d\r\n\r\n%s"
        % (path, ctype, extra, len(body), body)
    )


def _exchange(w: Worker, pieces: list[bytes], answers: int, pause: float = 0.05) -> list[bytes]:
    """Send `pieces` with a pause between them; the raw responses, one per request."""
    with socket.create_connection(("127.0.0.1", w.http_port), timeout=10) as sock:
        for piece in pieces:
            sock.sendall(piece)
            time.sleep(pause)
        data = b""
        while data.count(b"HTTP/1.1 ") < answers or not _complete(data):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    return [b"HTTP/1.1 " + part for part in data.split(b"HTTP/1.1 ")[1:]]


def _complete(data: bytes) -> bool:
    head, sep, rest = data.rpartition(b"HTTP/1.1 ")[2].partition(b"\r\n\r\n")
    if not sep:
        return False
    lengths = [line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")]
    return len(rest) >= int(lengths[0].split(b":")[1]) if lengths else True


def _without_date(response: bytes) -> bytes:
    return b"\r\n".join(line for line in response.split(b"\r\n") if not line.lower().startswith(b"date:"))


def test_the_fast_answer_is_the_general_paths_answer(w: Worker) -> None:
    body = spans_request(3).SerializeToString()
    fast, general = _exchange(w, [_request(body), _request(body, extra=b"Content-Encoding: identity\r\n")], 2)
    assert fast.startswith(b"HTTP/1.1 200 OK\r\n") and b"\r\ndate: " in fast
    assert _without_date(fast) == _without_date(general)
    records = w.drain()
    assert [r.payload for r in records] == [body, body] and [r.item_count for r in records] == [3, 3]


def test_a_body_after_its_head_and_a_body_in_pieces(w: Worker) -> None:
    """Python's http.client sends a head and its body in two writes: held once, then served. A
    body in several pieces goes to llhttp with everything held so far."""
    body = spans_request(10).SerializeToString()
    wire = _request(body)
    head_end = wire.index(b"\r\n\r\n") + 4
    pieces = [wire[:head_end], wire[head_end : head_end + 100], wire[head_end + 100 : head_end + 200]]
    pieces.append(wire[head_end + 200 :])
    for split in ([wire[:head_end], wire[head_end:]], pieces):
        [answer] = _exchange(w, split, 1)
        assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
        [record] = w.drain()
        assert record.payload == body and record.item_count == 10


def test_a_big_body_in_pieces_is_not_held(w: Worker) -> None:
    """Beyond HOLD_MAX_BYTES of a request the bytes go to llhttp (the body budget charges them):
    still one answer, one record."""
    body = spans_request(1000).SerializeToString()
    assert 20_000 < len(body) < MAX_BODY
    wire = _request(body)
    [answer] = _exchange(w, [wire[:20_000], wire[20_000:]], 1)
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
    [record] = w.drain()
    assert record.payload == body and record.item_count == 1000


def test_fast_and_general_requests_on_one_connection_keep_their_order(w: Worker) -> None:
    """Pipelined in one write: plain, JSON, plain, plain with an invalid span (the general
    path's partial success), logs, then a plain one split off into a second write."""
    good = spans_request(2).SerializeToString()
    bad = spans_request(2, bad_trace_ids=1).SerializeToString()
    logs = logs_request().SerializeToString()
    wire = (
        _request(good)
        + _request(b"{}", ctype=b"json")
        + _request(good)
        + _request(bad)
        + _request(logs, path=b"/v1/logs")
    )
    last = _request(good)
    answers = _exchange(w, [wire + last[:20], last[20:]], 6)
    assert [a.split(b"\r\n", 1)[0] for a in answers] == [b"HTTP/1.1 200 OK"] * 6
    assert answers[1].endswith(b"{}") and b"trace_id" in answers[3]
    records = w.drain()  # the general path stages the requests of one read into one record
    traces = [r for r in records if r.signal == Signal.TRACES]
    assert sum(r.item_count for r in traces) == sum(span_count(r.payload) for r in traces) == 2 + 2 + 2 + 2
    assert [r.item_count for r in records if r.signal == Signal.LOGS] == [2]


def test_a_body_that_never_comes_is_answered_at_the_read_timeout(w: Worker) -> None:
    """The held request gets the general path's answer for a late body: 503 + Retry-After."""
    wire = _request(spans_request(1).SerializeToString())
    with socket.create_connection(("127.0.0.1", w.http_port), timeout=10) as sock:
        sock.sendall(wire[:-5])
        started = time.monotonic()
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 503 ") and b"retry-after: 1\r\n" in data.lower()
    assert b"connection: close" in data.lower()
    assert READ_TIMEOUT <= time.monotonic() - started < READ_TIMEOUT + 3
    assert w.drain() == []
