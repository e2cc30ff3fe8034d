"""End to end: real OpenTelemetry SDK exporters -> `otlp_ingest serve` -> recording backend.

Every item must reach the backend exactly once (checked by item key), and the server's own
counters must agree: accepted by receivers == sent by exporters == items at the backend.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from google.protobuf.message import Message

from otlp_ingest.otlp.signals import SIGNAL_BY_NAME, SIGNALS, Signal
from tests.conftest import REPO_ROOT, Metrics, ServerProcess, wait_until

PROTOCOLS = ("grpc", "http", "http/json")
SIGNAL_NAMES = ("traces", "metrics", "logs")
ITEMS = 40  # per case: enough for several items per request, small enough to stay fast


# ---------------------------------------------------------------------------------------------
# Item keys, the same way the recording backend computes them


def _any_value_text(value: Message) -> str:
    kind = value.WhichOneof("value")
    return "" if kind is None else str(getattr(value, kind))


def item_keys(signal: Signal, request: Message) -> list[str]:
    """Backend item keys of an Export*ServiceRequest (see tests/support/recording_backend.py)."""
    keys: list[str] = []
    if signal is Signal.TRACES:
        for rs in request.resource_spans:
            for ss in rs.scope_spans:
                keys += [f"{s.trace_id.hex()}:{s.span_id.hex()}" for s in ss.spans]
    elif signal is Signal.LOGS:
        for rl in request.resource_logs:
            for sl in rl.scope_logs:
                keys += [f"{_any_value_text(r.body)}:{r.time_unix_nano}" for r in sl.log_records]
    else:
        for rm in request.resource_metrics:
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    kind = metric.WhichOneof("data")
                    for point in getattr(metric, kind).data_points:
                        attrs = ",".join(
                            sorted(f"{kv.key}={_any_value_text(kv.value)}" for kv in point.attributes)
                        )
                        keys.append(f"{metric.name}:{point.time_unix_nano}:{attrs}")
    return keys


# ---------------------------------------------------------------------------------------------
# SDK data and exporters


def make_batch(signal: Signal, n: int) -> tuple[object, list[str]]:
    """`n` items made by the real SDK, as the exporter's `export()` argument, and their keys."""
    from opentelemetry.sdk.resources import Resource

    resource = Resource.create({"service.name": "otlp-ingest-e2e"})
    if signal is Signal.TRACES:
        from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

        memory = InMemorySpanExporter()
        provider = TracerProvider(resource=resource)
        provider.add_span_processor(SimpleSpanProcessor(memory))
        tracer = provider.get_tracer("e2e")
        for i in range(n):
            with tracer.start_as_current_span(f"op-{i}", attributes={"i": str(i)}):
                pass
        batch = list(memory.get_finished_spans())
        return batch, item_keys(signal, encode_spans(batch))
    if signal is Signal.LOGS:
        from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs
        from opentelemetry.sdk._logs import LoggerProvider
        from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor

        memory = InMemoryLogRecordExporter()
        provider = LoggerProvider(resource=resource)
        provider.add_log_record_processor(SimpleLogRecordProcessor(memory))
        logger = provider.get_logger("e2e")
        base = time.time_ns()
        for i in range(n):
            logger.emit(timestamp=base + i, body=f"e2e log {i} {base}", attributes={"i": str(i)})
        batch = list(memory.get_finished_logs())
        return batch, item_keys(signal, encode_logs(batch))
    from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    reader = InMemoryMetricReader()
    provider = MeterProvider(resource=resource, metric_readers=[reader])
    counter = provider.get_meter("e2e").create_counter(f"e2e.requests.{time.time_ns()}")
    for i in range(n):
        counter.add(i + 1, {"i": str(i)})
    data = reader.get_metrics_data()
    return data, item_keys(signal, encode_metrics(data))


