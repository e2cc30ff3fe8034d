"""One real server for the whole conformance suite, and a fresh client connection per test.

The server runs as users run it (`ServerProcess`: supervisor, one worker, one exporter, the file
sink) with short deadlines, so a test that leaves a stream half-sent is cleaned up by the server
in seconds. Every test opens its own connection (`peer`), so a connection error in one test
cannot leak into the next; the server itself is shared and must survive them all (its clean exit
at the end of the session is asserted by `ServerProcess`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import ServerProcess
from tests.transport.h2peer import Peer


@pytest.fixture(scope="session")
def h2_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    env = {
        "OTLP_WORKERS": "1",
        "OTLP_HTTP_READ_TIMEOUT": "2s",
        "OTLP_SHUTDOWN_TIMEOUT": "5s",
    }
    with ServerProcess(Path(tmp_path_factory.mktemp("h2-conformance")), env) as server:
        yield server


@pytest.fixture
def address(h2_server: ServerProcess) -> tuple[str, int]:
    return ("127.0.0.1", h2_server.grpc_port)


@pytest.fixture
def connect(address: tuple[str, int]) -> Iterator[Callable[..., Peer]]:
    """`connect(settings={...})` -> a Peer past the handshake; closed after the test."""
    peers: list[Peer] = []

    def make(settings: dict[int, int] | None = None, handshake: bool = True) -> Peer:
        peer = Peer(address)
        peers.append(peer)
        if handshake:
            peer.handshake(settings)
        return peer

    yield make
    for peer in peers:
        peer.close()


@pytest.fixture
def peer(connect: Callable[..., Peer]) -> Peer:
    """A connection past the handshake (preface, SETTINGS both ways)."""
    return connect()
