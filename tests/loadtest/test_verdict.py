"""The verdict applies each SLO and writes PROTOCOL.md §4's verdict.json."""

from __future__ import annotations

from loadtest.tally import Tally
from loadtest.verdict import Slo, judge

KEYS = {"pass", "accepted", "delivered", "lost", "ack_p99_ms", "over_budget", "e2e_p99_ms", "slo"}


def tally(n: int = 1000, ms: float = 20, delivered: int | None = None) -> Tally:
    t = Tally()
    for i in range(n):
        t.answered(200, ms, f"m{i}")
    for i in range(n if delivered is None else delivered):
        t.delivered_one(f"m{i}", 50)
    return t


def test_a_clean_run_passes_with_every_protocol_key() -> None:
    v = judge(tally(), Slo(), with_bridges=True)
    doc = v.to_json()
    assert set(doc) == KEYS
    assert doc["pass"] is True
    assert doc["accepted"] == doc["delivered"] == 1000
    assert doc["lost"] == 0
    assert doc["ack_p99_ms"] == 20
    assert doc["e2e_p99_ms"] == 50
    assert doc["slo"]["failures"] == []


def test_without_bridges_delivery_figures_are_null() -> None:
    doc = judge(tally(delivered=0), Slo(), with_bridges=False).to_json()
    assert doc["pass"] is True
    assert doc["delivered"] is None
    assert doc["lost"] is None
    assert doc["e2e_p99_ms"] is None


def test_one_lost_webhook_fails_the_default_slo() -> None:
    v = judge(tally(delivered=999), Slo(), with_bridges=True)
    assert not v.passed
    assert v.lost == 1
    assert "never reached a bridge" in v.failures[0]


def test_one_answer_over_budget_fails_even_with_a_good_p99() -> None:
    t = tally()
    t.answered(200, 1001, "late")
    t.delivered_one("late", 1)
    v = judge(t, Slo(), with_bridges=True)
    assert v.ack_p99_ms == 20
    assert v.over_budget == 1
    assert not v.passed


def test_a_p99_at_the_limit_fails() -> None:
    v = judge(tally(ms=1000), Slo(), with_bridges=False)
    assert v.over_budget == 0
    assert not v.passed
    assert "p99" in v.failures[0]


def test_error_rate_must_stay_below_the_limit() -> None:
    t = tally(n=999)
    t.answered(503, 5, "x")
    assert not judge(t, Slo(), with_bridges=False).passed
    assert judge(t, Slo(max_error_rate=0.01), with_bridges=False).passed


def test_thresholds_are_configurable() -> None:
    t = tally(delivered=998)
    t.answered(200, 1500, "slow")
    relaxed = Slo(max_lost=3, max_over_budget=1, budget_ms=1000, ack_p99_ms=2000)
    assert judge(t, relaxed, with_bridges=True).passed
    assert judge(t, relaxed, with_bridges=True).to_json()["slo"]["lost_max"] == 3


def test_a_run_that_sent_or_accepted_nothing_fails() -> None:
    assert judge(Tally(), Slo(), with_bridges=False).failures == ("no webhook was sent",)
    t = Tally()
    t.answered(401, 3, "x")
    assert "no webhook was accepted" in judge(t, Slo(), with_bridges=False).failures


def test_each_objective_is_a_check_with_its_limit_and_what_was_observed() -> None:
    t = tally(delivered=998)
    t.answered(200, 1500, "slow")
    v = judge(t, Slo(), with_bridges=True)
    checks = {c.objective: c for c in v.checks}
    assert set(checks) == {
        "webhooks accepted",
        "ack p99",
        "answers over budget",
        "error rate",
        "accepted webhooks lost",
    }
    assert checks["answers over budget"].passed is False
    assert checks["answers over budget"].observed == "1"
    assert checks["accepted webhooks lost"].observed == "3 (998 of 1001 delivered)"
    assert checks["ack p99"].passed is True
    assert checks["ack p99"].limit == "below 1000 ms"
    assert list(v.failures) == [c.reason for c in v.checks if not c.passed]
    assert len(v.failures) == 2


def test_without_bridges_there_is_no_loss_objective() -> None:
    objectives = [c.objective for c in judge(tally(), Slo(), with_bridges=False).checks]
    assert "accepted webhooks lost" not in objectives
