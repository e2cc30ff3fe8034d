"""The status page's data: the children's status files, the warning buffer, the exporter state,
the supervisor's counter reading and sampling, the /status.json document, redaction, and `top`'s
rendering of it. The real server, page and terminal are in tests/integration/test_status_page.py.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from prometheus_client.mmap_dict import MmapedDict, mmap_key

from otlp_ingest import top
from otlp_ingest.config import Settings
from otlp_ingest.exporter.state import ExporterState, percentile
from otlp_ingest.ring import RingWriter
from otlp_ingest.ring.segment import create_ring, unlink_ring
from otlp_ingest.supervisor.status import (
    REDACTED,
    CounterReader,
    Sample,
    SamplerView,
    StatusSampler,
    build_status,
    redact_settings,
    redact_url,
)
from otlp_ingest.telemetry import child_status
from otlp_ingest.telemetry.collect import ProcessInfo, TreeSnapshot
from otlp_ingest.telemetry.logging import WarningBuffer, WarningBufferHandler


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# --- warning buffer -------------------------------------------------------------------------


def test_warning_buffer_counts_repeats_within_its_window_and_keeps_the_rest():
    clock = Clock()
    buffer = WarningBuffer(capacity=3, interval=10.0, clock=clock)
    buffer.add("x", logging.WARNING, "ring %s full", "ring w0 full")
    clock.now += 1
    buffer.add("x", logging.WARNING, "ring %s full", "ring w1 full")  # same template: a repeat
    buffer.add("x", logging.ERROR, "send failed", "send failed")
    entries = buffer.entries()
    assert [(e["message"], e["count"], e["level"]) for e in entries] == [
        ("ring w1 full", 2, "WARNING"),
        ("send failed", 1, "ERROR"),
    ]
    assert entries[0]["time"] == 1_000_000.0 and entries[0]["last"] == 1_000_001.0
    clock.now += 10  # the window passed: a new slot
    buffer.add("x", logging.WARNING, "ring %s full", "ring w0 full")
    buffer.add("y", logging.WARNING, "other", "other")  # capacity 3: the oldest goes
    assert [e["message"] for e in buffer.entries()] == ["send failed", "ring w0 full", "other"]
    generation = buffer.generation
    buffer.add("y", logging.WARNING, "other", "other")
    assert buffer.generation == generation + 1


def test_warning_buffer_handler_takes_warnings_only_and_cuts_long_messages():
    buffer = WarningBuffer()
    logger = logging.getLogger("test_status.handler")
    handler = WarningBufferHandler(buffer)
    logger.addHandler(handler)
    try:
        logger.info("not this")
        logger.warning("disk %s\nfull", "sda")
        logger.error("x" * 2000)
        try:
            raise ValueError("boom")
        except ValueError:
            logger.exception("crashed")
    finally:
        logger.removeHandler(handler)
    messages = [e["message"] for e in buffer.entries()]
    assert messages[0] == "disk sda | full"
    assert len(messages[1]) == WarningBuffer.MAX_MESSAGE and messages[1].endswith("...")
    assert messages[2] == "crashed | ValueError('boom')"


# --- child status files ---------------------------------------------------------------------


def test_child_status_writer_writes_at_start_on_change_only_and_at_close(tmp_path):
    buffer = WarningBuffer()
    state = {"n": 1}
    writer = child_status.ChildStatusWriter(
        str(tmp_path), "exporter", 2, pid=4242, interval=3600, warnings=buffer
    )
    writer.add_section("exporter", lambda: dict(state))
    writer.start()  # writes once at once
    try:
        path = child_status.status_path(str(tmp_path), 4242)
        doc = child_status.read_status_file(path)
        assert doc is not None
        assert {k: doc[k] for k in ("format", "role", "index", "pid", "warnings", "exporter")} == {
            "format": 1,
            "role": "exporter",
            "index": 2,
            "pid": 4242,
            "warnings": [],
            "exporter": {"n": 1},
        }
        assert doc["started"] <= doc["written"]
        assert writer.write_if_changed() is False  # nothing new: no write at all
        buffer.add("l", logging.WARNING, "t", "backend down")
        assert writer.write_if_changed() is True
        assert child_status.read_status_file(path)["warnings"][0]["message"] == "backend down"
        state["n"] = 2
    finally:
        writer.close()  # the final write carries the last change
    assert child_status.read_status_file(path)["exporter"] == {"n": 2}
    assert sorted(os.listdir(tmp_path)) == ["status-4242.json"]  # no temp file left


def test_child_status_section_failure_does_not_stop_the_file(tmp_path):
    writer = child_status.ChildStatusWriter(str(tmp_path), "worker", 0, pid=7, warnings=WarningBuffer())
    writer.add_section("broken", lambda: 1 / 0)  # type: ignore[arg-type,return-value]
    assert writer.write_if_changed() is True
    doc = child_status.read_status_file(child_status.status_path(str(tmp_path), 7))
    assert doc is not None and "broken" not in doc


def test_read_status_file_rejects_what_is_not_a_status_file(tmp_path):
    bad = tmp_path / "status-1.json"
    for content in ("", "{", "[]", '{"format": 2, "pid": 1}', '{"format": 1, "pid": "1"}'):
        bad.write_text(content)
        assert child_status.read_status_file(str(bad)) is None
    assert child_status.read_status_file(str(tmp_path / "missing.json")) is None
    assert child_status.pid_of("status-12.json") == 12
    assert child_status.pid_of(".status-12.json.tmp") is None
    assert child_status.pid_of("status-x.json") is None


# --- exporter state -------------------------------------------------------------------------


def test_exporter_state_retrying_then_sending():
    clock = Clock()
    state = ExporterState(clock)
    assert state.section(0, 1, 4)["state"] == "idle"
    state.attempt_done(0.010)
    assert state.section(1, 2, 4)["state"] == "sending"
    clock.now += 1
    state.attempt_done(0.002, "gRPC UNAVAILABLE: down", retryable=True)
    state.retry_scheduled(1.5)
    clock.now += 1
    state.attempt_done(0.004, "gRPC UNAVAILABLE: still down", retryable=True)
    state.retry_scheduled(3.0)
    section = state.section(1, 1, 4)
    assert section["state"] == "retrying"
    assert section["retrying"] == {
        "since": 1_000_001.0,
        "failures": 2,
        "backoff_s": 3.0,
        "next_attempt": 1_000_005.0,
    }
    assert section["last_error"] == {
        "time": 1_000_002.0,
        "message": "gRPC UNAVAILABLE: still down",
        "retryable": True,
    }
    assert section["last_success"] == 1_000_000.0
    assert (section["attempts"], section["failed_attempts"]) == (3, 2)
    assert section["latency"]["samples"] == 3 and section["latency"]["p50_s"] == 0.004
    state.attempt_done(0.001, "HTTP 400: bad", retryable=False)  # permanent: no change of state
    assert state.section(1, 1, 4)["state"] == "retrying"
    state.attempt_done(0.005)
    section = state.section(0, 2, 4)
    assert section["state"] == "idle" and section["retrying"] is None
    assert section["last_error"]["message"] == "HTTP 400: bad"  # kept: the page shows its age
    clock.now += 61  # latency is over the last minute only
    assert state.section(0, 2, 4)["latency"] == {"window_s": 60.0, "samples": 0, "p50_s": None, "p99_s": None}


def test_percentile_nearest_rank():
    values = sorted(float(i) for i in range(1, 101))
    assert percentile(values, 0.50) == 50.0
    assert percentile(values, 0.99) == 99.0
    assert percentile([7.0], 0.99) == 7.0
    assert percentile([], 0.5) is None


# --- counters from the multiprocess files ---------------------------------------------------


def _write_counter(directory: Path, pid: int, family: str, labels: dict[str, str], value: float) -> None:
    """A counter file exactly as prometheus_client's multiprocess mode writes it."""
    db = MmapedDict(str(directory / f"counter_{pid}.db"))
    try:
        key = mmap_key(family.removesuffix("_total"), family, list(labels), list(labels.values()), "help")
        db.write_value(key, value, 0.0)
    finally:
        db.close()


