"""Fuzz tests (hypothesis). `FUZZ` sizes every one of them: a few reproducible examples in the
normal suite, `OTLP_FUZZ_EXAMPLES` per test under `make fuzz`."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

EXAMPLES = int(os.environ.get("OTLP_FUZZ_EXAMPLES", "60"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,  # a noisy 2-core machine must not turn slowness into failures
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=EXAMPLES <= 100,  # the quick run in the normal suite is reproducible
)
