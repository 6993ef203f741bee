"""Fixtures shared across the suite."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from tests.support.relay import STARTED, RelayProcess

# Property tests (hypothesis): the profile comes from $HYPOTHESIS_PROFILE, "ci"
# by default (the whole set well under a minute on two cores); "fuzz" runs each
# property fifty times longer (tests/support/properties.py scales them).
settings.register_profile("ci", deadline=None, print_blob=True)
settings.register_profile(
    "fuzz", deadline=None, print_blob=True, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

#: Real LINE bodies; ../shared sits beside the checkout, here and in CI.
FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "line-webhooks"


@pytest.fixture(scope="session", autouse=True)
def relay_logs_hold_no_unexpected_errors() -> Iterator[None]:
    """After the run: no relay wrote an error-level line that no test provoked on purpose,
    or a line that is not JSON. Ordinary internet noise (probes, attacks, bad input)
    must not page an operator (issue 9, finding 6)."""
    yield
    problems = {str(r.log_file): r.log_problems()[:5] for r in STARTED}
    problems = {log: lines for log, lines in problems.items() if lines}
    assert not problems, "unexpected error-level or non-JSON relay log lines:\n" + "\n".join(
        f"{log}:\n  " + "\n  ".join(lines) for log, lines in problems.items()
    )


@pytest.fixture
def relay(tmp_path: Path) -> Iterator[RelayProcess]:
    """A started relay on its embedded default, in a fresh state dir."""
    process = RelayProcess(tmp_path / "state").start()
    try:
        yield process
    finally:
        process.stop()
