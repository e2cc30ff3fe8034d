"""grpc-go (Debian's golang-google-grpc-dev) straight at the server's gRPC port.

grpc-go is the client of the OpenTelemetry Collector, of most Go services and of many agents. With
connection ageing on (GOAWAY after 1 s) it must follow every GOAWAY onto a new connection with
nothing lost, nothing sent twice and no call failing; and it must see the server's error statuses
exactly: RESOURCE_EXHAUSTED for an over-limit message, INVALID_ARGUMENT for a malformed one,
UNAUTHENTICATED without a token, UNAVAILABLE with RetryInfo when the queue is full.
"""

from __future__ import annotations

import pytest

from tests.peers.conftest import (
    GrpcGo,
    Stack,
    assert_error_cases,
    assert_exactly_once_and_all_ok,
    assert_refusal_has_retry_info,
    mixed_load,
)


def test_grpc_go_follows_connection_ageing_with_every_span_exactly_once(
    peer_stack: Stack, grpcgo: GrpcGo
) -> None:
    load = mixed_load(peer_stack, peer_stack.server.grpc_endpoint, grpcgo, grpcio_senders=0, sdk=False)
    assert_exactly_once_and_all_ok(load, "grpc-go direct")
    # Two ClientConns for 5 s, GOAWAY after ~0.5 s: each reconnected several times.
    assert load.go_connections >= 6, load.summary("grpc-go direct")


def test_grpc_go_sees_each_error_status(peer_stack: Stack, request: pytest.FixtureRequest) -> None:
    assert_error_cases("grpc-go", peer_stack.server.grpc_endpoint, request, "direct")


def test_grpc_go_sees_unavailable_with_retry_info_when_the_queue_is_full(
    refusing_stack: Stack, request: pytest.FixtureRequest
) -> None:
    assert_refusal_has_retry_info("grpc-go", refusing_stack.server.grpc_endpoint, request, "direct")