def test_counter_reader_sums_item_counters_over_processes(tmp_path):
    _write_counter(tmp_path, 10, "otlp_receiver_accepted_spans_total", {"transport": "grpc"}, 30)
    _write_counter(tmp_path, 10, "otlp_receiver_accepted_spans_total", {"transport": "http"}, 5)
    _write_counter(tmp_path, 11, "otlp_receiver_accepted_spans_total", {"transport": "grpc"}, 7)
    _write_counter(tmp_path, 11, "otlp_receiver_refused_log_records_total", {"transport": "http"}, 2)
    labels = {"exporter": "0", "reason": "permanent"}
    _write_counter(tmp_path, 12, "otlp_exporter_send_failed_metric_points_total", labels, 4)
    _write_counter(tmp_path, 12, "otlp_exporter_sent_spans_total", {"exporter": "0"}, 40)
    _write_counter(tmp_path, 12, "otlp_exporter_send_retries_total", {"exporter": "0", "signal": "traces"}, 9)
    (tmp_path / "histogram_12.db").write_bytes(b"not read")
    reader = CounterReader(str(tmp_path))
    totals, per_pid = reader.read()
    assert totals == {
        ("accepted", "traces"): 42,
        ("refused", "logs"): 2,
        ("dropped", "metrics"): 4,
        ("exported", "traces"): 40,
    }
    assert per_pid[10] == {("accepted", "traces"): 35}
    assert reader.read()[0] == totals  # the parsed-key cache gives the same answer


