"""Processing end to end: real SDK exporters -> `otlp_ingest serve --config` with processors ->
the recording backend, which counts every attribute it receives (issue 18)."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import requests
import yaml

from otlp_ingest.otlp.signals import Signal
from tests.conftest import REPO_ROOT, ServerProcess, wait_until
from tests.e2e.test_pipeline import assert_exactly_once, make_exporter
from tests.support.sdk import finished_spans, span_keys

EMAIL = "jane@example.com"
TOKEN = "Bearer sekrit-token"

# The issue's example, less the sampler (tested on its own below) and with the function's file.
SCRUB = """
def scrub(request):
    for rl in request.resource_logs:
        for sl in rl.scope_logs:
            for record in sl.log_records:
                record.body.string_value = "scrubbed"
"""


def config(tmp_path: Path, processors: dict, pipelines: dict, name: str = "otlp.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump({"processors": processors, "pipelines": pipelines}))
    return path


def pii_config(tmp_path: Path) -> Path:
    (tmp_path / "my_processors.py").write_text(SCRUB)
    return config(
        tmp_path,
        {
            "attributes/pii": {
                "actions": [
                    {"key": "user.email", "action": "hash"},
                    {"key": "http.request.header.authorization", "action": "delete"},
                ]
            },
            "resource/env": {
                "attributes": [{"key": "deployment.environment", "value": "prod", "action": "upsert"}]
            },
            "filter/health": {
                "spans": {"exclude": {"match_type": "regexp", "span_names": ["^GET /healthz"]}}
            },
            "python/scrub": {"function": f"{tmp_path / 'my_processors.py'}:scrub"},
        },
        {
            "traces": ["attributes/pii", "resource/env", "filter/health"],
            "logs": ["attributes/pii", "python/scrub"],
        },
    )


def sdk_spans(names: list[str], attributes: dict[str, str]) -> list[object]:
    return finished_spans(names, attributes, service="shop", event=("login", {"user.email": EMAIL}))


def sdk_logs(n: int) -> list[object]:
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor

    memory = InMemoryLogRecordExporter()
    provider = LoggerProvider()
    provider.add_log_record_processor(SimpleLogRecordProcessor(memory))
    logger = provider.get_logger("e2e")
    for i in range(n):
        logger.emit(body=f"password for {EMAIL} is hunter{i}", attributes={"user.email": EMAIL})
    return list(memory.get_finished_logs())


def export(signal_: Signal, protocol: str, server: ServerProcess, batch: list[object]) -> None:
    exporter = make_exporter(signal_, protocol, server, gzip=False)
    try:
        assert exporter.export(batch).name == "SUCCESS"
    finally:
        exporter.shutdown()


def test_pii_never_reaches_the_backend_and_filtered_spans_count_as_dropped(
    tmp_path, server_factory, backend_factory
):
    backend = backend_factory(record_attributes=True)
    server = server_factory(
        env={"OTLP_ENDPOINT": backend.grpc_endpoint, "PYTHONPATH": str(REPO_ROOT)},
        args=["--config", str(pii_config(tmp_path))],
    )
    pii = {"user.email": EMAIL, "http.request.header.authorization": TOKEN}
    kept: list[str] = []
    for protocol in ("grpc", "http", "http/json"):
        batch = sdk_spans(["GET /orders", "GET /healthz", "POST /cart", "GET /healthz/live"], pii)
        export(Signal.TRACES, protocol, server, batch)
        kept += span_keys([s for s in batch if not s.name.startswith("GET /healthz")])
        export(Signal.LOGS, protocol, server, sdk_logs(3))
    records = assert_exactly_once(backend, Signal.TRACES, kept)
    wait_until(lambda: backend.records()["logs"]["items"] == 9 or None, 20, 0.1, "9 log records")
    seen = {**records["attributes"], **backend.records()["logs"]["attributes"]}
    hashed = hashlib.sha256(EMAIL.encode()).hexdigest()
    assert not [pair for pair in seen if EMAIL in pair or "sekrit" in pair or "authorization" in pair], seen
    assert seen[f"span:user.email={hashed}"] == 6 and seen[f"event:user.email={hashed}"] == 6
    assert seen[f"log:user.email={hashed}"] == 9 and seen["log:body=scrubbed"] == 9
    resources = records["attributes"]
    assert resources["resource:deployment.environment=prod"] == resources["resource:service.name=shop"] >= 1
    metrics = server.metrics()
    assert (
        metrics.value("otlp_processor_dropped_items_total", processor="filter/health", reason="filtered") == 6
    )
    assert (
        metrics.value("otlp_processor_incoming_items_total", processor="attributes/pii", signal="traces")
        == 12
    )
    assert (
        metrics.value("otlp_processor_outgoing_items_total", processor="filter/health", signal="traces") == 6
    )
    assert metrics.value("otlp_receiver_accepted_spans_total") == 12
    wait_until(
        lambda: server.metrics().value("otlp_exporter_sent_spans_total") == 6 or None, 10, 0.1, "sent 6"
    )

    # The status page lists the processors in force with their counts.
    def status_rows() -> dict | None:
        rows = requests.get(f"{server.admin_url}/status.json", timeout=5).json()["processors"]
        return rows if any(r["name"] == "python/scrub" and r["outgoing"] == 9 for r in rows) else None

    rows = wait_until(status_rows, 10, 0.2, "the status page's processor counts")
    in_order = {name: [r["name"] for r in rows if r["signal"] == name] for name in ("traces", "logs")}
    assert in_order == {
        "traces": ["attributes/pii", "resource/env", "filter/health"],
        "logs": ["attributes/pii", "python/scrub"],
    }
    assert next(r for r in rows if r["name"] == "filter/health")["dropped"] == 6


def test_servers_with_the_same_sampler_keep_the_same_traces(tmp_path, server_factory, backend_factory):
    path = config(
        tmp_path,
        {"probabilistic_sampler/half": {"sampling_percentage": 50}},
        {"traces": ["probabilistic_sampler/half"]},
    )
    batch = sdk_spans([f"op{i}" for i in range(200)], {})
    kept = []
    for _pod in range(2):
        backend = backend_factory()
        server = server_factory(env={"OTLP_ENDPOINT": backend.grpc_endpoint}, args=["--config", str(path)])
        export(Signal.TRACES, "grpc", server, batch)
        dropped = wait_until(
            lambda server=server: (
                server.metrics().value(
                    "otlp_processor_dropped_items_total",
                    processor="probabilistic_sampler/half",
                    reason="sampled",
                )
                or None
            ),
            20,
            0.1,
            "the sampler to run",
        )
        wait_until(
            lambda b=backend, d=dropped: b.counts()["traces"] == 200 - d or None, 20, 0.1, "kept spans"
        )
        kept.append(set(backend.records()["traces"]["keys"]))
    assert kept[0] == kept[1] and 50 <= len(kept[0]) <= 150


def test_bad_processor_config_is_a_startup_error_naming_the_processor_and_key(tmp_path):
    path = config(
        tmp_path,
        {"filter/health": {"spans": {"exclude": {"match_type": "regexp", "span_names": ["("]}}}},
        {"traces": ["filter/health"]},
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTLP_")}
    for command in ("serve", "check-config"):
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "otlp_ingest",
                command,
                "--config",
                str(path),
                "--grpc-port",
                "0",
                "--http-port",
                "0",
                "--admin-port",
                "0",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
            cwd=tmp_path,
        )
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert (
            len(lines) == 1
            and f"{path}:processors.filter/health.spans.exclude.span_names[0]: bad regular expression"
            in lines[0]
        )


def test_sighup_applies_a_changed_processor_section_with_nothing_lost(
    tmp_path, server_factory, backend_factory
):
    backend = backend_factory(record_attributes=True)
    hash_it = {"attributes/pii": {"actions": [{"key": "user.email", "action": "hash"}]}}
    path = config(tmp_path, hash_it, {"traces": ["attributes/pii"]})
    server = server_factory(env={"OTLP_ENDPOINT": backend.grpc_endpoint}, args=["--config", str(path)])
    first = sdk_spans([f"a{i}" for i in range(20)], {"user.email": EMAIL})
    export(Signal.TRACES, "grpc", server, first)
    delete_it = {"attributes/pii": {"actions": [{"key": "user.email", "action": "delete"}]}}
    config(tmp_path, delete_it, {"traces": ["attributes/pii"]})
    exporter_pid = server.child("exporter").process.pid
    os.kill(server.pid, signal.SIGHUP)

    def reloaded() -> bool | None:
        return (server.child("exporter").process.pid != exporter_pid and server.ready()) or None

    wait_until(reloaded, 30, 0.1, "the rolling restart")
    second = sdk_spans([f"b{i}" for i in range(20)], {"user.email": EMAIL})
    export(Signal.TRACES, "http", server, second)
    records = assert_exactly_once(backend, Signal.TRACES, span_keys(first) + span_keys(second))
    hashed = hashlib.sha256(EMAIL.encode()).hexdigest()
    assert records["attributes"].get(f"span:user.email={hashed}") == 20  # only the first batch
    assert not [pair for pair in records["attributes"] if EMAIL in pair]


FAILING = """
import time

