"""The SLO verdict of a run (PROTOCOL.md §4), as a pure function of its tally.

The relay holds its service levels when every webhook was answered within
the one-second budget (p99 under it and none over it), no webhook that got a
200 was lost on the way to a bridge, and errors stayed under 0.1 %. All four
limits are configurable; :func:`judge` applies them, one :class:`Check` per
objective (what the HTML report shows), and :meth:`Verdict.to_json` gives
``verdict.json`` exactly as PROTOCOL.md §4 shapes it.
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
class Check:
    """One objective of the verdict: what it asks, what the run showed, and whether it held."""

    objective: str
    limit: str
    observed: str
    passed: bool
    #: Why it failed, in words (``verdict.json``'s ``slo.failures``), for when it did not hold.
    reason: str

    def to_json(self) -> dict[str, Any]:
        """A JSON-able form."""
        return {
            "objective": self.objective,
            "limit": self.limit,
            "observed": self.observed,
            "pass": self.passed,
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
    checks: tuple[Check, ...]

    @property
    def failures(self) -> tuple[str, ...]:
        """Why the run failed, one reason per objective that did not hold."""
        return tuple(c.reason for c in self.checks if not c.passed)

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


def _ms(value: int | None) -> str:
    return "none" if value is None else f"{value} ms"


def judge(tally: Tally, slo: Slo, *, with_bridges: bool) -> Verdict:
    """Judge a finished run's merged ``tally``; delivery counts only ``with_bridges``."""
    accepted = tally.accepted
    ack_p99 = tally.ack.percentile(99)
    over_budget = tally.ack.count_over(slo.budget_ms)
    error_rate = tally.errors / tally.requests if tally.requests else 0.0
    delivered: int | None = None
    lost: int | None = None
    e2e_p99: int | None = None

    sent = Check(
        "webhooks accepted",
        "at least one",
        f"{accepted} of {tally.requests} sent",
        accepted > 0,
        "no webhook was sent" if tally.requests == 0 else "no webhook was accepted",
    )
    checks = [
        sent,
        Check(
            "ack p99",
            f"below {slo.ack_p99_ms:g} ms",
            _ms(ack_p99),
            ack_p99 is None or ack_p99 < slo.ack_p99_ms,
            f"ack p99 {ack_p99} ms is not below {slo.ack_p99_ms:g} ms",
        ),
        Check(
            "answers over budget",
            f"at most {slo.max_over_budget} over {slo.budget_ms:g} ms",
            str(over_budget),
            over_budget <= slo.max_over_budget,
            f"{over_budget} answers took longer than {slo.budget_ms:g} ms "
            f"(at most {slo.max_over_budget} allowed)",
        ),
        Check(
            "error rate",
            f"below {slo.max_error_rate:.4%}",
            f"{error_rate:.4%} ({tally.errors} of {tally.requests})",
            not tally.requests or error_rate < slo.max_error_rate,
            f"error rate {error_rate:.4%} is not below {slo.max_error_rate:.4%} "
            f"({tally.errors} of {tally.requests} requests)",
        ),
    ]
    if with_bridges:
        delivered = tally.matched
        lost = tally.pending
        e2e_p99 = tally.e2e.percentile(99)
        checks.append(
            Check(
                "accepted webhooks lost",
                f"at most {slo.max_lost}",
                f"{lost} ({delivered} of {accepted} delivered)",
                lost <= slo.max_lost,
                f"{lost} accepted webhooks never reached a bridge (at most {slo.max_lost} allowed)",
            )
        )
    return Verdict(
        passed=all(c.passed for c in checks),
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
        checks=tuple(checks),
    )
