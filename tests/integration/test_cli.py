"""The command line as a user runs it: `python -m otlp_ingest ...` in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def run(
    args: list[str], env: dict[str, str] | None = None, timeout: float = 30.0
) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("OTLP_", "OTEL_"))}
    clean["PYTHONPATH"] = str(REPO_ROOT)
    clean.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "otlp_ingest", *args],
        env=clean,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO_ROOT,
    )


def test_version():
    result = run(["version"])
    assert result.returncode == 0
    assert result.stdout.startswith("otlp-ingest ")


def test_unknown_command_exits_2():
    result = run(["frobnicate"])
    assert result.returncode == 2
    assert "unknown command 'frobnicate'" in result.stderr


def test_check_config_prints_values_and_sources(tmp_path):
    conf = tmp_path / "c.yaml"
    conf.write_text("queue_size: 123\n")
    result = run(
        ["check-config", "--config", str(conf), "--batch-size", "9"],
        env={"OTLP_BATCH_TIMEOUT": "250ms"},
    )
    assert result.returncode == 0, result.stderr
    lines = {line.split()[0]: line for line in result.stdout.splitlines()}
    assert "9" in lines["batch_size"] and "(--batch-size;" in lines["batch_size"]
    assert "0.25" in lines["batch_timeout"] and "(OTLP_BATCH_TIMEOUT;" in lines["batch_timeout"]
    assert "123" in lines["queue_size"] and f"({conf}:queue_size;" in lines["queue_size"]
    assert "(default;" in lines["exporters"]


def test_check_config_bad_env_and_file_names_each(tmp_path):
    conf = tmp_path / "c.toml"
    conf.write_text('queue_bytes = "huge"\nlog_level = "loud"\n')
    result = run(
        ["check-config", "--config", str(conf), "--admin-port", "70000"],
        env={"OTLP_BATCH_SIZE": "abc", "OTLP_EXPORT_PROTOCOL": "udp"},
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 5, result.stderr
    joined = "\n".join(lines)
    assert "OTLP_BATCH_SIZE=abc: not an integer" in joined
    assert "OTLP_EXPORT_PROTOCOL=udp: not allowed (expected one of grpc, http/protobuf)" in joined
    assert f"{conf}:queue_bytes=huge: not a size" in joined
    assert f"{conf}:log_level=loud: not allowed" in joined
    assert "--admin-port=70000: out of range" in joined
    assert result.stdout == ""


def test_serve_refuses_bad_settings_without_starting(tmp_path):
    started = time.monotonic()
    result = run(["serve"], env={"OTLP_SHUTDOWN_TIMEOUT": "soon", "OTLP_DATA_DIR": str(tmp_path)})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "otlp-ingest: invalid setting: OTLP_SHUTDOWN_TIMEOUT=soon: not a duration "
        "(expected e.g. 200ms, 5s, 1m, 1h or seconds)"
    ]
    assert time.monotonic() - started < 10


def test_loadgen_and_capacity_are_wired():
    for command in ("loadgen", "capacity"):
        result = run([command, "--help"])
        assert result.returncode == 0, (command, result.stderr)
        assert "usage" in result.stdout.lower()
