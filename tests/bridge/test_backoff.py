"""The reconnect schedule: bounds, growth, jitter, reset and the rejected-token cap."""

from __future__ import annotations

import pytest

from bridge.backoff import Backoff


def test_delays_double_from_the_minimum_to_the_cap() -> None:
    backoff = Backoff(5, 60, rand=lambda: 0.0)
    assert [backoff.next_delay() for _ in range(6)] == [5, 10, 20, 40, 60, 60]


def test_jitter_stays_within_minimum_and_cap() -> None:
    for value in (0.0, 0.5, 0.999):
        backoff = Backoff(5, 60, rand=lambda value=value: value)
        delays = [backoff.next_delay() for _ in range(40)]
        assert all(5 <= d <= 60 for d in delays)


def test_jitter_spreads_first_delays() -> None:
    low = Backoff(5, 60, rand=lambda: 0.0).next_delay()
    high = Backoff(5, 60, rand=lambda: 0.99).next_delay()
    assert low == 5
    assert 7 < high <= 7.5


def test_hello_resets_to_the_minimum() -> None:
    backoff = Backoff(5, 60, rand=lambda: 0.0)
    for _ in range(5):
        backoff.next_delay()
    backoff.reset()
    assert backoff.next_delay() == 5


def test_rejected_token_waits_the_cap() -> None:
    backoff = Backoff(5, 60, rand=lambda: 0.0)
    assert backoff.at_cap() == 60
    assert backoff.failures == 1


def test_long_outage_does_not_overflow() -> None:
    backoff = Backoff(0.2, 1.0, rand=lambda: 0.5)
    for _ in range(5000):
        assert backoff.next_delay() <= 1.0


def test_bad_bounds_are_refused() -> None:
    with pytest.raises(ValueError, match="minimum"):
        Backoff(0, 1)
    with pytest.raises(ValueError, match="minimum"):
        Backoff(5, 1)