# --- the document ---------------------------------------------------------------------------


@pytest.fixture
def ring_name():
    name = f"otlptest-{os.getpid()}-{uuid.uuid4().hex[:12]}"  # not a server's prefix
    create_ring(name, 64 * 1024, 100)
    yield name
    unlink_ring(name)


def _snapshot(ring: str, settings: Settings, mono: float) -> TreeSnapshot:
    return TreeSnapshot(
        supervisor_pid=100,
        processes=(
            ProcessInfo("exporter", 0, 101, True, True, started=mono - 30, queues=(f"shm:{ring}",)),
            ProcessInfo(
                "worker",
                0,
                102,
                True,
                True,
                started=mono - 20,
                restarts=2,
                last_exit="signal SIGKILL",
                last_exit_at=1_000_090.0,
                queues=(f"shm:{ring}",),
            ),
            ProcessInfo("worker", 1, None, False, False, restarts=1, queues=("shm:gone",)),
        ),
        restarts={"worker": 3, "exporter": 0},
        exporter_rings={0: (f"shm:{ring}",)},
        started=mono - 31,
        settings=settings,
    )


def test_build_status_document(ring_name):
    with RingWriter.attach(ring_name) as writer:
        assert writer.try_write(1, 10, b"x" * 100)
    settings = Settings(endpoint="https://collector:4318", export_protocol="http/protobuf")
    mono, wall = 5000.0, 1_000_100.0
    history = tuple(
        Sample(
            mono - 10 + i,
            wall - 10 + i,
            {("accepted", "traces"): 100.0 * i, ("exported", "traces"): 50.0 * i, ("refused", "logs"): 1.0},
        )
        for i in range(11)
    )
    exporter_section = ExporterState(Clock(wall)).section(0, 1, 4)
    view = SamplerView(
        history=history,
        procs={},
        children={
            101: {
                "role": "exporter",
                "index": 0,
                "pid": 101,
                "warnings": [
                    {"time": wall - 5, "last": wall - 2, "level": "WARNING", "message": "b", "count": 3}
                ],
                "exporter": exporter_section,
            },
            102: {"role": "worker", "index": 0, "pid": 102, "warnings": []},
        },
        retired_warnings=(
            {
                "time": wall - 50,
                "last": wall - 50,
                "level": "ERROR",
                "message": "old",
                "count": 1,
                "process": "worker[1]",
                "pid": 99,
            },
        ),
    )
    own = [{"time": wall - 1, "last": wall - 1, "level": "WARNING", "message": "a", "count": 1}]
    doc = build_status(_snapshot(ring_name, settings, mono), view, own, "pod-1", now_wall=wall, now_mono=mono)
    json.dumps(doc, allow_nan=False)  # what the endpoint does
    assert (doc["host"], doc["ready"], doc["ready_reason"]) == ("pod-1", False, "not ready: worker[1]")
    assert doc["mode"] == "shared-memory"
    assert doc["destination"] == {
        "kind": "backend",
        "endpoint": "https://collector:4318",
        "protocol": "http/protobuf",
    }
    traces = doc["signals"]["traces"]
    assert traces["accepted"] == {"total": 1000, "rate": 100.0}  # over the last 5 s
    assert traces["exported"] == {"total": 500, "rate": 50.0}
    assert traces["history"]["accepted"] == [100.0] * 10
    assert doc["signals"]["logs"]["refused"] == {"total": 1, "rate": 0.0}
    assert doc["signals"]["metrics"]["accepted"] == {"total": 0, "rate": 0.0}
    [queue] = doc["queues"]
    assert queue["worker"] == 0 and queue["exporter"] == 0 and queue["kind"] == "shm"
    assert queue["records"] == 1 and queue["max_records"] == 100 and queue["fill"] == 0.01
    [exporter] = doc["exporters"]
    assert exporter["pid"] == 101 and exporter["state"] == "idle" and exporter["window_limit"] == 4
    processes = {p["name"]: p for p in doc["processes"]}
    assert list(processes) == ["supervisor", "exporter[0]", "worker[0]", "worker[1]"]
    assert processes["supervisor"]["uptime_s"] == 31.0
    assert processes["worker[0]"]["state"] == "ready" and processes["worker[0]"]["restarts"] == 2
    assert processes["worker[0]"]["last_exit"] == {"how": "signal SIGKILL", "time": 1_000_090.0}
    assert processes["worker[1]"]["state"] == "down" and processes["worker[1]"]["pid"] is None
    assert [(w["process"], w["message"]) for w in doc["warnings"]] == [
        ("supervisor", "a"),
        ("exporter[0]", "b"),
        ("worker[1]", "old"),
    ]
    assert doc["memory"] == {"enabled": False, "state": "off"}
    assert doc["settings"]["export_protocol"] == "http/protobuf"


