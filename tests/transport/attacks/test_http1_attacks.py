"""Abuse of the HTTP/1.1 port (:4318), one test each, while legitimate clients use the same worker.

The abuser writes raw bytes on a socket; `Attack` (conftest.py) runs the legitimate gRPC and
HTTP load, watches the worker's memory and checks the defence counter
`otlp_transport_defences_total{transport="http", reason=...}`.

Issue 20: a client pipelining more than 64 KiB in one write was dropped with no answer (the whole
read was counted as header bytes), and a client that never reads could make the worker buffer
answers without bound.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time

import pytest

from tests.transport.attacks.conftest import (
    LEGIT_BODY,
    READ_TIMEOUT,
    WRITE_TIMEOUT,
    Gateway,
    KiB,
    MiB,
    Sender,
    close_all,
    closed_by_server,
    dropped,
    expect_all_closed,
    raw_socket,
)

HEADER_LIMIT = 64 * KiB  # the request line and headers of one request (docs/hostile-input.md)
SMALL_BUFFER = 64 * KiB
UNREAD_MAX = 40 * MiB  # what a client that never reads may get taken from it, kernel buffers included


JSON_BODY = b'{"resourceSpans":[]}'  # a valid, empty OTLP/JSON request


def post(
    body: bytes = LEGIT_BODY, extra: bytes = b"", content_type: bytes = b"application/x-protobuf"
) -> bytes:
    """A complete OTLP request for /v1/traces."""
    return (
        b"POST /v1/traces HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
        + content_type
        + b"\r\n"
        + extra
        + b"Content-Length: %d\r\n\r\n" % len(body)
        + body
    )


class Responses:
    """Reads HTTP/1.1 responses from a socket in a thread: their status codes, in order, and
    whether (and when) the server closed the connection."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.statuses: list[int] = []
        self.closed_at: float | None = None
        self.error = ""
        self.started = time.monotonic()
        self._buf = b""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="http-responses")
        self._thread.start()

    def _run(self) -> None:
        self.sock.settimeout(0.5)
        while not self._stop.is_set():
            try:
                data = self.sock.recv(1 << 18)
            except TimeoutError:
                continue
            except OSError as exc:
                self.error = repr(exc)
                self.closed_at = time.monotonic() - self.started
                return
            if not data:
                self.closed_at = time.monotonic() - self.started
                return
            self._buf += data
            self._parse()

    def _parse(self) -> None:
        while True:
            end = self._buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self._buf[:end].decode("latin-1").split("\r\n")
            length = 0
            for line in head[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value.strip())
            if len(self._buf) < end + 4 + length:
                return
            self.statuses.append(int(head[0].split()[1]))
            self._buf = self._buf[end + 4 + length :]

    def wait(self, count: int, until: float) -> bool:
        """Until `count` responses arrived, the connection closed, or `until` (monotonic)."""
        while len(self.statuses) < count and self.closed_at is None:
            if time.monotonic() >= until:
                return False
            time.sleep(0.02)  # polling with a deadline
        return len(self.statuses) >= count

    def wait_closed(self, until: float) -> bool:
        while self.closed_at is None:
            if time.monotonic() >= until:
                return False
            time.sleep(0.02)  # polling with a deadline
        return True

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)


