"""A flood of idle sockets against a server with few file descriptors (docs/hostile-input.md,
"Connections per worker").

The server runs with RLIMIT_NOFILE 400, so each worker allows (400 - 256) // 2 = 72 connections per
port (`worker.connection_limit()`). Flooding one port with more sockets than both workers allow
must: close the excess at once (never fail `accept()` with EMFILE, which would spin the loop),
leave the other port serving, serve the flooded port again as soon as the flood goes, log the
limit at a limited rate (not once per socket), and restart nothing.
"""

from __future__ import annotations

import http.client
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from otlp_ingest.otlp.signals import SIGNALS, Signal
from tests.conftest import ServerProcess, wait_until
from tests.golden import samples

NOFILE = 400
PER_WORKER = (NOFILE - 256) // 2  # worker._FD_RESERVE = 256
WORKERS = 2
FLOOD = WORKERS * PER_WORKER + 60  # at least 60 beyond what both workers allow together


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    workdir: Path = tmp_path_factory.mktemp("connection-cap")
    with ServerProcess(workdir, env={"OTLP_WORKERS": str(WORKERS)}, nofile=NOFILE) as server:
        yield server


def _request() -> bytes:
    return samples.traces(2).SerializeToString()


def grpc_export(server: ServerProcess) -> None:
    with grpc.insecure_channel(server.grpc_endpoint) as channel:
        call = channel.unary_unary(
            SIGNALS[Signal.TRACES].grpc_method,
            request_serializer=None,
            response_deserializer=trace_service_pb2.ExportTraceServiceResponse.FromString,
        )
        call(_request(), timeout=5)


def http_export(server: ServerProcess) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=5)
    try:
        conn.request("POST", "/v1/traces", _request(), {"Content-Type": "application/x-protobuf"})
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def flood(port: int) -> list[socket.socket]:
    return [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(FLOOD)]


def closed_by_server(sockets: list[socket.socket], within: float = 3.0) -> int:
    """How many of `sockets` the server closed (EOF or reset) within `within` seconds."""
    deadline = time.monotonic() + within
    closed = set()
    while time.monotonic() < deadline and len(closed) < len(sockets):
        for i, sock in enumerate(sockets):
            if i in closed:
                continue
            sock.settimeout(0.01)
            try:
                if sock.recv(1) == b"":
                    closed.add(i)
            except TimeoutError:
                pass
            except ConnectionError:
                closed.add(i)
    return len(closed)


def close_all(sockets: list[socket.socket]) -> None:
    for sock in sockets:
        sock.close()


def _limit_lines(server: ServerProcess, transport: str) -> int:
    return sum(
        f"{transport} connection limit ({PER_WORKER}) reached" in line
        for line in server.log_path.read_text(errors="replace").splitlines()
    )


@pytest.mark.parametrize(
    ("flooded", "transport", "serve_flooded", "serve_other"),
    [("http", "HTTP", http_export, grpc_export), ("grpc", "gRPC", grpc_export, http_export)],
)
def test_excess_sockets_are_closed_and_the_server_keeps_serving(
    server: ServerProcess, flooded: str, transport: str, serve_flooded, serve_other
) -> None:
    pids = sorted(child.process.pid for child in server.children())
    port = server.http_port if flooded == "http" else server.grpc_port
    sockets = flood(port)
    try:
        # Both workers together keep at most 2 x 72; every socket beyond is closed at once.
        assert closed_by_server(sockets) >= FLOOD - WORKERS * PER_WORKER
        assert serve_other(server) in (None, 200)  # the other port has its own allowance
    finally:
        close_all(sockets)
    # Once the flood is gone the flooded port serves again (its slots free as the closes arrive).
    wait_until(lambda: _serves(serve_flooded, server), 10, 0.1, f"{flooded} to serve after the flood")
    # One line per worker per 10 s interval at most, not one per closed socket.
    assert 1 <= _limit_lines(server, transport) <= WORKERS
    assert sorted(child.process.pid for child in server.children()) == pids
    assert server.proc is not None and server.proc.poll() is None


def _serves(export, server: ServerProcess) -> bool:
    try:
        return export(server) in (None, 200)
    except (grpc.RpcError, OSError, http.client.HTTPException):
        return False