def test_build_status_with_no_samples_yet():
    snap = TreeSnapshot(supervisor_pid=1, settings=Settings(queue_dir="/var/lib/q"))
    doc = build_status(snap, SamplerView(), [], now_wall=1.0, now_mono=1.0)
    assert doc["signals"]["traces"]["accepted"] == {"total": 0, "rate": None}
    assert doc["mode"] == "durable" and doc["destination"]["kind"] == "file"
    assert doc["exporters"] == [] and doc["queues"] == []


def test_status_sampler_reads_child_files_and_keeps_warnings_of_exited_children(tmp_path):
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    dead_pid = int(dead.stdout)
    for pid, role in ((os.getpid(), "exporter"), (dead_pid, "worker")):
        buffer = WarningBuffer()
        buffer.add("l", logging.WARNING, "t", f"from {role}")
        child_status.ChildStatusWriter(str(tmp_path), role, 0, pid=pid, warnings=buffer).write_if_changed()
    snap = TreeSnapshot(
        supervisor_pid=os.getpid(),
        processes=(ProcessInfo("exporter", 0, os.getpid(), True, True, started=time.monotonic()),),
    )
    sampler = StatusSampler(str(tmp_path), lambda: snap, warnings=WarningBuffer())
    sampler.sample()
    view = sampler._view
    assert list(view.children) == [os.getpid()]
    assert [(w["process"], w["message"]) for w in view.retired_warnings] == [("worker[0]", "from worker")]
    assert not (tmp_path / f"status-{dead_pid}.json").exists()  # read, then removed
    assert view.procs[os.getpid()].rss_bytes > 0
    doc = json.loads(sampler.status_json())
    assert {w["message"] for w in doc["warnings"]} == {"from exporter", "from worker"}
    assert sampler.status_json() is sampler.status_json()  # served from the cache within CACHE_FOR


# --- redaction ------------------------------------------------------------------------------


def test_redact_settings_hides_header_values_and_keeps_paths():
    settings = Settings(
        endpoint="https://user:hunter2@collector:4318/v1?api_key=abc123&tenant=blue",
        export_headers={"authorization": "Bearer sekrit-token", "x-scope-orgid": "tenant-7"},
        queue_dir="/var/lib/otlp/queue",
    )
    shown = redact_settings(settings)
    body = json.dumps(shown)
    for secret in ("hunter2", "abc123", "sekrit-token", "tenant-7"):
        assert secret not in body
    assert shown["export_headers"] == {"authorization": REDACTED, "x-scope-orgid": REDACTED}
    assert shown["endpoint"] == "https://user:<redacted>@collector:4318/v1?api_key=<redacted>&tenant=blue"
    assert shown["queue_dir"] == "/var/lib/otlp/queue"
    # The processors have their own section (values written into attributes may be secrets).
    assert shown["batch_size"] == 2048
    assert set(shown) == set(Settings.__struct_fields__) - {"processors", "pipelines"}


