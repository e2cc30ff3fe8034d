"""The memory limiter (otlp_ingest/telemetry/memory.py): the limit derivation from cgroup files,
and a server without a limit. The overload scenario (real clients pushing the server past its
limit, every acked item delivered) is in the fault suite: tests/faults/test_memory.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from otlp_ingest.telemetry.memory import MemoryLimits, MiB, cgroup_memory_limit, resolve_limits

# --- limit derivation (unit) ------------------------------------------------------------------


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_cgroup_v2_limit_of_our_group(tmp_path: Path) -> None:
    _write(tmp_path / "proc", "0::/kubepods/pod1/ctr\n")
    _write(tmp_path / "cg/kubepods/pod1/ctr/memory.max", "536870912\n")
    _write(tmp_path / "cg/memory.max", "max\n")
    assert cgroup_memory_limit(str(tmp_path / "cg"), str(tmp_path / "proc")) == 512 * MiB


def test_cgroup_v2_namespace_root_and_max(tmp_path: Path) -> None:
    _write(tmp_path / "proc", "0::/\n")
    _write(tmp_path / "cg/memory.max", "1073741824\n")
    assert cgroup_memory_limit(str(tmp_path / "cg"), str(tmp_path / "proc")) == 1024 * MiB
    _write(tmp_path / "cg/memory.max", "max\n")
    assert cgroup_memory_limit(str(tmp_path / "cg"), str(tmp_path / "proc")) is None


def test_cgroup_v1_limit_and_unlimited(tmp_path: Path) -> None:
    _write(tmp_path / "proc", "4:memory:/docker/abc\n3:cpu,cpuacct:/docker/abc\n")
    _write(tmp_path / "cg/memory/docker/abc/memory.limit_in_bytes", str(256 * MiB))
    assert cgroup_memory_limit(str(tmp_path / "cg"), str(tmp_path / "proc")) == 256 * MiB
    _write(tmp_path / "cg/memory/docker/abc/memory.limit_in_bytes", "9223372036854771712")
    assert cgroup_memory_limit(str(tmp_path / "cg"), str(tmp_path / "proc")) is None


def test_no_cgroup_files_is_no_limit(tmp_path: Path) -> None:
    assert cgroup_memory_limit(str(tmp_path / "none"), str(tmp_path / "none")) is None


def test_resolve_limits() -> None:
    # Explicit limit, default spike = 20%.
    assert resolve_limits(1000, 0, lambda: None) == MemoryLimits(hard=1000 * MiB, soft=800 * MiB)
    assert resolve_limits(1000, 100, lambda: None) == MemoryLimits(hard=1000 * MiB, soft=900 * MiB)
    # Derived: 80% of the cgroup limit, soft 80% of that.
    assert resolve_limits(0, 0, lambda: 1000 * MiB) == MemoryLimits(hard=800 * MiB, soft=640 * MiB)
    assert resolve_limits(0, 0, lambda: None) is None
    # A spike as big as the limit would refuse everything: capped at half.
    assert resolve_limits(100, 200, lambda: None) == MemoryLimits(hard=100 * MiB, soft=50 * MiB)
    assert MemoryLimits(hard=1000 * MiB, soft=800 * MiB).resume == 750 * MiB


# --- the server ----------------------------------------------------------------------------
# Overload past the limit under real load: tests/faults/test_memory.py (the fault suite).


@pytest.mark.parametrize("limit", ["0"])
def test_no_cgroup_limit_means_no_limiter(server_factory, limit: str) -> None:
    """Without a cgroup limit and with OTLP_MEMORY_LIMIT_MIB=0 the limiter is off (gauges 0)."""
    if cgroup_memory_limit() is not None:
        pytest.skip("this machine has a cgroup memory limit")
    server = server_factory(env={"OTLP_MEMORY_LIMIT_MIB": limit})
    m = server.metrics()
    assert m.value("otlp_memory_limit_bytes") == 0
    assert m.value("otlp_memory_refusing") == 0
