"""Regenerate deploy/k8s/base/prometheusrule.yaml and the Helm chart's files/alerts.yml from
deploy/prometheus/alerts.yml, and the chart's files/auth-tokens from the production overlay's
placeholder tokens file.

The rules have one source, alerts.yml (promtool-tested); the PrometheusRule carries the same groups
for clusters with the Prometheus Operator. The chart keeps verbatim copies because Helm's
`.Files.Get` reads only files inside the chart: the rules, and the placeholder it puts into the
tokens Secret when auth.enabled has neither auth.tokens nor auth.existingSecret (so the chart's
production render equals the kustomize overlay's). `test_k8s.py` and `test_helm.py` fail when any
differs.

    .venv/bin/python -m tests.deploy.sync_prometheusrule
"""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy/prometheus/alerts.yml"
TARGET = ROOT / "deploy/k8s/base/prometheusrule.yaml"
CHART_ALERTS = ROOT / "deploy/helm/otlp-ingest/files/alerts.yml"
AUTH_TOKENS = ROOT / "deploy/k8s/overlays/production/auth-tokens"
CHART_AUTH_TOKENS = ROOT / "deploy/helm/otlp-ingest/files/auth-tokens"
# The chart's byte-for-byte copies: source -> copy.
CHART_COPIES = {RULES: CHART_ALERTS, AUTH_TOKENS: CHART_AUTH_TOKENS}

HEADER = """\
# GENERATED from deploy/prometheus/alerts.yml by `python -m tests.deploy.sync_prometheusrule`;
# edit alerts.yml (it has the comments and the promtool unit tests), then regenerate.
"""


class _Dumper(yaml.SafeDumper):
    """Block style, indented sequences (yamllint's default); multi-line PromQL as `|` literals."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        super().increase_indent(flow, False)


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def render() -> str:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    obj = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "otlp-ingest"},
        "spec": {"groups": groups},
    }
    return HEADER + yaml.dump(obj, Dumper=_Dumper, sort_keys=False, width=200, default_flow_style=False)


if __name__ == "__main__":
    TARGET.write_text(render())
    for source, copy in CHART_COPIES.items():
        copy.write_bytes(source.read_bytes())
    for path in (TARGET, *CHART_COPIES.values()):
        print(f"wrote {path.relative_to(ROOT)}")
