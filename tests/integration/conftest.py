"""Fixtures shared by the integration tests that drive an exporter over rings they fill."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration._exporter_harness import Rings


@pytest.fixture
def rings() -> Iterator[Rings]:
    """Rings this test owns, unlinked at teardown."""
    r = Rings()
    yield r
    r.close()