def make_exporter(signal: Signal, protocol: str, server: ServerProcess, gzip: bool) -> object:
    """The real OTLP exporter of the SDK for `protocol`, pointed at `server`."""
    name = SIGNALS[signal].name
    if protocol == "grpc":
        import grpc
        from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        cls = {"traces": OTLPSpanExporter, "metrics": OTLPMetricExporter, "logs": OTLPLogExporter}[name]
        compression = grpc.Compression.Gzip if gzip else grpc.Compression.NoCompression
        return cls(endpoint=server.grpc_endpoint, insecure=True, compression=compression, timeout=10)
    url = f"{server.http_endpoint}{SIGNALS[signal].http_path}"
    if protocol == "http":
        from opentelemetry.exporter.otlp.proto.http import Compression
        from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        compression = Compression.Gzip if gzip else Compression.NoCompression
    else:
        from opentelemetry.exporter.otlp.common.http import Compression
        from opentelemetry.exporter.otlp.json.http._log_exporter import OTLPLogExporter
        from opentelemetry.exporter.otlp.json.http.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.json.http.trace_exporter import OTLPSpanExporter

        compression = Compression.GZIP if gzip else Compression.NONE  # this package spells it so
    cls = {"traces": OTLPSpanExporter, "metrics": OTLPMetricExporter, "logs": OTLPLogExporter}[name]
    return cls(endpoint=url, compression=compression, timeout=10)


def sdk_send(signal: Signal, protocol: str, server: ServerProcess, n: int, gzip: bool = False) -> list[str]:
    """Export `n` SDK items in two export() calls; assert both succeeded; return their keys."""
    exporter = make_exporter(signal, protocol, server, gzip)
    keys: list[str] = []
    try:
        for part in (n // 2, n - n // 2):
            batch, part_keys = make_batch(signal, part)
            result = exporter.export(batch)
            assert result.name == "SUCCESS", f"{protocol} {signal.name} export returned {result}"
            keys += part_keys
    finally:
        exporter.shutdown()
    assert len(keys) == n and len(set(keys)) == n
    return keys


# ---------------------------------------------------------------------------------------------
# Assertions


def accepted(metrics: Metrics, signal: Signal) -> float:
    return metrics.value(f"otlp_receiver_accepted_{SIGNALS[signal].item_noun}_total")


def sent(metrics: Metrics, signal: Signal) -> float:
    return metrics.value(f"otlp_exporter_sent_{SIGNALS[signal].item_noun}_total")


def assert_exactly_once(backend: object, signal: Signal, keys: list[str], timeout: float = 20.0) -> dict:
    """Wait until the backend holds every key, then check each arrived once and nothing else."""
    name = SIGNALS[signal].name
    wanted = set(keys)

    def all_arrived() -> dict | None:
        records = backend.records()[name]
        return records if wanted <= set(records["keys"]) else None

    records = wait_until(all_arrived, timeout, 0.1, f"{len(keys)} {name} items at the backend")
    dupes = {k: c for k, c in records["keys"].items() if k in wanted and c != 1}
    assert not dupes, f"items delivered more than once: {list(dupes.items())[:5]}"
    assert records["items"] == len(keys), f"backend has {records['items']} {name} items, sent {len(keys)}"
    return records


def assert_counters_agree(server: ServerProcess, signal: Signal, before: Metrics, expected: int) -> None:
    """accepted (receivers) == sent (exporters) == expected, as deltas since `before`."""

    def agree() -> tuple[float, float] | None:
        now = server.metrics()
        got = (accepted(now, signal) - accepted(before, signal), sent(now, signal) - sent(before, signal))
        return got if got == (expected, expected) else None

    try:
        wait_until(agree, 10.0, 0.1, "counters to agree")
    except AssertionError:
        now = server.metrics()
        raise AssertionError(
            f"{signal.name}: accepted delta {accepted(now, signal) - accepted(before, signal)}, "
            f"sent delta {sent(now, signal) - sent(before, signal)}, expected {expected}"
        ) from None


# ---------------------------------------------------------------------------------------------
# Tests


@pytest.fixture(scope="module")
def grpc_pipeline(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, object]]:
    """One server forwarding over gRPC to one backend, shared by the SDK matrix (each case
    resets the backend and compares counter deltas, so cases stay independent)."""
    from tests.support.backend import RecordingBackend

    with RecordingBackend() as backend:
        server = ServerProcess(
            tmp_path_factory.mktemp("pipeline"), env={"OTLP_ENDPOINT": backend.grpc_endpoint}
        )
        with server:
            yield server, backend


@pytest.mark.parametrize("gzip", [False, True], ids=["plain", "gzip"])
@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("signal_name", SIGNAL_NAMES)
def test_sdk_items_arrive_exactly_once(grpc_pipeline, signal_name: str, protocol: str, gzip: bool) -> None:
    server, backend = grpc_pipeline
    signal = SIGNAL_BY_NAME[signal_name]
    backend.reset()
    before = server.metrics()
    keys = sdk_send(signal, protocol, server, ITEMS, gzip=gzip)
    assert_exactly_once(backend, signal, keys)
    assert_counters_agree(server, signal, before, ITEMS)


