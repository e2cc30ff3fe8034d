"""Shared pieces for the micro-benchmarks (`pytest benchmarks --benchmark-only`).

The end-to-end benchmark is not a pytest test: it is `benchmarks/run_e2e.py` (see README.md),
because it runs three process trees and writes its own result files.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from otlp_ingest.loadgen import PayloadFactory, token_for


@pytest.fixture(scope="session")
def otlp_payload() -> Callable[[str, int], bytes]:
    """`otlp_payload(signal_name, items)` -> a serialized Export*ServiceRequest, the same
    realistic payloads the load generator sends (unique ids per call)."""
    counter = iter(range(1 << 62))

    def make(signal_name: str, items: int) -> bytes:
        return PayloadFactory(signal_name, items).build(token_for(b"microbch", next(counter)))

    return make
