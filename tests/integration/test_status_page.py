"""The live status page, `/status.json` and `otlp-ingest top` on a real server whose backend fails.

A real server tree (ServerProcess) exports to a recording backend that answers UNAVAILABLE with
RetryInfo; the built-in loadgen sends 2,500 spans, which the server acknowledges and queues. Then:

- `/status.json` says so: totals, queue fill, every child, the exporter retrying with its error;
  settings with the export header's secret redacted; a killed worker shows up as restarted;
- headless Chromium shows the page a person would see (span count, every pid, "retrying" with
  the error) and, once the backend recovers, the same page - never reloaded - refreshes to the
  spans exported. Screenshots go to `test-output/` at the repository root (ignored by git;
  `OTLP_TEST_OUTPUT` names another directory);
- `python -m otlp_ingest top` prints the same, once (`--once`) and refreshing.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from otlp_ingest.loadgen import LoadgenOptions, run_loadgen
from tests.conftest import REPO_ROOT, ServerProcess, http_get
from tests.support.browser import Chromium
from tests.support.waiting import wait_until

SPANS = 2500  # 25 requests of 100: "2,500" on the page
SECRET = "sekrit-token-123"


@pytest.fixture
def output_dir() -> Path:
    """Where screenshots go: kept after the run so a person (or CI) can look at them."""
    path = Path(os.environ.get("OTLP_TEST_OUTPUT", REPO_ROOT / "test-output"))
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
def failing(backend_factory, server_factory):
    """(server, backend): the backend fails every export with UNAVAILABLE + RetryInfo(1 s), and
    SPANS spans were acknowledged and are queued. The backend recovers before teardown, so the
    server drains and exits 0."""
    backend = backend_factory(fail_first=10**9, fail_code="unavailable", retry_after_s=1.0)
    server = server_factory(
        env={
            "OTLP_ENDPOINT": backend.grpc_endpoint,
            "OTLP_EXPORT_HEADERS": f"authorization=Bearer {SECRET},x-scope-orgid=tenant-1",
        }
    )
    result = run_loadgen(
        LoadgenOptions(
            endpoint=server.grpc_endpoint, items_per_request=100, concurrency=1, duration=None, requests=25
        )
    )
    assert result.items_accepted == SPANS, result
    yield server, backend
    backend.control(fail_next=0)
    backend.wait_for_items("traces", SPANS, timeout=30)


def status(server: ServerProcess) -> dict:
    code, body = http_get(server.admin_url + "/status.json")
    assert code == 200, body[:200]
    return json.loads(body)


def retrying_with_spans_queued(server: ServerProcess) -> dict | None:
    doc = status(server)
    [exporter] = doc["exporters"]
    if doc["signals"]["traces"]["accepted"]["total"] == SPANS and exporter["state"] == "retrying":
        return doc
    return None


def live_pids(server: ServerProcess) -> set[int]:
    return {server.pid, *(c.process.pid for c in server.children())}


def test_status_json_shows_a_failing_backend_and_a_restarted_worker(failing):
    server, _backend = failing
    doc = wait_until(lambda: retrying_with_spans_queued(server), 15, what="exporter retrying, spans counted")
    [exporter] = doc["exporters"]
    assert "UNAVAILABLE" in exporter["last_error"]["message"] and exporter["last_error"]["retryable"]
    assert exporter["retrying"]["failures"] >= 1 and exporter["retrying"]["backoff_s"] == 1.0  # the hint
    assert exporter["last_success"] is None and exporter["latency"]["samples"] >= 1
    assert doc["signals"]["traces"]["exported"]["total"] == 0
    # Queued: every acknowledged record is still in the rings, counted per worker.
    assert sum(q["records"] for q in doc["queues"]) == 25
    assert {q["worker"] for q in doc["queues"]} == {0, 1} and all(q["kind"] == "shm" for q in doc["queues"])
    assert {p["pid"] for p in doc["processes"]} == live_pids(server)
    assert all(p["cpu_percent"] is not None and p["rss_bytes"] > 0 for p in doc["processes"])
    # The exporter's rate-limited retry warning made it from its process to the page.
    assert any(w["process"] == "exporter[0]" and "UNAVAILABLE" in w["message"] for w in doc["warnings"])
    # Secrets in settings never reach the admin port; the header names do.
    body = http_get(server.admin_url + "/status.json")[1].decode()
    assert SECRET not in body and "tenant-1" not in body
    assert doc["settings"]["export_headers"] == {"authorization": "<redacted>", "x-scope-orgid": "<redacted>"}

    victim = server.child("worker", 1).process
    victim.kill()

    def restarted() -> dict | None:
        rows = {p["name"]: p for p in status(server)["processes"]}
        row = rows["worker[1]"]
        ok = row["restarts"] == 1 and row["state"] == "ready" and row["pid"] not in (None, victim.pid)
        return row if ok else None

    row = wait_until(restarted, 20, what="worker[1] restarted on the status page")
    assert row["last_exit"]["how"] == "signal SIGKILL"
    # The supervisor's own warning about it is on the page too.
    assert any(
        w["process"] == "supervisor" and "worker[1] exited unexpectedly" in w["message"]
        for w in status(server)["warnings"]
    )


READ_PAGE = """(() => {
  const text = (sel) => { const e = document.querySelector(sel); return e ? e.innerText.trim() : null; };
  const traces = '#signals tr[data-signal="traces"] ';
  return {
    accepted: text(traces + 'td[data-field="accepted-total"]'),
    exported: text(traces + 'td[data-field="exported-total"]'),
    sparkline_bars: document.querySelectorAll(traces + 'svg.spark rect').length,
    exporter_state: text('#exporters td[data-field="state"]'),
    exporter_error: text('#exporters td[data-field="last-error"]'),
    pids: [...document.querySelectorAll('#processes td[data-field="pid"]')].map((e) => e.innerText.trim()),
    updated: text('#updated'),
    text: document.body ? document.body.innerText : "",
  };
})()"""


def test_status_page_in_chromium_shows_retrying_then_refreshes_to_recovered(failing, tmp_path, output_dir):
    server, backend = failing
    wait_until(lambda: retrying_with_spans_queued(server), 15, what="exporter retrying, spans counted")
    pids = {str(pid) for pid in live_pids(server)}
    with Chromium(tmp_path / "chromium") as browser:
        page = browser.open(server.admin_url + "/")

        def shows_retrying() -> dict | None:
            seen = page.evaluate(READ_PAGE)
            ok = (
                seen
                and seen["accepted"] == "2,500"
                and seen["exporter_state"] is not None
                and "retrying" in seen["exporter_state"]
                and "UNAVAILABLE" in (seen["exporter_error"] or "")
                and set(seen["pids"]) == pids
            )
            return seen if ok else None

        seen = wait_until(shows_retrying, 20, what="the page showing the failing backend")
        assert seen["exported"] == "0" and seen["sparkline_bars"] > 0
        assert "backoff 1.0 s" in seen["exporter_state"]  # the backend's RetryInfo hint
        assert SECRET not in seen["text"]
        first_update = seen["updated"]
        page.screenshot(output_dir / "status-page-retrying.png")

        backend.control(fail_next=0)

        def shows_recovered() -> dict | None:  # the same page, refreshed by its own script
            seen = page.evaluate(READ_PAGE)
            state = seen["exporter_state"] or ""
            return seen if seen["exported"] == "2,500" and "retrying" not in state else None

        seen = wait_until(shows_recovered, 30, what="the page refreshing to the recovered backend")
        assert seen["updated"] != first_update
        shot = page.screenshot(output_dir / "status-page-recovered.png")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_top_once_and_refreshing(failing):
    server, _backend = failing
    wait_until(lambda: retrying_with_spans_queued(server), 15, what="exporter retrying, spans counted")
    command = [sys.executable, "-m", "otlp_ingest", "top", "--admin", f"127.0.0.1:{server.admin_port}"]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    once = subprocess.run([*command, "--once"], capture_output=True, text=True, timeout=30, env=env)
    assert once.returncode == 0, once.stderr
    out = once.stdout
    assert "\x1b" not in out  # not a terminal: no colours, no cursor movement
    assert "2,500" in out and "retrying" in out and "UNAVAILABLE" in out
    for pid in live_pids(server):
        assert str(pid) in out

    # Refreshing: a frame per interval until Ctrl-C, which ends it cleanly.
    proc = subprocess.Popen(
        [*command, "--interval", "0.2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    try:
        frames = 0
        deadline = time.monotonic() + 20
        while frames < 2 and time.monotonic() < deadline:
            line = proc.stdout.readline()  # type: ignore[union-attr]
            frames += line.startswith("otlp-ingest ")
        assert frames == 2
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    unreachable = subprocess.run(
        [*command[:-1], "127.0.0.1:1", "--once"], capture_output=True, text=True, timeout=30, env=env
    )
    assert unreachable.returncode == 1 and "cannot read http://127.0.0.1:1/status.json" in unreachable.stderr
