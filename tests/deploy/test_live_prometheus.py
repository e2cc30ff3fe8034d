"""A real server scraped by a real Prometheus with the alert rules loaded.

Server: `python -m otlp_ingest serve` on free ports (tests.conftest.ServerProcess), forwarding to
the recording backend, with one pass-through processor on traces so that the processor series the
dashboard and OtlpIngestProcessorFailing select exist (the exporter creates them at 0). Traffic
for all three signals, then injected backend faults (retryable, then permanent) so the retry and
send-failed series exist too. Prometheus: the Debian binary on a free port with a temporary
storage dir, scraping the admin port every second and evaluating deploy/prometheus/alerts.yml
every second. Checked through Prometheus's HTTP API and the scripts.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import yaml

from otlp_ingest.loadgen import LoadgenOptions, run_loadgen
from tests.conftest import ServerProcess, wait_until
from tests.deploy.tools import ALERTS, ROOT, dashboard_exprs, metric_names_in, recorded_names, run, tool
from tests.support.backend import RecordingBackend
from tests.support.waiting import free_port

JOB = "otlp-ingest"  # the job label every rule and panel selects on


def _send(server: ServerProcess, signal: str, requests_: int = 3) -> None:
    result = run_loadgen(
        LoadgenOptions(
            signal=signal,
            protocol="grpc",
            endpoint=server.grpc_endpoint,
            items_per_request=10,
            concurrency=1,
            duration=None,
            requests=requests_,
        )
    )
    assert result.requests_ok == requests_, result.to_dict()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    prometheus_bin = tool("prometheus")
    tmp = tmp_path_factory.mktemp("live")
    server_config = tmp / "otlp.yaml"
    server_config.write_text(
        yaml.safe_dump(
            {
                # Processors that change nothing, so the processor series exist: a filter (the
                # only kind with a dropped-items series from the start) and an attributes one.
                "processors": {
                    "attributes/live": {"actions": [{"key": "live", "value": "1", "action": "upsert"}]},
                    "filter/live": {"spans": {"exclude": {"match_type": "strict", "span_names": ["never"]}}},
                },
                "pipelines": {"traces": ["attributes/live", "filter/live"]},
            }
        )
    )
    with (
        RecordingBackend(retry_after_s=0.05) as backend,
        ServerProcess(
            tmp / "server",
            env={"OTLP_ENDPOINT": backend.grpc_endpoint},
            args=["--config", str(server_config)],
        ) as server,
    ):
        # Normal traffic on every signal, then 2 retryable failures (retried, then delivered),
        # then 2 permanent rejections (counted as send-failed).
        for signal in ("traces", "metrics", "logs"):
            _send(server, signal)
        for signal in ("traces", "metrics", "logs"):
            backend.wait_for_items(signal, 30, timeout=15)
        backend.control(fail_next=2, fail_code="unavailable", retry_after_s=0.05)
        _send(server, "traces", 1)
        backend.wait_for_items("traces", 40, timeout=15)
        backend.control(fail_next=2, fail_code="invalid")
        _send(server, "logs", 1)
        _send(server, "metrics", 1)
        wait_until(
            lambda: (
                server.metrics().has("otlp_exporter_send_failed_log_records_total")
                or server.metrics().has("otlp_exporter_send_failed_metric_points_total")
            ),
            timeout=15,
            what="a permanent backend rejection counted as send-failed",
        )

        port = free_port()
        config = tmp / "prometheus.yml"
        rules = tmp / "alerts.yml"
        shutil.copy(ALERTS, rules)
        config.write_text(
            yaml.safe_dump(
                {
                    "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                    "rule_files": [str(rules)],
                    "scrape_configs": [
                        {
                            "job_name": JOB,
                            "static_configs": [{"targets": [f"127.0.0.1:{server.admin_port}"]}],
                        }
                    ],
                }
            )
        )
        log = open(tmp / "prometheus.log", "wb")  # noqa: SIM115 - closed in the finally below
        proc = subprocess.Popen(
            [
                prometheus_bin,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            wait_until(lambda: _ready(url, proc), timeout=30, what="prometheus /-/ready")
            yield {"server": server, "backend": backend, "prometheus": url}
        finally:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()


def _ready(url: str, proc: subprocess.Popen[bytes]) -> bool:
    assert proc.poll() is None, f"prometheus exited with {proc.returncode}"
    try:
        return requests.get(f"{url}/-/ready", timeout=2).status_code == 200
    except requests.RequestException:
        return False


def _api(url: str, path: str, **params: str) -> Any:
    body = requests.get(f"{url}/api/v1/{path}", params=params, timeout=5).json()
    assert body["status"] == "success", body
    return body["data"]


def test_target_up(stack: dict[str, Any]) -> None:
    url = stack["prometheus"]

    def up() -> bool:
        targets = _api(url, "targets")["activeTargets"]
        return any(t["labels"]["job"] == JOB and t["health"] == "up" for t in targets)

    wait_until(up, timeout=20, interval=0.2, what="the otlp-ingest target to be up")
    result = _api(url, "query", query=f'up{{job="{JOB}"}}')["result"]
    assert [r["value"][1] for r in result] == ["1"]


def test_rules_loaded_and_healthy(stack: dict[str, Any]) -> None:
    url = stack["prometheus"]
    expected = {r.get("alert") or r["record"] for g in yaml.safe_load(ALERTS.read_text())["groups"]
                for r in g["rules"]}  # fmt: skip

    def evaluated() -> list[dict[str, Any]] | None:
        rules = [r for g in _api(url, "rules")["groups"] for r in g["rules"]]
        done = all(r.get("lastEvaluation", "").startswith("20") for r in rules) and rules
        return rules if done and len(rules) >= len(expected) else None

    rules = wait_until(evaluated, timeout=20, interval=0.2, what="every rule evaluated once")
    assert {r["name"] for r in rules} == expected
    unhealthy = [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"]
    assert not unhealthy, unhealthy


def test_recording_rules_produce_series(stack: dict[str, Any]) -> None:
    """The recording rules see the server's counters (names and job label agree end to end)."""
    url = stack["prometheus"]

    def recorded() -> bool:
        _send(stack["server"], "traces", 1)  # keep the counter moving so its rate is above 0
        result = _api(url, "query", query='otlp:receiver_accepted_items:rate5m{signal="traces"}')["result"]
        return bool(result) and float(result[0]["value"][1]) > 0

    wait_until(recorded, timeout=30, interval=0.5, what="otlp:receiver_accepted_items:rate5m > 0")


