"""Alert rules and dashboard: promtool checks, promtool unit tests, every dashboard query parsed."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from tests.deploy.tools import (
    ALERTS,
    ALERTS_TEST,
    DASHBOARD,
    ROOT,
    dashboard_exprs,
    grafana_to_promql,
    run,
    tool,
)

REQUIRED_ALERTS = {
    "OtlpIngestDown",  # collector down
    "OtlpIngestHighExportFailureRatio",
    "OtlpIngestRefusingData",
    "OtlpIngestQueueNearlyFull",  # queue above 80% of capacity
    "OtlpIngestNoDataReceived",
    "OtlpIngestExportLatencyHigh",  # export p99
    "OtlpIngestRestarting",
    "OtlpIngestMemoryLimited",  # refusing at the memory limit
    "OtlpIngestQueueQuarantined",  # durable queue corruption: data moved aside
    "OtlpIngestQueueTruncated",  # durable queue: torn tail cut after an unclean stop
    "OtlpIngestProcessorFailing",  # a processor's calls keep failing (items dropped or sent unprocessed)
}


def _alerts() -> list[dict]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [r for g in groups for r in g["rules"] if "alert" in r]


def test_promtool_check_rules() -> None:
    proc = run([tool("promtool"), "check", "rules", str(ALERTS)])
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_promtool_test_rules() -> None:
    proc = run([tool("promtool"), "test", "rules", str(ALERTS_TEST)], cwd=ALERTS_TEST.parent)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout + proc.stderr


def test_every_alert_has_a_firing_and_a_quiet_unit_test() -> None:
    tests = yaml.safe_load(ALERTS_TEST.read_text())["tests"]
    fired: set[str] = set()
    quiet: set[str] = set()
    for case in tests:
        for check in case.get("alert_rule_test", []):
            (fired if check["exp_alerts"] else quiet).add(check["alertname"])
    names = {a["alert"] for a in _alerts()}
    assert names >= REQUIRED_ALERTS
    assert fired == names, f"alerts never shown firing: {names - fired}"
    # The quiet case is either an explicit empty expectation or a healthy series in the same test
    # (promtool fails on any unexpected alert, so co-located healthy series must stay quiet).
    healthy_series_cases = {"OtlpIngestDown", "OtlpIngestProcessDown", "OtlpIngestQueueNearlyFull",
                            "OtlpIngestRestarting"}  # fmt: skip
    assert quiet | healthy_series_cases >= names


def test_alerts_are_documented() -> None:
    guide = (ROOT / "docs/operations.md").read_text()
    for rule in _alerts():
        assert rule["labels"]["severity"] in {"critical", "warning"}
        assert rule["annotations"]["summary"]
        anchor = rule["annotations"]["runbook"].split("#", 1)[1]
        assert f"### {rule['alert']}" in guide and anchor == rule["alert"].lower()


def test_dashboard_queries_parse_with_promtool(tmp_path: Path) -> None:
    """Each panel query, as a recording rule, must pass `promtool check rules` (PromQL parse)."""
    exprs = dashboard_exprs()
    assert len(exprs) >= 20
    rules = [{"record": f"dashboard:q{i}", "expr": grafana_to_promql(e)} for i, (_, e) in enumerate(exprs)]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    proc = run([tool("promtool"), "check", "rules", str(path)])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(rules)} rules found" in proc.stdout


def test_dashboard_has_required_panels() -> None:
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] == "otlp-ingest"
    exprs = " ".join(e for _, e in dashboard_exprs())
    for needle in (
        "otlp_receiver_accepted_spans_total",  # received per signal
        "otlp_exporter_sent_log_records_total",  # sent per signal
        "histogram_quantile(0.99, sum by (le) (rate(otlp_receiver_request_duration_seconds_bucket",  # ack
        "histogram_quantile(0.5, sum by (le) (rate(otlp_export_duration_seconds_bucket",  # export
        "otlp_exporter_send_failed_metric_points_total",  # error ratio
        "otlp_receiver_refused_spans_total",  # refusal ratio
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        'otlp_exporter_queue_size{job="otlp-ingest"} / otlp_exporter_queue_capacity',  # queue fill
        "otlp_memory_usage_bytes",  # memory vs soft/hard limit
        "otlp_memory_soft_limit_bytes",
        "otlp_memory_limit_bytes",
        "otlp_exporter_queue_capacity_bytes",  # queue bytes vs capacity
        "sum by (reason) (rate(otlp_exporter_send_failed_spans_total",  # drops by reason
        "sum by (processor, signal) (rate(otlp_processor_incoming_items_total",  # processors: in
        "sum by (processor, signal) (rate(otlp_processor_outgoing_items_total",  # out
        "sum by (processor, signal, reason) (rate(otlp_processor_dropped_items_total",  # dropped by reason
        "sum by (processor, signal, reason) (rate(otlp_processor_errors_total",  # failed calls by reason
    ):
        assert needle in exprs, needle
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dash["panels"]:
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == "prometheus"


def test_grafana_provisioning_points_at_the_dashboard() -> None:
    ds = yaml.safe_load((ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text())
    assert ds["datasources"][0]["uid"] == "prometheus"
    prov = yaml.safe_load((ROOT / "deploy/grafana/provisioning/dashboards/otlp-ingest.yml").read_text())
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    mounts = compose["services"]["grafana"]["volumes"]
    path = prov["providers"][0]["options"]["path"]
    assert f"./deploy/grafana/dashboards:{path}:ro" in mounts
