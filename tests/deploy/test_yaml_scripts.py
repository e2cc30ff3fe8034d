"""yamllint on every YAML file of the kit; shellcheck, --help and clear failures for the scripts."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.deploy.tools import DEPLOY, ROOT, SCRIPTS, run, tool
from tests.support.waiting import free_port

YAML_FILES = [ROOT / "docker-compose.yml", *sorted(DEPLOY.rglob("*.yml")), *sorted(DEPLOY.rglob("*.yaml"))]
SCRIPT_IDS = [p.name for p in SCRIPTS]


def test_yamllint() -> None:
    config = str(DEPLOY / "yamllint.yml")
    proc = run([tool("yamllint"), "-c", config, "-f", "parsable", *map(str, YAML_FILES)])
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_shellcheck() -> None:
    assert {p.name for p in SCRIPTS} >= {
        "health-check.sh",
        "performance-check.sh",
        "daily-check.sh",
        "install-test-tools.sh",
    }
    proc = run([tool("shellcheck"), "--severity=style", *map(str, SCRIPTS)])
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("script", SCRIPTS, ids=SCRIPT_IDS)
def test_help_exits_zero(script: Path) -> None:
    assert os.access(script, os.X_OK), f"{script.name} is not executable"
    proc = run([str(script), "--help"], timeout=20)
    assert proc.returncode == 0, proc.stderr
    assert "Usage:" in proc.stdout


@pytest.mark.parametrize("script", SCRIPTS, ids=SCRIPT_IDS)
def test_unknown_argument_is_a_usage_error(script: Path) -> None:
    proc = run([str(script), "--no-such-flag"], timeout=20)
    assert proc.returncode == 2
    assert "unknown argument: --no-such-flag" in proc.stderr


def _dead_url() -> str:
    """A localhost URL nothing listens on: bind an ephemeral port, then close it."""
    return f"http://127.0.0.1:{free_port()}"


@pytest.mark.parametrize(
    ("script", "args", "message"),
    [
        ("health-check.sh", ["--admin"], "health-check: cannot reach"),
        ("performance-check.sh", ["--prometheus"], "performance-check: cannot reach Prometheus"),
        ("daily-check.sh", ["--admin", "none", "--prometheus"], "daily-check: cannot reach Prometheus"),
    ],
)
def test_unreachable_endpoint_fails_clearly(script: str, args: list[str], message: str) -> None:
    url = _dead_url()
    timeout_flag = [] if script == "daily-check.sh" else ["--timeout", "2"]
    proc = run([str(ROOT / "scripts" / script), *args, url, *timeout_flag], timeout=30)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert message in proc.stderr and url in proc.stderr, proc.stderr


@pytest.mark.parametrize(
    ("script", "needs"),
    [("health-check.sh", "curl"), ("performance-check.sh", "jq"), ("daily-check.sh", "jq")],
)
def test_missing_tool_fails_clearly(script: str, needs: str, tmp_path: Path) -> None:
    """With a PATH that lacks the tool, the script names it and exits 2."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("bash", "curl", "jq", "awk", "dirname", "basename", "cat", "id"):
        found = shutil.which(name)
        if found and name != needs:
            (bin_dir / name).symlink_to(found)
    env = {"PATH": str(bin_dir), "HOME": str(tmp_path)}
    proc = run([str(bin_dir / "bash"), str(ROOT / "scripts" / script)], env=env, timeout=20)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"required tool '{needs}' not found" in proc.stderr