def test_forwarding_over_http_protobuf(server_factory, backend) -> None:
    server = server_factory(
        env={"OTLP_ENDPOINT": backend.http_endpoint, "OTLP_EXPORT_PROTOCOL": "http/protobuf"}
    )
    for signal in Signal:
        before = server.metrics()
        keys = sdk_send(signal, "grpc", server, ITEMS)
        assert_exactly_once(backend, signal, keys)
        assert_counters_agree(server, signal, before, ITEMS)


def test_batches_hold_at_most_batch_size_items(server_factory, backend) -> None:
    """20-span requests with OTLP_BATCH_SIZE=50: no batch may exceed 50 spans."""
    from otlp_ingest.loadgen import PayloadFactory, token_for

    server = server_factory(env={"OTLP_ENDPOINT": backend.grpc_endpoint, "OTLP_BATCH_SIZE": "50"})
    import grpc

    factory = PayloadFactory(Signal.TRACES, 20)
    keys: list[str] = []
    with grpc.insecure_channel(server.grpc_endpoint) as channel:
        export = channel.unary_unary(SIGNALS[Signal.TRACES].grpc_method)
        for k in range(15):
            token = token_for(b"batchsz!", k)
            export(factory.build(token), timeout=10)
            keys += factory.keys(token)
    records = assert_exactly_once(backend, Signal.TRACES, keys)
    assert records["requests"] * 50 >= len(keys)
    assert records.get("max_request_items", 0) <= 50, records.get("max_request_items")
    # The exporter's own histogram says every batch fit the limit (le="50" holds them all).
    metrics = server.metrics()
    total = metrics.value("otlp_exporter_batch_items_count", signal="traces")
    at_most_50 = metrics.value("otlp_exporter_batch_items_bucket", signal="traces", le="50.0")
    assert total >= 6 and at_most_50 == total, (total, at_most_50)


def _file_sink_keys(data_dir: Path, signal: Signal) -> list[str]:
    from otlp_ingest.otlp.json_codec import decode_json

    keys: list[str] = []
    for path in sorted(data_dir.glob(f"{SIGNALS[signal].name}*.jsonl")):
        for line in path.read_bytes().splitlines():
            if line.strip():
                keys += item_keys(signal, decode_json(signal, line))
    return keys


def test_file_sink_writes_items_that_parse_back(server_factory) -> None:
    server = server_factory()  # no OTLP_ENDPOINT: the file sink in OTLP_DATA_DIR
    expected: dict[Signal, list[str]] = {}
    for signal, protocol in zip(Signal, PROTOCOLS, strict=True):
        expected[signal] = sdk_send(signal, protocol, server, ITEMS)
    for signal, keys in expected.items():
        wait_until(
            lambda s=signal, k=keys: set(k) <= set(_file_sink_keys(server.data_dir, s)),
            15.0,
            0.1,
            f"{signal.name} in the file sink",
        )
        found = _file_sink_keys(server.data_dir, signal)
        assert sorted(found) == sorted(keys), f"{signal.name}: file sink holds {len(found)}, sent {len(keys)}"
        metrics = server.metrics()
        assert accepted(metrics, signal) == sent(metrics, signal) == len(keys)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_loadgen_command_against_server(server_factory, backend, protocol: str) -> None:
    server = server_factory(env={"OTLP_ENDPOINT": backend.grpc_endpoint})
    endpoint = server.grpc_endpoint if protocol == "grpc" else server.http_endpoint
    requests, per_request = 40, 25
    argv = ["loadgen", "--protocol", protocol, "--endpoint", endpoint, "--requests", str(requests)]
    argv += ["--items-per-request", str(per_request), "--concurrency", "2", "--json"]
    proc = subprocess.run(
        [sys.executable, "-m", "otlp_ingest", *argv],
        cwd=REPO_ROOT,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout.decode() + proc.stderr.decode()
    result = json.loads(proc.stdout.decode().strip().splitlines()[-1])
    total = requests * per_request
    assert result["requests_sent"] == result["requests_ok"] == requests
    assert result["requests_refused"] == result["requests_failed"] == 0
    assert result["items_sent"] == result["items_accepted"] == total
    assert result["items_per_s"] > 0 and result["elapsed_s"] > 0
    assert 0 < result["latency_p50_ms"] <= result["latency_p95_ms"] <= result["latency_p99_ms"]
    backend.wait_for_items("traces", total, 20.0)
    records = backend.records()["traces"]
    assert records["items"] == total and len(records["keys"]) == total
