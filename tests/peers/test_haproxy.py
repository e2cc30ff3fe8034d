"""HAProxy in front of the server, HTTP/2 on both sides (`bind ... proto h2`, `server ... proto h2`).

HAProxy multiplexes its clients' calls over a few HTTP/2 connections to the server and reuses them.
With connection ageing on, the server retires those connections every second or so while calls
run on them. A GOAWAY followed at once by a close makes the proxy's next write meet a TCP reset:
it then loses answers it had not read yet and tells its clients REFUSED_STREAM for calls the
server had taken, which they resend (duplicates). No call may fail, no span may be lost or arrive
twice; and the server's error statuses must reach the clients unchanged (an over-limit message
answered and then reset arrives as CANCELLED, which SDKs retry forever).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.peers.conftest import (
    CLIENTS,
    GrpcGo,
    Haproxy,
    Stack,
    assert_error_cases,
    assert_exactly_once_and_all_ok,
    assert_refusal_has_retry_info,
    mixed_load,
)


@pytest.fixture(scope="module")
def haproxy(peer_stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Haproxy]:
    with Haproxy(peer_stack.server.grpc_port, tmp_path_factory.mktemp("haproxy")) as proxy:
        yield proxy


def test_connection_ageing_behind_haproxy_delivers_every_span_exactly_once(
    peer_stack: Stack, haproxy: Haproxy, grpcgo: GrpcGo
) -> None:
    load = mixed_load(peer_stack, haproxy.endpoint, grpcgo)
    assert_exactly_once_and_all_ok(load, "haproxy", haproxy)


@pytest.mark.parametrize("client", CLIENTS)
def test_error_statuses_pass_through_haproxy(
    client: str, peer_stack: Stack, haproxy: Haproxy, request: pytest.FixtureRequest
) -> None:
    assert_error_cases(client, haproxy.endpoint, request, "haproxy")


@pytest.mark.parametrize("client", CLIENTS)
def test_unavailable_with_retry_info_passes_through_haproxy(
    client: str, refusing_stack: Stack, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    with Haproxy(refusing_stack.server.grpc_port, tmp_path) as proxy:
        assert_refusal_has_retry_info(client, proxy.endpoint, request, "haproxy")
