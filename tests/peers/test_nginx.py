"""nginx `grpc_pass` in front of the server, configured as ingress-nginx runs it.

ingress-nginx is how most Kubernetes clusters expose a gRPC service (the Helm chart's ingress
is one): clients speak HTTP/2 to nginx, nginx keeps a pool of HTTP/2 connections to the server
(`upstream { keepalive ...; }`) and runs each call on one of them. With connection ageing on, the
server closes those pooled connections every second or so while calls keep crossing them: no call
may fail (nginx answers 502 to a call that crossed a GOAWAY that did not let it through), no span
may be lost or arrive twice. And the server's error statuses must reach the clients unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.peers.conftest import (
    CLIENTS,
    GrpcGo,
    Nginx,
    Stack,
    assert_error_cases,
    assert_exactly_once_and_all_ok,
    assert_refusal_has_retry_info,
    mixed_load,
)


@pytest.fixture(scope="module")
def nginx(peer_stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nginx]:
    with Nginx(peer_stack.server.grpc_port, tmp_path_factory.mktemp("nginx")) as proxy:
        yield proxy


def test_connection_ageing_behind_nginx_delivers_every_span_exactly_once(
    peer_stack: Stack, nginx: Nginx, grpcgo: GrpcGo
) -> None:
    load = mixed_load(peer_stack, nginx.endpoint, grpcgo)
    assert_exactly_once_and_all_ok(load, "nginx", nginx)


@pytest.mark.parametrize("client", CLIENTS)
def test_error_statuses_pass_through_nginx(
    client: str, peer_stack: Stack, nginx: Nginx, request: pytest.FixtureRequest
) -> None:
    assert_error_cases(client, nginx.endpoint, request, "nginx")


@pytest.mark.parametrize("client", CLIENTS)
def test_unavailable_with_retry_info_passes_through_nginx(
    client: str, refusing_stack: Stack, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    with Nginx(refusing_stack.server.grpc_port, tmp_path) as proxy:
        assert_refusal_has_retry_info(client, proxy.endpoint, request, "nginx")