def test_pipelined_requests_over_64_kib_in_one_write_are_all_answered(gateway: Gateway, attack) -> None:
    """~160 KiB of small valid requests (OTLP/protobuf and OTLP/JSON in turn) in one write whose
    last request head is completed by a second write: each head is far under the limit, so every
    request is answered 200 on the kept-alive connection. Before, a read that ended inside a
    head was counted as header bytes whole, and the connection was dropped without an answer."""
    with attack("http", None, forbid=("header_too_large", "bad_request")) as a:
        sock = raw_socket(gateway.http_address)
        responses = Responses(sock)
        try:
            pair = post() + post(JSON_BODY, content_type=b"application/json")
            n = 2 * (160 * KiB // len(pair) + 1)
            data = pair * (n // 2)
            cut = (
                len(data) - len(post(JSON_BODY, content_type=b"application/json")) + 40
            )  # inside the last head
            sock.sendall(data[:cut])
            time.sleep(0.2)  # the server reads the first write alone
            sock.sendall(data[cut:])
            answered = responses.wait(n, time.monotonic() + 5.0)
            statuses = {s: responses.statuses.count(s) for s in set(responses.statuses)}
            a.note(
                f"{n} pipelined requests ({cut // KiB} KiB in the first write): "
                f"answers {statuses}, closed at {responses.closed_at}"
            )
            a.expect(answered, f"only {len(responses.statuses)} of {n} pipelined requests answered")
            a.expect(
                responses.statuses == [200] * len(responses.statuses),
                f"answers other than 200: {statuses}",
            )
            a.expect(responses.closed_at is None, "the server closed a healthy pipelining connection")
        finally:
            responses.stop()
            close_all([sock])


@pytest.mark.parametrize("before", [0, 100], ids=["alone", "after-100-pipelined-requests"])
def test_a_request_head_over_64_kib_gets_431(gateway: Gateway, attack, before: int) -> None:
    """One request whose head is over 64 KiB (a 70 KiB header), alone or after 100 small valid
    requests in the same write: the small ones are answered 200, the big one 431, then close."""
    with attack("http", "header_too_large") as a:
        sock = raw_socket(gateway.http_address)
        responses = Responses(sock)
        try:
            big = post(b"", extra=b"X-Big: " + b"b" * (70 * KiB) + b"\r\n")
            sock.sendall(post() * before + big)
            responses.wait(before + 1, time.monotonic() + 3.0)
            closed = responses.wait_closed(time.monotonic() + 2.0)
            a.note(f"{before} requests then a 70 KiB head: answers {responses.statuses}"[:300])
            a.expect(
                responses.statuses == [200] * before + [431],
                f"expected {before} x 200 then 431, got {len(responses.statuses)} answers: "
                f"{sorted(set(responses.statuses))}, last {responses.statuses[-1:]}",
            )
            a.expect(closed, "the connection was not closed after the 431")
        finally:
            responses.stop()
            close_all([sock])


def test_a_never_reading_pipeliner_is_not_read_and_is_closed_after_the_write_timeout(
    gateway: Gateway, attack
) -> None:
    """A client pipelining requests forever and never reading an answer (GET /v1/traces: 36
    bytes in, a 193-byte 405 out). The worker must stop reading it once its answers are not
    taken (memory bounded) and close it after OTLP_WRITE_TIMEOUT."""
    with attack("http", "write_stalled") as a:
        sock = raw_socket(gateway.http_address, rcvbuf=SMALL_BUFFER, sndbuf=SMALL_BUFFER)
        sock.settimeout(0.5)  # a write that makes no progress for this long is 'blocked'
        out = Sender(sock)
        started = time.monotonic()
        try:
            chunk = b"GET /v1/traces HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" * 1000
            until = started + WRITE_TIMEOUT + 4.0
            out.flood(lambda: chunk, until, stop=lambda: closed_by_server(sock) or a.stopped)
            closed = False
            while not closed and time.monotonic() < until:
                closed = bool(out.closed) or dropped(gateway, sock)
                time.sleep(0.1)  # polling with a deadline
            blocked = "never" if out.first_blocked is None else f"{out.first_blocked - started:.2f}s"
            a.note(
                f"never-reading pipeliner: sent {out.sent / KiB:.0f} KiB, writes first blocked at {blocked}, "
                f"{'closed' if closed else 'still open'} at {time.monotonic() - started:.2f}s"
            )
            a.expect(
                out.sent <= UNREAD_MAX,
                f"the server took {out.sent / MiB:.0f} MiB from a client that reads nothing (limit "
                f"{UNREAD_MAX // MiB} MiB, kernel buffers included): it does not stop reading it",
            )
            a.expect(closed, f"the connection was still held {until - started:.1f}s after the attack began")
        finally:
            close_all([sock])


def test_two_thousand_slow_loris_connections_are_closed_after_the_read_timeout(
    gateway: Gateway, attack
) -> None:
    """2,000 connections sending a request head a byte at a time (every 0.5 s), never ending
    it: each is closed once the read timeout has passed since its first byte (a total deadline,
    not an idle one), while legitimate requests are served."""
    with attack("http", "header_timeout") as a:
        socks = []
        try:
            head = (
                b"POST /v1/traces HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Content-Type: application/x-protobuf\r\nX-Slow: "
            )
            for _ in range(2000):
                if a.stopped:
                    break
                sock = raw_socket(gateway.http_address)
                sock.sendall(head)
                socks.append(sock)
            connected = a.elapsed()
            until = time.monotonic() + READ_TIMEOUT + 2.5
            while time.monotonic() < until:
                open_socks = [s for s in socks if not closed_by_server(s)]
                if not open_socks:
                    break
                for sock in open_socks:  # one more byte each: the dribble
                    with contextlib.suppress(OSError):
                        sock.send(b"s")
                time.sleep(0.5)  # the slow-loris pace
            expect_all_closed(a, socks, 2000, time.monotonic(), "2,000 slow-loris connections", connected)
        finally:
            close_all(socks)
