"""The gRPC port's HTTP/2 and gRPC framing, with a raw client (tests/support/h2_client.py) for
what grpcio's client never sends: zstd messages and bombs, CONTINUATION frames, padding,
unknown frame types, protocol errors. Against a real worker process and its ring."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import zstandard

from otlp_ingest.errors import ExitCode
from otlp_ingest.otlp.signals import SIGNALS, Signal
from otlp_ingest.transport.frames import DATA, PROTOCOL_ERROR, frame
from tests.integration.test_receiver import LIMIT, Worker, span_count, spans_request
from tests.support.h2_client import grpc_call

TRACES = SIGNALS[Signal.TRACES].grpc_method
OK, INVALID_ARGUMENT, RESOURCE_EXHAUSTED, UNIMPLEMENTED, INTERNAL = 0, 3, 8, 12, 13


@pytest.fixture(scope="module")
def w(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    worker = Worker(tmp_path_factory.mktemp("grpc-wire")).wait_ready()
    yield worker
    assert worker.stop() == ExitCode.OK


@pytest.fixture(autouse=True)
def _empty_ring(w: Worker) -> None:
    w.drain()


def _address(w: Worker) -> tuple[str, int]:
    return ("127.0.0.1", w.grpc_port)


def test_zstd_message_is_accepted(w: Worker) -> None:
    message = zstandard.ZstdCompressor().compress(spans_request(3).SerializeToString())
    result = grpc_call(_address(w), TRACES, message, {"grpc-encoding": "zstd"}, compressed=True)
    assert result.grpc_status == OK, result.headers
    assert b"zstd" in result.headers[b"grpc-accept-encoding"]
    assert [span_count(r.payload) for r in w.drain()] == [3]


def test_zstd_bomb_is_resource_exhausted_and_nothing_is_queued(w: Worker) -> None:
    bomb = zstandard.ZstdCompressor().compress(b"\x0a" * (LIMIT * 4))  # a few KiB -> 4 MiB
    assert len(bomb) < 4096
    result = grpc_call(_address(w), TRACES, bomb, {"grpc-encoding": "zstd"}, compressed=True)
    assert result.grpc_status == RESOURCE_EXHAUSTED, result.headers
    assert w.drain() == []


def test_gzip_bomb_is_resource_exhausted(w: Worker) -> None:
    import gzip

    bomb = gzip.compress(b"\x0a" * (LIMIT * 4))
    result = grpc_call(_address(w), TRACES, bomb, {"grpc-encoding": "gzip"}, compressed=True)
    assert result.grpc_status == RESOURCE_EXHAUSTED, result.headers


def test_unknown_encoding_is_unimplemented_naming_the_ones_taken(w: Worker) -> None:
    result = grpc_call(_address(w), TRACES, b"x", {"grpc-encoding": "br"}, compressed=True)
    assert result.grpc_status == UNIMPLEMENTED
    assert result.headers[b"grpc-accept-encoding"] == b"identity,gzip,deflate,zstd"


def test_compressed_flag_without_an_encoding_is_internal(w: Worker) -> None:
    result = grpc_call(_address(w), TRACES, b"x", compressed=True)
    assert result.grpc_status == INTERNAL


def test_headers_in_continuation_frames_and_padded_data(w: Worker) -> None:
    message = spans_request(2).SerializeToString()
    result = grpc_call(_address(w), TRACES, message, {"x-filler": "y" * 300}, split_headers=40, pad_data=17)
    assert result.grpc_status == OK, result.headers
    assert [span_count(r.payload) for r in w.drain()] == [2]


def test_unknown_frame_types_are_ignored(w: Worker) -> None:
    odd = frame(0x20, 0, 0, b"whatever") + frame(0x21, 0xFF, 3, b"")
    result = grpc_call(_address(w), TRACES, spans_request(1).SerializeToString(), extra_frames=odd)
    assert result.grpc_status == OK


def test_data_on_stream_zero_is_a_connection_error(w: Worker) -> None:
    result = grpc_call(_address(w), TRACES, b"", extra_frames=frame(DATA, 0, 0, b"x"))
    assert result.goaway == PROTOCOL_ERROR  # and the worker serves on:
    ok = grpc_call(_address(w), TRACES, spans_request(1).SerializeToString())
    assert ok.grpc_status == OK


def test_malformed_message_is_invalid_argument_with_a_status(w: Worker) -> None:
    result = grpc_call(_address(w), TRACES, b"\xff" * 32)
    assert result.grpc_status == INVALID_ARGUMENT
    assert b"grpc-status-details-bin" in result.headers


def test_no_message_at_all_is_unimplemented(w: Worker) -> None:
    import socket

    from otlp_ingest.transport.frames import END_HEADERS, END_STREAM, HEADERS, PREFACE, SETTINGS
    from otlp_ingest.transport.hpack import encode_literal

    block = encode_literal(
        [(b":method", b"POST"), (b":scheme", b"http"), (b":path", TRACES.encode()),
         (b":authority", b"x"), (b"content-type", b"application/grpc")]
    )  # fmt: skip
    with socket.create_connection(_address(w), timeout=10) as sock:
        sock.sendall(PREFACE + frame(SETTINGS, 0, 0) + frame(HEADERS, END_HEADERS | END_STREAM, 1, block))
        data = b""
        while b"grpc-status" not in data:
            chunk = sock.recv(65536)
            assert chunk, "connection closed without an answer"
            data += chunk
    assert b"grpc-status\x0212" in data  # literal field: name, then the value "12"
