"""The verdict fails, with exit status 1, against targets that break the SLO."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

Run = Callable[[list[str]], int]


def test_slow_target_fails_the_verdict_and_counts_over_budget_answers(
    slow_target: str, run_loadtest: Run, tmp_path: Path
) -> None:
    report = tmp_path / "report"
    status = run_loadtest(
        [
            "--target",
            slow_target,
            "--tenant",
            "shop-1",
            "--channel-secret",
            "s3cret",
            "--rate",
            "4",
            "--users",
            "8",
            "--duration",
            "3",
            "--drain",
            "0",
            "--report",
            str(report),
        ]
    )
    verdict = json.loads((report / "verdict.json").read_text())
    assert status == 1
    assert verdict["pass"] is False
    assert verdict["accepted"] > 0
    assert verdict["over_budget"] == verdict["accepted"]
    assert verdict["ack_p99_ms"] > 1000
    assert verdict["delivered"] is None
    assert verdict["lost"] is None
    assert verdict["e2e_p99_ms"] is None
    assert any("longer than 1000 ms" in reason for reason in verdict["slo"]["failures"])


def test_target_that_relays_nothing_fails_the_verdict_and_counts_the_loss(
    blackhole_target: str, run_loadtest: Run, tmp_path: Path
) -> None:
    report = tmp_path / "report"
    status = run_loadtest(
        [
            "--target",
            blackhole_target,
            "--tenant",
            "shop-1",
            "--channel-secret",
            "s3cret",
            "--bridge-token",
            "tok",
            "--rate",
            "10",
            "--duration",
            "3",
            "--drain",
            "2",
            "--report",
            str(report),
        ]
    )
    verdict = json.loads((report / "verdict.json").read_text())
    assert status == 1
    assert verdict["pass"] is False
    assert verdict["accepted"] > 0
    assert verdict["delivered"] == 0
    assert verdict["lost"] == verdict["accepted"]
    assert any("never reached a bridge" in reason for reason in verdict["slo"]["failures"])
    summary = json.loads((report / "summary.json").read_text())
    assert len(summary["lost_sample"]) == min(100, verdict["lost"])