def test_every_dashboard_metric_is_exported(stack: dict[str, Any]) -> None:
    """Each metric a dashboard query names is in the running server's /metrics (histograms by
    `_bucket`), so no panel is empty for a name that does not exist."""
    server: ServerProcess = stack["server"]
    names = set().union(*(metric_names_in(e) for _, e in dashboard_exprs())) - recorded_names()
    exported = {s.name for s in server.metrics().samples}
    # A rejected batch is counted for the signal that was rejected; the other signals' send-failed
    # series need not exist yet. One of them must.
    failed = {n for n in names if n.startswith("otlp_exporter_send_failed_")}
    assert failed & exported, "no send-failed series after a permanent backend rejection"
    missing = sorted(names - exported - failed)
    assert not missing, f"dashboard metrics absent from /metrics: {missing}"


def test_scripts_against_live_stack(stack: dict[str, Any]) -> None:
    server: ServerProcess = stack["server"]
    health = run([str(ROOT / "scripts/health-check.sh"), "--admin", server.admin_url], timeout=30)
    assert health.returncode == 0, health.stdout + health.stderr
    assert "OK    /ready 200" in health.stdout
    url = stack["prometheus"]
    wait_until(
        lambda: _api(url, "query", query=f'sum(up{{job="{JOB}"}})')["result"],
        timeout=20,
        what="up series",
    )
    perf = run(
        [str(ROOT / "scripts/performance-check.sh"), "--prometheus", url, "--window", "1m",
         "--max-error-ratio", "1", "--max-p95", "30"],
        timeout=30,
    )  # fmt: skip
    assert perf.returncode == 0, perf.stdout + perf.stderr
    assert "targets up: 1" in perf.stdout and "error ratio" in perf.stdout
