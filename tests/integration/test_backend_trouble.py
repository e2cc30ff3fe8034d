"""Backend trouble, end to end: real `serve`, real clients, the recording backend failing on purpose.

Each test reconciles what clients got acknowledged against what the backend received: every acked
span delivered exactly once, drops are counted with their reason. The outage and flapping
scenarios live in the fault suite (tests/faults/test_backend.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc
import pytest
import requests

from otlp_ingest.exporter.retry import grpc_retry_delay
from tests.conftest import ServerProcess, wait_until
from tests.integration._exporter_harness import span_keys, spans
from tests.support.backend import RecordingBackend

TRACE_METHOD = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
SPANS = "otlp_exporter_send_failed_spans_total"


def key(i: int) -> str:
    return f"{(i + 1).to_bytes(16, 'big').hex()}:{(i + 1).to_bytes(8, 'big').hex()}"


@dataclass
class Client:
    """One connection sending 5-span requests with ids from `first` on, one at a time."""

    transport: str
    server: ServerProcess
    first: int
    acked: list[int] = field(default_factory=list)  # first span id of each acked request
    hints: list[float] = field(default_factory=list)  # retry hints of the refusals
    next_id: int = 0

    def __post_init__(self) -> None:
        self.next_id = self.first
        self._session = requests.Session()
        self._channel = grpc.insecure_channel(self.server.grpc_endpoint)
        self._call = self._channel.unary_unary(
            TRACE_METHOD, request_serializer=None, response_deserializer=None
        )

    def send_one(self) -> bool:
        """Send the next request; True if acked. A refusal must carry a retry hint."""
        payload = spans(self.next_id, 5)
        if self.transport == "grpc":
            try:
                self._call(payload, timeout=10)
            except grpc.RpcError as error:
                assert error.code() == grpc.StatusCode.UNAVAILABLE, error  # type: ignore[attr-defined]
                delay = grpc_retry_delay(error.trailing_metadata())  # type: ignore[attr-defined]
                assert delay is not None and delay >= 1, "UNAVAILABLE without RetryInfo"
                self.hints.append(delay)
                return False
        else:
            response = self._session.post(
                f"{self.server.http_endpoint}/v1/traces",
                data=payload,
                headers={"Content-Type": "application/x-protobuf"},
                timeout=10,
            )
            if response.status_code != 200:
                assert response.status_code == 503, response.text
                self.hints.append(float(response.headers["Retry-After"]))
                return False
        self.acked.append(self.next_id)
        self.next_id += 5
        return True

    def send_raw(self, payload: bytes) -> None:
        """One gRPC request that must be acked (no retry)."""
        self._call(payload, timeout=10)

    def run(self, until: Callable[[], bool]) -> None:
        while not until():
            if not self.send_one():
                time.sleep(0.02)  # the test client retries fast on purpose; it checks hints only

    def acked_keys(self) -> list[str]:
        return [key(i + j) for i in self.acked for j in range(5)]

    def close(self) -> None:
        self._channel.close()
        self._session.close()


def delivered_exactly_once(backend: RecordingBackend, expected: set[str], timeout: float = 30) -> dict:
    wait_until(lambda: set(backend.records()["traces"]["keys"]) >= expected, timeout, what="every acked span")
    records = backend.records()["traces"]
    assert set(records["keys"]) == expected  # nothing refused was delivered
    assert {k: c for k, c in records["keys"].items() if c != 1} == {}
    return records


def test_permanent_rejection_is_dropped_and_counted_with_reason(
    server_factory: Callable[..., ServerProcess], backend_factory: Callable[..., RecordingBackend]
) -> None:
    backend = backend_factory(fail_first=1, fail_code="invalid")
    server = server_factory(env={"OTLP_ENDPOINT": backend.grpc_endpoint})
    client = Client("grpc", server, 0)
    try:
        assert client.send_one()
        wait_until(lambda: server.metrics().value(SPANS, reason="permanent") == 5, 15, what="drop counted")
        assert server.metrics().value("otlp_exporter_send_retries_total") == 0
        assert client.send_one()  # later data still flows
        delivered_exactly_once(backend, {key(5 + j) for j in range(5)})
    finally:
        client.close()


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_too_large_batches_are_split_and_delivered(
    protocol: str,
    server_factory: Callable[..., ServerProcess],
    backend_factory: Callable[..., RecordingBackend],
) -> None:
    backend = backend_factory(max_items=12)  # batches of 100 and a 40-span request are too large
    server = server_factory(
        env={
            "OTLP_ENDPOINT": backend.grpc_endpoint if protocol == "grpc" else backend.http_endpoint,
            "OTLP_EXPORT_PROTOCOL": protocol,
            "OTLP_BATCH_SIZE": "100",
            "OTLP_BATCH_TIMEOUT": "300ms",
        }
    )
    client = Client("grpc", server, 0)
    try:
        client.run(lambda: len(client.acked) >= 20)  # 5-span records: split at record boundaries
        client.send_raw(spans(10_000, 40))  # one 40-span record: split inside the request
        expected = set(client.acked_keys()) | span_keys(10_000, 40)
        records = delivered_exactly_once(backend, expected)
        assert records["too_large"] >= 1
        assert records["max_request_items"] <= 12
        metrics = server.metrics()
        assert metrics.value(SPANS) == 0
        assert metrics.value("otlp_exporter_sent_spans_total") == 140
    finally:
        client.close()


def test_partial_success_is_counted_and_batches_are_capped_by_bytes(
    server_factory: Callable[..., ServerProcess], backend_factory: Callable[..., RecordingBackend]
) -> None:
    backend = backend_factory(partial_reject=2)
    cap = 2048
    server = server_factory(
        env={
            "OTLP_ENDPOINT": backend.grpc_endpoint,
            "OTLP_BATCH_MAX_BYTES": str(cap),
            "OTLP_BATCH_SIZE": "10000",
        }
    )
    client = Client("http", server, 0)
    try:
        client.run(lambda: len(client.acked) >= 40)
        records = delivered_exactly_once(backend, set(client.acked_keys()))
        assert records["requests"] > 1 and records["max_request_bytes"] <= cap
        wait_until(
            lambda: (
                server.metrics().value("otlp_exporter_backend_rejected_spans_total")
                == 2 * records["requests"]
            ),
            10,
            what="partial_success counted",
        )
        assert server.metrics().value(SPANS) == 0  # rejected by the backend is not "failed to send"
    finally:
        client.close()
