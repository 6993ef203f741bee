"""Constant-throughput pacing and the load profiles, as pure functions of time.

Locust users are closed loops; the harness makes them an approximately open
one by giving every webhook user the same fixed throughput
(``constant_throughput``) and choosing the number of users so that
``users x per-user rate`` is the target rate. A profile is then just the
target rate as a function of the time since the start: the load shapes turn
it into a user count, so a spike of ten times the rate is ten times the
users, each still paced at the same per-user rate.

A user can only keep its pace while answers come back faster than
``1 / per_user_rate`` seconds; the default of 5 requests/s per user leaves
200 ms of headroom, and a slower target lowers the rate reached (which the
report shows) rather than piling up requests.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

#: Requests per second one webhook user sends when ``--users`` is not given.
DEFAULT_PER_USER_RATE = 5.0

PROFILES = ("steady", "spike", "soak")

#: The spike profile: steady until 40 % of the run, ten times the rate for the next 20 %.
SPIKE_FACTOR = 10.0
SPIKE_START = 0.4
SPIKE_LENGTH = 0.2


class PacingError(ValueError):
    """A rate, user count or duration that cannot be paced."""


@dataclass(frozen=True, slots=True)
class Pace:
    """The steady rate, the users that send it, and each user's throughput."""

    rate: float
    users: int
    per_user_rate: float


def pace(rate: float, users: int | None = None) -> Pace:
    """Split ``rate`` requests/s over ``users`` webhook users (or enough users at the default)."""
    if not math.isfinite(rate) or rate <= 0:
        raise PacingError("the rate must be a positive number of requests per second")
    if users is None:
        users = max(1, math.ceil(rate / DEFAULT_PER_USER_RATE))
    if users < 1:
        raise PacingError("at least one webhook user is needed")
    return Pace(rate=rate, users=users, per_user_rate=rate / users)


def rate_at(profile: str, t: float, rate: float, duration: float) -> float:
    """The target rate ``t`` seconds into a run of ``profile``; 0 once ``duration`` is over."""
    if profile not in PROFILES:
        raise PacingError(f"unknown profile {profile!r}; choose one of {', '.join(PROFILES)}")
    if t < 0 or t >= duration:
        return 0.0
    if profile == "spike":
        start = duration * SPIKE_START
        if start <= t < start + duration * SPIKE_LENGTH:
            return rate * SPIKE_FACTOR
    return rate


def users_at(profile: str, t: float, steady: Pace, duration: float) -> int:
    """How many webhook users send the profile's rate at time ``t``."""
    target = rate_at(profile, t, steady.rate, duration)
    if target == 0:
        return 0
    return max(1, round(target / steady.per_user_rate))


def drain_done(
    t: float,
    duration: float,
    drain: float,
    pending: int,
    senders: int = 0,
    settle: float = 1.0,
) -> bool:
    """Whether the run may end: the drain period is over, or nothing is left to wait for.

    ``pending`` counts accepted webhooks no bridge has reported yet and
    ``senders`` the webhook users still finishing a request; once both are
    zero (and ``settle`` seconds have passed, so the last counts have come in
    from every worker) the run need not wait out the full drain period.
    """
    if t < duration:
        return False
    if t >= duration + drain:
        return True
    return pending == 0 and senders == 0 and t >= duration + settle
