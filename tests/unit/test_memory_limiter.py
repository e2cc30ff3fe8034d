"""The limiter's state machine: refuse at soft, accept below resume, and never refuse forever
when freed-but-kept memory holds usage in the band between resume and soft."""

from __future__ import annotations

import os

import pytest

from otlp_ingest.telemetry import memory
from otlp_ingest.telemetry.memory import ACCEPT, BAND_HOLD, RECLAIM, REFUSE, MemoryLimiter, MemoryLimits

MiB = 1024 * 1024
LIMITS = MemoryLimits(hard=200 * MiB, soft=160 * MiB)  # resume = 150 MiB


@pytest.fixture
def limiter(monkeypatch: pytest.MonkeyPatch):
    usage = {"now": 0}
    clock = {"now": 0.0}
    monkeypatch.setattr(memory, "tree_usage", lambda pids, rings: usage["now"])
    lim = MemoryLimiter(os.getpid() + 10_000_000, LIMITS, list, list, clock=lambda: clock["now"])

    def at(mib: int, seconds: float = 0.0) -> int:
        usage["now"] = mib * MiB
        clock["now"] += seconds
        lim.sample()
        return lim._state

    yield at
    lim.close()


def test_refuses_at_soft_reclaims_at_hard_accepts_below_resume(limiter) -> None:
    assert limiter(100) == ACCEPT
    assert limiter(155) == ACCEPT  # in the band, coming from below
    assert limiter(160) == REFUSE
    assert limiter(210) == RECLAIM
    assert limiter(155, 0.2) == REFUSE  # hysteresis: still refusing in the band
    assert limiter(149, 0.2) == ACCEPT


def test_usage_stuck_in_the_band_stops_refusing_after_the_hold(limiter) -> None:
    assert limiter(170) == REFUSE
    assert limiter(155, 0.2) == REFUSE
    assert limiter(155, BAND_HOLD / 2) == REFUSE
    assert limiter(155, BAND_HOLD / 2) == ACCEPT
    assert limiter(165, 0.2) == REFUSE  # back above soft: refuse again, and the hold restarts
    assert limiter(155, 0.2) == REFUSE
    assert limiter(155, BAND_HOLD - 0.5) == REFUSE
