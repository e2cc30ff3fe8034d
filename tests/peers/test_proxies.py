"""Proxies in front of the server, with connection ageing on: nginx `grpc_pass` as ingress-nginx
runs it, and HAProxy with HTTP/2 on both sides (`bind ... proto h2`, `server ... proto h2`).

ingress-nginx is how most Kubernetes clusters expose a gRPC service (the Helm chart's ingress is
one): clients speak HTTP/2 to nginx, nginx keeps a pool of HTTP/2 connections to the server
(`upstream { keepalive ...; }`) and runs each call on one of them. HAProxy multiplexes its clients'
calls over a few HTTP/2 connections to the server and reuses them. With connection ageing on, the
server retires those connections every second or so while calls keep crossing them:

- nginx answers 502 to a call that crossed a GOAWAY that did not let it through (hence the
  two-phase GOAWAY);
- a GOAWAY followed at once by a close makes HAProxy's next write meet a TCP reset: it loses
  answers it had not read yet and tells its clients REFUSED_STREAM for calls the server had taken,
  which they resend (duplicates; hence the lingering close);
- an over-limit message answered and then reset arrives through HAProxy as CANCELLED, which SDKs
  retry forever (hence no reset after an early answer).

No call may fail, no span may be lost or arrive twice, and the server's error statuses must reach
the clients unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.peers.conftest import (
    CLIENTS,
    GrpcGo,
    Haproxy,
    Nginx,
    Proxy,
    Stack,
    assert_error_cases,
    assert_exactly_once_and_all_ok,
    assert_refusal_has_retry_info,
    mixed_load,
)

PROXIES: dict[str, type[Proxy]] = {"nginx": Nginx, "haproxy": Haproxy}


@pytest.fixture(scope="module", params=sorted(PROXIES))
def proxy(
    request: pytest.FixtureRequest, peer_stack: Stack, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Proxy]]:
    name = request.param
    with PROXIES[name](peer_stack.server.grpc_port, tmp_path_factory.mktemp(name)) as running:
        yield name, running


def test_connection_ageing_behind_a_proxy_delivers_every_span_exactly_once(
    peer_stack: Stack, proxy: tuple[str, Proxy], grpcgo: GrpcGo
) -> None:
    name, running = proxy
    load = mixed_load(peer_stack, running.endpoint, grpcgo)
    assert_exactly_once_and_all_ok(load, name, running)


@pytest.mark.parametrize("client", CLIENTS)
def test_error_statuses_pass_through_a_proxy(
    client: str, peer_stack: Stack, proxy: tuple[str, Proxy], request: pytest.FixtureRequest
) -> None:
    name, running = proxy
    assert_error_cases(client, running.endpoint, request, name)


@pytest.mark.parametrize("name", sorted(PROXIES))
@pytest.mark.parametrize("client", CLIENTS)
def test_unavailable_with_retry_info_passes_through_a_proxy(
    name: str, client: str, refusing_stack: Stack, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    with PROXIES[name](refusing_stack.server.grpc_port, tmp_path) as running:
        assert_refusal_has_retry_info(client, running.endpoint, request, name)
