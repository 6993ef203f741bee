"""Fixtures shared across the suite."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.relay import RelayProcess

#: Real LINE bodies; ../shared sits beside the checkout, here and in CI.
FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "line-webhooks"


@pytest.fixture
def relay(tmp_path: Path) -> Iterator[RelayProcess]:
    """A started relay on its embedded default, in a fresh state dir."""
    process = RelayProcess(tmp_path / "state").start()
    try:
        yield process
    finally:
        process.stop()
