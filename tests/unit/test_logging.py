"""Log line format and the rate limiter used on hot paths."""

from __future__ import annotations

import logging
import os
import re

import pytest

from otlp_ingest.telemetry.logging import RateLimitedLogger, configure_logging


@pytest.fixture
def restore_root_logger():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_line_format(capsys, restore_root_logger):
    configure_logging("info", "worker", 2)
    logging.getLogger("t").info("listening on %s\nsecond line", ":4317")
    logging.getLogger("t").debug("hidden")
    err = [line for line in capsys.readouterr().err.splitlines() if " worker[2] " in line]
    assert len(err) == 1
    ts = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"
    assert re.fullmatch(ts + rf" INFO worker\[2\] {os.getpid()} listening on :4317 \| second line", err[0])


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_rate_limited_logger_counts_suppressed(caplog):
    clock = FakeClock()
    limited = RateLimitedLogger(logging.getLogger("rl"), interval=10.0, clock=clock)
    with caplog.at_level(logging.WARNING, logger="rl"):
        assert limited.warning("full", "ring %s full", "w0") is True
        assert limited.warning("full", "ring %s full", "w0") is False
        assert limited.warning("full", "ring %s full", "w0") is False
        assert limited.warning("other", "send failed") is True  # keys are independent
        clock.now += 10.0
        assert limited.warning("full", "ring %s full", "w0") is True
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        "ring w0 full",
        "send failed",
        "ring w0 full (2 similar suppressed in the last 10s)",
    ]