def test_redact_settings_hides_credential_like_settings_but_not_key_files():
    class WithToken(Settings, kw_only=True):  # a setting added later, named like a credential
        export_api_token: str = ""

    shown = redact_settings(WithToken(export_api_token="t0ps3cret", export_key_file=None))
    assert shown["export_api_token"] == REDACTED
    assert shown["export_key_file"] is None  # a path setting, shown as is
    assert redact_settings(WithToken())["export_api_token"] == ""  # unset stays visibly unset


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("collector:4317", "collector:4317"),
        ("http://collector:4318", "http://collector:4318"),
        ("https://token@collector", "https://<redacted>@collector"),
        ("https://c/v1?token=x&a=b", "https://c/v1?token=<redacted>&a=b"),
    ],
)
def test_redact_url(url, shown):
    assert redact_url(url) == shown


# --- top ------------------------------------------------------------------------------------


def test_top_formatting():
    assert top.fmt_int(1234567) == "1,234,567"
    assert top.fmt_rate(2.5) == "2.5/s" and top.fmt_rate(12345.4) == "12,345/s" and top.fmt_rate(0) == "0/s"
    assert top.fmt_bytes(512) == "512 B" and top.fmt_bytes(16 * 1024 * 1024) == "16.0 MiB"
    assert top.fmt_dur(0.0042) == "4 ms" and top.fmt_dur(75) == "1m 15s" and top.fmt_dur(7300) == "2h 1m"
    assert top.sparkline([0, 1, 2, 4]) == "▁▃▅█" and top.sparkline([0, 0]) == "▁▁"
    assert top.status_url("localhost:8888") == "http://localhost:8888/status.json"
    assert top.status_url(":9") == "http://localhost:9/status.json"
    assert top.status_url("https://h/proxy/") == "https://h/proxy/status.json"


def test_top_renders_a_document(ring_name):
    mono, wall = 5000.0, 1_000_100.0
    state = ExporterState(Clock(wall - 3))
    state.attempt_done(0.002, "gRPC UNAVAILABLE: backend down", retryable=True)
    state.retry_scheduled(2.0)
    view = SamplerView(
        history=(Sample(mono - 1, wall - 1, {}), Sample(mono, wall, {("accepted", "traces"): 2500.0})),
        children={
            101: {
                "role": "exporter",
                "index": 0,
                "pid": 101,
                "warnings": [],
                "exporter": state.section(1, 1, 4),
            }
        },
    )
    doc = build_status(
        _snapshot(ring_name, Settings(), mono), view, [], "pod-1", now_wall=wall, now_mono=mono
    )
    text = "\n".join(top.render(doc, colour=False))
    assert "2,500" in text and "retrying" in text and "gRPC UNAVAILABLE: backend down" in text
    assert "NOT READY (not ready: worker[1])" in text
    for pid in ("100", "101", "102"):
        assert pid in text
    coloured = top.render(doc, colour=True)
    assert any("\x1b[31mretrying\x1b[0m" in line for line in coloured)
    assert top._fit(coloured[0], 20).endswith("…")


def test_processors_section_from_the_counters(ring_name):
    """status.json and top list the pipelines' processors, in order, with the summed counters."""
    mono, wall = 5000.0, 1_000_100.0
    settings = Settings(
        processors={"attributes/pii": {"actions": [{"key": "a", "action": "delete"}]}, "filter": {}},
        pipelines={"traces": ["attributes/pii", "filter"], "logs": ["attributes/pii"]},
    )
    totals = {
        ("processor_incoming", "attributes/pii traces"): 100.0,
        ("processor_outgoing", "attributes/pii traces"): 100.0,
        ("processor_incoming", "filter traces"): 100.0,
        ("processor_outgoing", "filter traces"): 60.0,
        ("processor_dropped", "filter traces"): 40.0,
        ("processor_seconds", "filter traces"): 0.0123,
    }
    view = SamplerView(history=(Sample(mono - 1, wall - 1, {}), Sample(mono, wall, totals)))
    doc = build_status(_snapshot(ring_name, settings, mono), view, [], "pod-1", now_wall=wall, now_mono=mono)
    rows = [
        (p["signal"], p["position"], p["name"], p["incoming"], p["outgoing"], p["dropped"])
        for p in doc["processors"]
    ]
    assert rows == [
        ("traces", 0, "attributes/pii", 100, 100, 0),
        ("traces", 1, "filter", 100, 60, 40),
        ("logs", 0, "attributes/pii", 0, 0, 0),
    ]
    assert doc["processors"][1]["seconds"] == 0.012 and "processors" not in doc["settings"]
    text = "\n".join(top.render(doc, colour=False))
    assert "PROCESSORS" in text and "2. filter" in text and "12 ms" in text
