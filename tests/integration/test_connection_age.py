"""Connection ageing: a long-lived real SDK client follows a scale-out (issue 7).

Behind a Kubernetes Service a gRPC client keeps its one HTTP/2 connection on the pod it first
reached, so pods an HPA adds get none of its traffic. With `OTLP_GRPC_MAX_CONNECTION_AGE` the
server sends GOAWAY once a connection is that old and the client reconnects, landing wherever the
Service sends new connections; with `OTLP_HTTP_MAX_CONNECTION_AGE` a kept-alive HTTP connection
gets `Connection: close` on its next response. `TcpProxy` plays the Service: it sends new
connections to server A, then (the scale-out) to server B, and never moves an open one.

Each test keeps one real OpenTelemetry SDK exporter exporting through the proxy while it is
retargeted, and checks that every export() succeeded (nothing surfaced to the client), that B
received part of the traffic (the client moved), and that every span arrived exactly once.
"""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from otlp_ingest.otlp.signals import Signal
from tests.conftest import ServerProcess
from tests.e2e.test_pipeline import assert_exactly_once, make_batch, make_exporter
from tests.support.tcp_proxy import TcpProxy

AGE_ENV = {
    "OTLP_GRPC_MAX_CONNECTION_AGE": "1s",
    "OTLP_GRPC_MAX_CONNECTION_AGE_GRACE": "10s",
    "OTLP_HTTP_MAX_CONNECTION_AGE": "1s",
    "OTLP_WORKERS": "1",
}


def _accepted(server: ServerProcess) -> float:
    return server.metrics().value("otlp_receiver_accepted_spans_total")


def _export_for(exporter: object, seconds: float, keys: list[str]) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        batch, batch_keys = make_batch(Signal.TRACES, 20)
        result = exporter.export(batch)  # type: ignore[attr-defined]
        assert result.name == "SUCCESS", f"export returned {result}"  # no error reached the client
        keys += batch_keys
        time.sleep(0.05)


def _scale_out(
    protocol: str, env: dict[str, str], tmp_path: Path, backend: object
) -> tuple[float, float, list]:
    """Export through the proxy to A, retarget it to B, export on: (A's spans, B's spans, targets)."""
    env = {"OTLP_ENDPOINT": backend.grpc_endpoint, **env}  # type: ignore[attr-defined]
    with ServerProcess(tmp_path / "a", env=env) as a, ServerProcess(tmp_path / "b", env=env) as b:
        port = (lambda s: s.grpc_port) if protocol == "grpc" else (lambda s: s.http_port)
        with TcpProxy(("127.0.0.1", port(a))) as proxy:
            endpoints = SimpleNamespace(
                grpc_endpoint=proxy.endpoint, http_endpoint=f"http://{proxy.endpoint}"
            )
            exporter = make_exporter(Signal.TRACES, protocol, endpoints, gzip=False)  # type: ignore[arg-type]
            keys: list[str] = []
            try:
                _export_for(exporter, 0.5, keys)
                proxy.retarget(("127.0.0.1", port(b)))  # the HPA added a pod
                _export_for(exporter, 3.0, keys)
            finally:
                exporter.shutdown()  # type: ignore[attr-defined]
            assert_exactly_once(backend, Signal.TRACES, keys)
            return _accepted(a), _accepted(b), list(proxy.connections)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_a_long_lived_sdk_client_moves_to_a_new_server_after_the_connection_age(
    protocol: str, tmp_path: Path, backend: object
) -> None:
    on_a, on_b, targets = _scale_out(protocol, AGE_ENV, tmp_path, backend)
    assert on_a > 0 and on_b > 0, (on_a, on_b)
    assert len(set(targets)) == 2  # it reconnected, and the reconnection went to B


def test_without_ageing_the_grpc_client_stays_on_the_first_server(tmp_path: Path, backend: object) -> None:
    """The control: the same run with ageing off leaves B without any traffic."""
    never = {**AGE_ENV, "OTLP_GRPC_MAX_CONNECTION_AGE": "0s"}
    on_a, on_b, targets = _scale_out("grpc", never, tmp_path, backend)
    assert on_a > 0 and on_b == 0, (on_a, on_b)
    assert len(targets) == 1


def test_http_keep_alive_connection_closes_after_max_requests(tmp_path: Path) -> None:
    import http.client

    from tests.golden.samples import traces_with

    body = traces_with({"name": "one"}).SerializeToString()
    with ServerProcess(tmp_path, env={"OTLP_HTTP_MAX_CONNECTION_REQUESTS": "3"}) as server:
        conn = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=10)
        try:
            answers = []
            for _ in range(3):
                conn.request("POST", "/v1/traces", body, {"Content-Type": "application/x-protobuf"})
                response = conn.getresponse()
                response.read()
                answers.append((response.status, response.getheader("connection")))
        finally:
            conn.close()
    assert answers == [(200, None), (200, None), (200, "close")]
