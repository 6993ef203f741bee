"""Constant-throughput pacing and the profiles' rate over time."""

from __future__ import annotations

import pytest

from loadtest.pacing import (
    DEFAULT_PER_USER_RATE,
    PacingError,
    drain_done,
    pace,
    rate_at,
    users_at,
)


def test_pace_splits_the_rate_over_the_given_users() -> None:
    p = pace(120, 40)
    assert p.users == 40
    assert p.per_user_rate == pytest.approx(3.0)


def test_pace_picks_enough_users_for_the_default_per_user_rate() -> None:
    p = pace(1500)
    assert p.users == 1500 / DEFAULT_PER_USER_RATE
    assert p.users * p.per_user_rate == pytest.approx(1500)
    assert pace(0.5).users == 1


@pytest.mark.parametrize(("rate", "users"), [(0, None), (-5, None), (float("nan"), None), (10, 0)])
def test_pace_refuses_unpaceable_input(rate: float, users: int | None) -> None:
    with pytest.raises(PacingError):
        pace(rate, users)


def test_steady_holds_the_rate_until_the_duration_ends() -> None:
    assert [rate_at("steady", t, 100, 10) for t in (0, 5, 9.9, 10, 11)] == [100, 100, 100, 0, 0]


def test_spike_bursts_to_ten_times_the_rate_in_the_middle() -> None:
    rates = [rate_at("spike", t, 50, 100) for t in range(100)]
    assert rates[:40] == [50] * 40
    assert rates[40:60] == [500] * 20
    assert rates[60:] == [50] * 40


def test_spike_users_scale_with_the_rate_at_the_same_per_user_pace() -> None:
    steady = pace(20, 4)
    assert users_at("spike", 1, steady, 10) == 4
    assert users_at("spike", 5, steady, 10) == 40
    assert users_at("spike", 10, steady, 10) == 0


def test_unknown_profile_is_refused() -> None:
    with pytest.raises(PacingError, match="unknown profile"):
        rate_at("ramp", 1, 10, 10)


def test_drain_ends_early_only_once_nothing_is_pending() -> None:
    assert not drain_done(5, 10, 30, pending=0)
    assert not drain_done(12, 10, 30, pending=3)
    assert drain_done(12, 10, 30, pending=0)
    assert not drain_done(10.5, 10, 30, pending=0)
    assert drain_done(40, 10, 30, pending=3)


def test_drain_waits_for_senders_still_finishing_a_request() -> None:
    assert not drain_done(12, 10, 30, pending=0, senders=2)
    assert drain_done(40, 10, 30, pending=0, senders=2)
