"""`capacity`: the sizing arithmetic and the --per-pod path (no server needed)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from otlp_ingest.capacity import main, parse_duration, plan_capacity


@pytest.mark.parametrize(
    ("peak", "per_pod", "safety", "replicas"),
    [
        (10_000, 5_000, 1.5, 3),  # 3.0 exactly: no spurious extra pod from float noise
        (20_000, 2_000, 1.5, 15),
        (3_000, 1_000, 1.5, 5),  # 4.5 -> 5
        (100_000, 30_000, 2.0, 7),  # 6.67 -> 7
        (1, 1_000_000, 1.5, 1),  # never zero
        (12_345, 1_000, 1.0, 13),
    ],
)
def test_replicas_formula(peak: float, per_pod: float, safety: float, replicas: int) -> None:
    plan = plan_capacity(peak, per_pod, safety)
    assert plan.replicas == replicas
    assert f"= {replicas}" in plan.formula()
    assert "ceil(peak / per_pod x safety)" in plan.formula()


def test_hpa_bounds() -> None:
    small = plan_capacity(1_000, 10_000, 1.5)
    assert (small.min_replicas, small.max_replicas) == (3, 3)  # floor of one pod per zone
    big = plan_capacity(200_000, 10_000, 1.5)
    assert (big.min_replicas, big.max_replicas) == (3, 30)
    assert big.target_cpu_percent == 70 and big.target_memory_percent == 80
    custom = plan_capacity(1_000, 10_000, 1.5, min_replicas=2)
    assert custom.min_replicas == 2


@pytest.mark.parametrize(
    ("kwargs", "word"),
    [
        ({"peak": 0, "per_pod": 1}, "--peak"),
        ({"peak": 1, "per_pod": 0}, "--per-pod"),
        ({"peak": 1, "per_pod": 1, "safety": 0.5}, "--safety"),
        ({"peak": 1, "per_pod": 1, "min_replicas": 0}, "--min-replicas"),
    ],
)
def test_bad_inputs_name_the_flag(kwargs: dict, word: str) -> None:
    with pytest.raises(ValueError, match=word):
        plan_capacity(**kwargs)


def test_parse_duration() -> None:
    assert parse_duration("10s") == 10.0
    assert parse_duration("500ms") == 0.5
    assert parse_duration("2m") == 120.0
    assert parse_duration("3") == 3.0


def test_main_per_pod_prints_formula_and_hpa(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--peak", "50000", "--per-pod", "8000", "--safety", "1.5"]) == 0
    out = capsys.readouterr().out
    assert "ceil(50000 / 8000 x 1.5) = ceil(9.375) = 10" in out
    assert "minReplicas: 3" in out and "maxReplicas: 10" in out
    assert "cpu averageUtilization: 70" in out


def test_main_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--peak", "9000", "--per-pod", "1000", "--safety", "2", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["replicas"] == 18 and plan["max_replicas"] == 18 and plan["min_replicas"] == 3


def test_main_rejects_bad_values(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--peak", "100", "--per-pod", "-5"]) == 2
    assert "--per-pod must be > 0" in capsys.readouterr().err


def test_main_needs_per_pod_or_measure() -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--peak", "100"])
    assert exc.value.code == 2


def test_measure_fails_clearly_when_endpoint_unreachable() -> None:
    """--measure against a dead endpoint: non-zero exit and a message, not a hang or traceback."""
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from otlp_ingest.capacity import main; sys.exit(main(sys.argv[1:]))",
            "--peak",
            "100",
            "--measure",
            "--endpoint",
            "127.0.0.1:1",
            "--duration",
            "1s",
            "--concurrency",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    assert "capacity: measurement failed" in proc.stderr, proc.stderr


def test_measure_against_a_running_server(tmp_path: Path) -> None:
    """--measure --endpoint drives a real server with the load generator and sizes from it."""
    from tests.conftest import ServerProcess

    with ServerProcess(tmp_path) as server:
        proc = subprocess.run(
            [sys.executable, "-m", "otlp_ingest", "capacity", "--peak", "1000000", "--measure",
             "--endpoint", server.grpc_endpoint, "--duration", "1s", "--concurrency", "2", "--json"],
            capture_output=True,
            text=True,
            timeout=60,
        )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    plan = json.loads(proc.stdout)
    assert plan["per_pod"] > 0
    assert plan["replicas"] == math.ceil(round(1_000_000 / plan["per_pod"] * 1.5, 9))
    assert "measured on this machine" in plan["measured_on"]
