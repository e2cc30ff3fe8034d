"""Exporter headers and compression, seen from the other end: the recording backend, and a second
otlp-ingest that requires a bearer token (a chain of gateways authenticating upstream)."""

from __future__ import annotations

import os

import grpc
import pytest
import requests

from otlp_ingest.loadgen import PayloadFactory
from tests.conftest import ServerProcess, wait_until

UPSTREAM_TOKEN = "upstream-token-7c1e9a3b5d2f4e60"
# As operators write OTEL_EXPORTER_OTLP_HEADERS: URL-encoded blank and dash.
HEADERS_ENV = f"authorization=Bearer%20{UPSTREAM_TOKEN},x-tenant=team%2Da"
TRACE_METHOD = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"


def send_spans(server: ServerProcess, n_requests: int, token: str | None = None) -> set[str]:
    """`n_requests` 5-span requests over HTTP and gRPC in turn; returns the span keys (all acked)."""
    factory = PayloadFactory("traces", 5)
    keys: set[str] = set()
    auth = {"authorization": f"Bearer {token}"} if token else {}
    with grpc.insecure_channel(server.grpc_endpoint) as channel:
        export = channel.unary_unary(TRACE_METHOD)
        for i in range(n_requests):
            request_token = os.urandom(16)
            body = factory.build(request_token)
            if i % 2:
                export(body, timeout=10, metadata=tuple(auth.items()) or None)
            else:
                r = requests.post(
                    f"{server.http_endpoint}/v1/traces",
                    data=body,
                    headers={"Content-Type": "application/x-protobuf", **auth},
                    timeout=10,
                )
                assert r.status_code == 200, r.text
            keys.update(factory.keys(request_token))
    return keys


def delivered(backend, keys: set[str], timeout: float = 20.0) -> dict:
    wait_until(lambda: keys <= set(backend.records()["traces"]["keys"]), timeout, what="spans at the backend")
    return backend.records()["traces"]


@pytest.mark.parametrize(
    ("protocol", "compression", "encoding"),
    [
        ("http/protobuf", "none", "http:identity"),
        ("http/protobuf", "gzip", "http:gzip"),
        ("http/protobuf", "zstd", "http:zstd"),
        ("grpc", "none", "grpc"),
        ("grpc", "gzip", "grpc"),
    ],
)
def test_compression_and_headers_arrive_at_the_backend(
    server_factory, backend, protocol: str, compression: str, encoding: str
) -> None:
    endpoint = backend.http_endpoint if protocol == "http/protobuf" else backend.grpc_endpoint
    server = server_factory(
        env={
            "OTLP_WORKERS": "1",
            "OTLP_ENDPOINT": endpoint,
            "OTLP_EXPORT_PROTOCOL": protocol,
            "OTLP_EXPORT_COMPRESSION": compression,
            "OTLP_EXPORT_HEADERS": HEADERS_ENV,
        }
    )
    records = delivered(backend, send_spans(server, 4))
    assert set(records["encodings"]) == {encoding}
    assert records["headers"].get(f"authorization: Bearer {UPSTREAM_TOKEN}") == records["requests"]
    assert records["headers"].get("x-tenant: team-a") == records["requests"]


def test_grpc_gzip_is_really_compressed_on_the_wire(server_factory, backend_factory) -> None:
    """grpcio's server hides how a message arrived; one that refuses compressed messages tells."""
    strict = backend_factory(grpc_no_compression=True)
    env = {"OTLP_WORKERS": "1", "OTLP_ENDPOINT": strict.grpc_endpoint, "OTLP_RETRY_MAX_ELAPSED": "1s"}
    plain = server_factory(env=env)
    delivered(strict, send_spans(plain, 2))
    gzipped = server_factory(env={**env, "OTLP_EXPORT_COMPRESSION": "gzip"})
    before = strict.records()["traces"]["items"]
    send_spans(gzipped, 2)
    wait_until(
        lambda: gzipped.metrics().value("otlp_exporter_send_failed_spans_total", reason="permanent") >= 10,
        20,
        what="the gzip batches refused by an identity-only backend",
    )
    assert strict.records()["traces"]["items"] == before


def test_a_chain_of_gateways_authenticates_upstream(tmp_path, server_factory, backend) -> None:
    """client -> edge (no auth) -> core (bearer tokens) -> backend, over both export protocols,
    with compression; an edge with the wrong token gets nothing through."""
    tokens = tmp_path / "core-tokens"
    tokens.write_text(f"edge: {UPSTREAM_TOKEN}\n")
    core = server_factory(
        env={
            "OTLP_WORKERS": "1",
            "OTLP_ENDPOINT": backend.grpc_endpoint,
            "OTLP_AUTH_TOKENS_FILE": str(tokens),
        }
    )
    edges = {
        "http": server_factory(
            env={
                "OTLP_WORKERS": "1",
                "OTLP_ENDPOINT": core.http_endpoint,
                "OTLP_EXPORT_PROTOCOL": "http/protobuf",
                "OTLP_EXPORT_COMPRESSION": "zstd",
                "OTLP_EXPORT_HEADERS": HEADERS_ENV,
            }
        ),
        "grpc": server_factory(
            env={
                "OTLP_WORKERS": "1",
                "OTLP_ENDPOINT": core.grpc_endpoint,
                "OTLP_EXPORT_COMPRESSION": "gzip",
                "OTLP_EXPORT_HEADERS": HEADERS_ENV,
            }
        ),
    }
    keys = set()
    for edge in edges.values():
        keys |= send_spans(edge, 4)
    delivered(backend, keys)
    metrics = core.metrics()
    accepted = "otlp_receiver_authenticated_requests_total"
    assert metrics.value(accepted, transport="http", token_name="edge") > 0
    assert metrics.value(accepted, transport="grpc", token_name="edge") > 0
    assert metrics.value("otlp_receiver_unauthenticated_requests_total") == 0

    wrong = server_factory(
        env={
            "OTLP_WORKERS": "1",
            "OTLP_ENDPOINT": core.http_endpoint,
            "OTLP_EXPORT_PROTOCOL": "http/protobuf",
            "OTLP_EXPORT_HEADERS": "authorization=Bearer%20not-the-core-token-123",
        }
    )
    lost = send_spans(wrong, 2)
    wait_until(
        lambda: core.metrics().value("otlp_receiver_unauthenticated_requests_total", transport="http") > 0,
        20,
        what="the core refusing the wrong token",
    )
    # 401 is permanent for an OTLP exporter (as for the Collector's): counted and dropped.
    wait_until(
        lambda: (
            wrong.metrics().value("otlp_exporter_send_failed_spans_total", reason="permanent") >= len(lost)
        ),
        20,
        what="the edge counting its refused batches",
    )
    assert not lost & set(backend.records()["traces"]["keys"])
