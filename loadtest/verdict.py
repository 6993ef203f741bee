"""The SLO verdict of a run (PROTOCOL.md §4), as a pure function of its tally.

The relay holds its service levels when every webhook was answered within
the one-second budget (p99 under it and none over it), no webhook that got a
200 was lost on the way to a bridge, and errors stayed under 0.1 %. All four
limits are configurable; :func:`judge` applies them and :meth:`Verdict.to_json`
gives ``verdict.json`` exactly as PROTOCOL.md §4 shapes it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from loadtest.tally import Tally


@dataclass(frozen=True, slots=True)
class Slo:
    """Service-level objectives a run is judged against."""

    #: The acknowledgement budget: an answer slower than this is over budget.
    budget_ms: float = 1000.0
    #: The 99th percentile of acknowledgement times must be below this.
    ack_p99_ms: float = 1000.0
    #: At most this many answers may be over budget.
    max_over_budget: int = 0
    #: At most this many accepted webhooks may never reach a bridge.
    max_lost: int = 0
    #: The share of requests that may fail (non-200 answer or no answer), strictly below.
    max_error_rate: float = 0.001

    def to_json(self) -> dict[str, Any]:
        """The thresholds as ``verdict.json``'s ``slo`` object holds them."""
        return {
            "budget_ms": self.budget_ms,
            "ack_p99_ms_below": self.ack_p99_ms,
            "over_budget_max": self.max_over_budget,
            "lost_max": self.max_lost,
            "error_rate_below": self.max_error_rate,
        }


@dataclass(frozen=True, slots=True)
class Verdict:
    """The outcome of a run against its SLO, with the reasons it failed."""

    passed: bool
    requests: int
    accepted: int
    delivered: int | None
    lost: int | None
    ack_p50_ms: int | None
    ack_p99_ms: int | None
    over_budget: int
    e2e_p99_ms: int | None
    error_rate: float
    slo: Slo
    failures: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        """``verdict.json``: the PROTOCOL.md §4 keys; the SLO, observed figures and reasons in ``slo``."""
        slo = self.slo.to_json()
        slo["requests"] = self.requests
        slo["error_rate"] = self.error_rate
        slo["ack_p50_ms"] = self.ack_p50_ms
        slo["failures"] = list(self.failures)
        return {
            "pass": self.passed,
            "accepted": self.accepted,
            "delivered": self.delivered,
            "lost": self.lost,
            "ack_p99_ms": self.ack_p99_ms,
            "over_budget": self.over_budget,
            "e2e_p99_ms": self.e2e_p99_ms,
            "slo": slo,
        }


def judge(tally: Tally, slo: Slo, *, with_bridges: bool) -> Verdict:
    """Judge a finished run's merged ``tally``; delivery counts only ``with_bridges``."""
    failures: list[str] = []
    accepted = tally.accepted
    ack_p99 = tally.ack.percentile(99)
    over_budget = tally.ack.count_over(slo.budget_ms)
    error_rate = tally.errors / tally.requests if tally.requests else 0.0
    delivered: int | None = None
    lost: int | None = None
    e2e_p99: int | None = None

    if tally.requests == 0:
        failures.append("no webhook was sent")
    elif accepted == 0:
        failures.append("no webhook was accepted")
    if ack_p99 is not None and ack_p99 >= slo.ack_p99_ms:
        failures.append(f"ack p99 {ack_p99} ms is not below {slo.ack_p99_ms:g} ms")
    if over_budget > slo.max_over_budget:
        failures.append(
            f"{over_budget} answers took longer than {slo.budget_ms:g} ms "
            f"(at most {slo.max_over_budget} allowed)"
        )
    if tally.requests and error_rate >= slo.max_error_rate:
        failures.append(
            f"error rate {error_rate:.4%} is not below {slo.max_error_rate:.4%} "
            f"({tally.errors} of {tally.requests} requests)"
        )
    if with_bridges:
        delivered = tally.matched
        lost = tally.pending
        e2e_p99 = tally.e2e.percentile(99)
        if lost > slo.max_lost:
            failures.append(
                f"{lost} accepted webhooks never reached a bridge (at most {slo.max_lost} allowed)"
            )
    return Verdict(
        passed=not failures,
        requests=tally.requests,
        accepted=accepted,
        delivered=delivered,
        lost=lost,
        ack_p50_ms=tally.ack.percentile(50),
        ack_p99_ms=ack_p99,
        over_budget=over_budget,
        e2e_p99_ms=e2e_p99,
        error_rate=error_rate,
        slo=slo,
        failures=tuple(failures),
    )
