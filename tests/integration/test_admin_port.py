"""The admin port (:8888) is network-facing and lives in the supervisor (PID 1 in the container):
no client of it may grow the supervisor (issue 20; supervisor/admin.py lists the bounds).

The old `ThreadingHTTPServer` gave each connection a thread: 3,000 connections that send half a
request head made 3,000 threads and +78 MiB. Here the same flood meets a bounded event loop.
"""

from __future__ import annotations

import contextlib
import resource
import socket
import time

import psutil
import pytest

from tests.conftest import http_get
from tests.support.waiting import wait_until

FLOOD = 3000
HALF_HEAD = b"GET /health HTTP/1.1\r\nHost: localhost\r\nUser-Agent: half-sent-"
HEADER_TIMEOUT = 2.0
MAX_CONNECTIONS = 64
MiB = 1024 * 1024


def _raise_nofile(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return
    if hard != resource.RLIM_INFINITY and hard < needed:
        pytest.skip(f"needs {needed} file descriptors, the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


def _closed(sock: socket.socket) -> bool:
    """True once the server closed the connection (FIN or RST); the socket is non-blocking."""
    try:
        return sock.recv(4096) == b""
    except BlockingIOError:
        return False
    except OSError:  # reset
        return True


def _timed_get(url: str) -> tuple[int, float]:
    started = time.monotonic()
    status, _body = http_get(url, timeout=5.0)
    return status, time.monotonic() - started


def _defences(server: object, reason: str) -> float:
    return server.metrics().value("otlp_transport_defences_total", transport="admin", reason=reason)  # type: ignore[attr-defined]


def test_half_sent_heads_do_not_grow_the_supervisor(server_factory):
    _raise_nofile(FLOOD + 1024)
    server = server_factory(
        env={
            "OTLP_ADMIN_MAX_CONNECTIONS": str(MAX_CONNECTIONS),
            "OTLP_ADMIN_HEADER_TIMEOUT": f"{HEADER_TIMEOUT}s",
        }
    )
    supervisor = psutil.Process(server.pid)
    for path in ("/health", "/metrics", "/status.json"):  # warm: render threads and caches exist
        assert http_get(server.admin_url + path)[0] == 200
    threads_before, rss_before = supervisor.num_threads(), supervisor.memory_info().rss

    stalled: list[socket.socket] = []
    worst = {"/health": 0.0, "/metrics": 0.0}
    threads_peak, rss_peak = threads_before, rss_before
    try:
        for i in range(FLOOD):
            sock = socket.create_connection(("127.0.0.1", server.admin_port), timeout=10)
            sock.sendall(HALF_HEAD + str(i).encode())
            sock.setblocking(False)
            stalled.append(sock)
            if i % 500 == 499:  # the probes and the scrape keep answering, quickly, meanwhile
                for path in worst:
                    status, elapsed = _timed_get(server.admin_url + path)
                    assert status == 200, f"{path} answered {status} after {i + 1} stalled connections"
                    worst[path] = max(worst[path], elapsed)
                threads_peak = max(threads_peak, supervisor.num_threads())
                rss_peak = max(rss_peak, supervisor.memory_info().rss)
        threads_peak = max(threads_peak, supervisor.num_threads())
        rss_peak = max(rss_peak, supervisor.memory_info().rss)
        print(
            f"\nsupervisor under {FLOOD} half-sent heads: threads {threads_before} -> {threads_peak}, "
            f"RSS {rss_before / MiB:.1f} -> {rss_peak / MiB:.1f} MiB; worst /health "
            f"{worst['/health'] * 1000:.0f} ms, /metrics {worst['/metrics'] * 1000:.0f} ms"
        )
        assert worst["/health"] < 1.0 and worst["/metrics"] < 1.0, worst
        assert threads_peak <= threads_before + 2, (threads_before, threads_peak)
        assert rss_peak - rss_before < 16 * MiB, (rss_before, rss_peak)

        # Every stalled connection is closed: the oldest ones to make room (the cap), the last
        # ones by the head deadline.
        wait_until(
            lambda: all(_closed(s) for s in stalled[-MAX_CONNECTIONS:]),
            HEADER_TIMEOUT + 10,
            what="the last stalled connections closed by the head deadline",
        )
        open_ones = [s for s in stalled if not _closed(s)]
        assert not open_ones, f"{len(open_ones)} stalled connection(s) still open"
    finally:
        for sock in stalled:
            sock.close()

    evicted, timed_out = _defences(server, "connection_limit"), _defences(server, "header_timeout")
    assert timed_out >= 1 and evicted >= FLOOD - 2 * MAX_CONNECTIONS, (evicted, timed_out)
    assert evicted + timed_out >= FLOOD, (evicted, timed_out)
    assert http_get(server.admin_url + "/health") == (200, b"ok\n")


def test_oversized_head_is_refused_with_431_and_counted(server_factory):
    server = server_factory()
    with socket.create_connection(("127.0.0.1", server.admin_port), timeout=10) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: localhost\r\nX-Big: " + b"a" * (32 * 1024) + b"\r\n\r\n")
        answer = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(65536):
                answer += chunk
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
    assert _defences(server, "header_too_large") == 1
    # Keep-alive: two requests on one connection, answered as before (status, body, type).
    with socket.create_connection(("127.0.0.1", server.admin_port), timeout=10) as sock:
        request = b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n"
        sock.sendall(request + request)
        answer = b""
        while answer.count(b"ok\n") < 2:
            chunk = sock.recv(65536)
            assert chunk, answer
            answer += chunk
    assert answer.count(b"HTTP/1.1 200 OK") == 2
    assert b"content-type: text/plain; charset=utf-8" in answer.lower()