calls = 0

def explode(request):
    raise RuntimeError("boom")

def hang(request):
    time.sleep(60)

def slow(request):
    time.sleep(0.25)
"""


@pytest.mark.parametrize(("function", "reason"), [("explode", "raised"), ("hang", "timeout")])
def test_a_failing_function_is_counted_and_nothing_else_breaks(
    tmp_path, server_factory, backend_factory, function, reason
):
    (tmp_path / "failing.py").write_text(FAILING)
    processors = {
        "python/bad": {
            "function": f"{tmp_path / 'failing.py'}:{function}",
            "timeout": "300ms",
            "on_error": "pass",
        },
    }
    backend = backend_factory()
    path = config(tmp_path, processors, {"traces": ["python/bad"]})
    server = server_factory(env={"OTLP_ENDPOINT": backend.grpc_endpoint}, args=["--config", str(path)])
    exporter_pid = server.child("exporter").process.pid
    batch = sdk_spans([f"op{i}" for i in range(10)], {})
    export(Signal.TRACES, "grpc", server, batch)
    assert_exactly_once(backend, Signal.TRACES, span_keys(batch))  # on_error: pass
    metrics = server.metrics()
    assert metrics.value("otlp_processor_errors_total", processor="python/bad", reason=reason) >= 1
    assert server.child("exporter").process.pid == exporter_pid, "the exporter survived"
    assert "processor python/bad failed on traces" in server.log_tail(200)


def test_a_function_slower_than_the_traffic_fills_the_queue_and_clients_are_told_to_retry(
    tmp_path, server_factory, backend_factory
):
    (tmp_path / "failing.py").write_text(FAILING)
    processors = {"python/slow": {"function": f"{tmp_path / 'failing.py'}:slow", "timeout": "5s"}}
    backend = backend_factory()
    path = config(tmp_path, processors, {"traces": ["python/slow"]})
    server = server_factory(
        env={"OTLP_ENDPOINT": backend.grpc_endpoint, "OTLP_QUEUE_SIZE": "4"}, args=["--config", str(path)]
    )
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

    statuses: list[int] = []
    accepted: list[str] = []
    for i in range(30):
        batch = sdk_spans([f"op{i}"], {})
        response = requests.post(
            f"{server.http_endpoint}/v1/traces",
            data=encode_spans(batch).SerializeToString(),
            headers={"Content-Type": "application/x-protobuf"},
            timeout=10,
        )
        statuses.append(response.status_code)
        if response.status_code == 200:
            accepted += span_keys(batch)
        else:
            assert response.status_code in (429, 503) and int(response.headers["Retry-After"]) >= 1
    assert 503 in statuses or 429 in statuses, statuses
    assert_exactly_once(backend, Signal.TRACES, accepted, timeout=30)
