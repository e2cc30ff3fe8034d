"""Shared by the exporter and file-sink integration tests: rings the test fills with RingWriter,
OTLP payloads with identifiable items, and the exporter started the way the supervisor starts it
(`python -m otlp_ingest _child exporter ...`, settings in the environment, a ready pipe)."""

from __future__ import annotations

import itertools
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector

from otlp_ingest.config import Settings, settings_to_json
from otlp_ingest.otlp.signals import Signal
from otlp_ingest.ring import RingWriter, create_ring, ring_name, unlink_ring

_ring_ids = itertools.count(9000)


class Rings:
    """Rings owned by this test process (named after our pid, so stale-ring wiping skips them)."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self._writers: dict[str, RingWriter] = {}

    def create(self, n: int = 1, capacity: int = 8 << 20, max_records: int = 8192) -> list[str]:
        names = [ring_name(os.getpid(), next(_ring_ids)) for _ in range(n)]
        for name in names:
            create_ring(name, capacity, max_records)
        self.names.extend(names)
        return names

    def write(self, name: str, signal: Signal, item_count: int, payload: bytes) -> None:
        writer = self._writers.get(name) or self._writers.setdefault(name, RingWriter.attach(name))
        assert writer.try_write(int(signal), item_count, payload), f"ring {name} full"

    def close(self) -> None:
        for writer in self._writers.values():
            writer.close()
        for name in self.names:
            unlink_ring(name)


def spans(first: int, n: int) -> bytes:
    """An ExportTraceServiceRequest with spans first..first+n-1 (trace/span id = the number)."""
    request = trace_service_pb2.ExportTraceServiceRequest()
    scope = request.resource_spans.add().scope_spans.add()
    for i in range(first, first + n):
        span = scope.spans.add(name=f"span-{i}", start_time_unix_nano=i, end_time_unix_nano=i + 1)
        span.trace_id = (i + 1).to_bytes(16, "big")
        span.span_id = (i + 1).to_bytes(8, "big")
    return request.SerializeToString()


def span_keys(first: int, n: int) -> set[str]:
    return {
        f"{(i + 1).to_bytes(16, 'big').hex()}:{(i + 1).to_bytes(8, 'big').hex()}"
        for i in range(first, first + n)
    }


def logs(first: int, n: int) -> bytes:
    request = logs_service_pb2.ExportLogsServiceRequest()
    scope = request.resource_logs.add().scope_logs.add()
    for i in range(first, first + n):
        record = scope.log_records.add(time_unix_nano=1_000 + i)
        record.body.string_value = f"log-{i}"
    return request.SerializeToString()


def log_keys(first: int, n: int) -> set[str]:
    return {f"log-{i}:{1_000 + i}" for i in range(first, first + n)}


def metric_points(first: int, n: int) -> bytes:
    request = metrics_service_pb2.ExportMetricsServiceRequest()
    metric = request.resource_metrics.add().scope_metrics.add().metrics.add(name="m")
    for i in range(first, first + n):
        point = metric.gauge.data_points.add(time_unix_nano=2_000 + i, as_int=i)
        attr = point.attributes.add(key="k")
        attr.value.string_value = str(i)
    return request.SerializeToString()


def metric_keys(first: int, n: int) -> set[str]:
    return {f"m:{2_000 + i}:k={i}" for i in range(first, first + n)}


class ExporterProcess:
    """One exporter child process, started like the supervisor starts it."""

    def __init__(self, settings: Settings, rings: list[str], workdir: Path, index: int = 0) -> None:
        self.metrics_dir = workdir / "prom"
        self.metrics_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = workdir / f"exporter-{time.monotonic_ns()}.log"
        read_fd, write_fd = os.pipe()
        env = {
            **os.environ,
            "OTLP_INGEST_SETTINGS_JSON": settings_to_json(settings),
            "PROMETHEUS_MULTIPROC_DIR": str(self.metrics_dir),
        }
        ring_args = [arg for name in rings for arg in ("--ring", name)]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [
                    *(sys.executable, "-m", "otlp_ingest", "_child", "exporter", "--index", str(index)),
                    *ring_args,
                    *("--ready-fd", str(write_fd)),
                ],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                pass_fds=(write_fd,),
            )
        os.close(write_fd)
        try:
            ready, _, _ = select.select([read_fd], [], [], 20.0)
            line = os.read(read_fd, 64) if ready else b""
        finally:
            os.close(read_fd)
        if line != b"ready\n":
            self.proc.kill()
            self.proc.wait()
            raise RuntimeError(f"exporter did not become ready: {self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def terminate(self, timeout: float = 20.0) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()

    def counter(self, name: str, **labels: str) -> float:
        """Sum of a counter's samples (name without _total) with these labels, over every process."""
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(self.metrics_dir))
        total = 0.0
        for family in registry.collect():
            for sample in family.samples:
                if sample.name == f"{name}_total" and all(
                    sample.labels.get(k) == v for k, v in labels.items()
                ):
                    total += sample.value
        return total
