"""Short runs against a real relay (TLS, SQLite, WebSockets) with real simulated bridges."""

from __future__ import annotations

import csv
import itertools
import json
import statistics
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.loadtest.report_html import read
from tests.loadtest.runs import Run, bridge_protocols, common, stats_rows, tenant_options
from tests.support.relay import RelayProcess, free_port

pytestmark = pytest.mark.integration


def test_run_with_bridges_passes_and_every_accepted_webhook_is_delivered(
    shared_relay: RelayProcess, run_loadtest: Run, tmp_path: Path
) -> None:
    report = tmp_path / "report"
    tenants = tenant_options(shared_relay, "pass", 2)
    status = run_loadtest(
        [
            *common(shared_relay, report),
            *tenants,
            "--rate",
            "25",
            "--duration",
            "4",
        ]
    )
    verdict = json.loads((report / "verdict.json").read_text())
    assert status == 0, verdict
    assert verdict["pass"] is True
    assert verdict["accepted"] >= 20
    assert verdict["delivered"] == verdict["accepted"]
    assert verdict["lost"] == 0
    assert verdict["over_budget"] == 0
    assert verdict["e2e_p99_ms"] is not None
    assert (report / "report.html").stat().st_size > 0
    summary = json.loads((report / "summary.json").read_text())
    assert arrivals(summary) >= verdict["accepted"]
    assert summary["bridges"]["connects"] >= 2
    assert int(stats_rows(report)["Aggregated"]["Request Count"]) == summary["requests"]
    relay_side = summary["relay_metrics"]
    assert relay_side["webhooks_by_outcome"]["accepted"] == verdict["accepted"]
    assert relay_side["bridges_connected_peak"] == 2
    assert bridge_protocols(shared_relay, "pass") == {2}
    secrets = [
        v for k, v in itertools.pairwise(tenants) if k in ("--channel-secret", "--bridge-token")
    ]
    for path in report.iterdir():
        text = path.read_text(errors="replace")
        assert not any(secret in text for secret in secrets), path


def arrivals(summary: dict[str, Any]) -> int:
    """Deliveries the harness counted at the bridges, first ones and redeliveries together.

    A webhook sent to a bridge and not yet read when another bridge of its tenant took
    over first arrives as a redelivery (attempt 2), so only both together cover every
    accepted webhook.
    """
    bridges = summary["bridges"]
    assert bridges["redeliveries"] <= bridges["deliveries"]
    deliveries: int = bridges["deliveries"]
    return deliveries


def test_two_generator_processes_count_exactly_what_the_relay_accepted_and_delivered(
    shared_relay: RelayProcess, run_loadtest: Run, tmp_path: Path
) -> None:
    report = tmp_path / "report"
    argv = [
        *common(shared_relay, report),
        *tenant_options(shared_relay, "generators", 2),
        "--rate", "20", "--duration", "4", "--generators", "2",
        "--bridges", "2", "--bridge-protocol", "1",
    ]  # fmt: skip
    status = run_loadtest(argv)
    verdict = json.loads((report / "verdict.json").read_text())
    summary = json.loads((report / "summary.json").read_text())
    assert status == 0, verdict
    # Every webhook was posted by one of two worker processes and delivered to a bridge
    # user on either: the master's merged counts must equal the relay's own, exactly.
    relay_accepted = summary["relay_metrics"]["webhooks_by_outcome"]["accepted"]
    assert verdict["accepted"] == verdict["delivered"] == summary["requests"] == relay_accepted
    assert verdict["accepted"] >= 20
    assert summary["statuses"] == {"200": summary["requests"]}
    assert verdict["lost"] == 0
    drawn = read((report / "report.html").read_text())
    assert sum(drawn["series"]["posted"]) == summary["requests"]
    assert (
        sum(drawn["series"]["delivered"]) + sum(drawn["series"]["redelivered"])
        == summary["deliveries"]
    )
    assert bridge_protocols(shared_relay, "generators") == {1}
    assert arrivals(summary) >= verdict["accepted"]
    # Locust's own figures, merged from both workers, are the webhooks and nothing else.
    assert int(stats_rows(report)["Aggregated"]["Request Count"]) == summary["requests"]


def test_the_html_report_holds_the_verdict_and_charts_webhooks_apart_from_deliveries(
    shared_relay: RelayProcess, run_loadtest: Run, tmp_path: Path
) -> None:
    report = tmp_path / "report"
    rate = 20
    argv = [
        *common(shared_relay, report),
        *tenant_options(shared_relay, "html", 1),
        "--rate", str(rate), "--duration", "6",
    ]  # fmt: skip
    status = run_loadtest(argv)
    verdict = json.loads((report / "verdict.json").read_text())
    summary = json.loads((report / "summary.json").read_text())
    assert status == 0, verdict
    drawn = read((report / "report.html").read_text())
    assert drawn["sections"] == 1
    assert drawn["locust_report"], "Locust's own report is still in the file"
    assert drawn["verdict"] == verdict
    assert set(drawn["check_rows"].values()) == {"true"}
    assert "accepted webhooks lost" in drawn["check_rows"]
    posted, delivered = drawn["series"]["posted"], drawn["series"]["delivered"]
    assert {"posted", "delivered"} <= set(drawn["drawn_series"])
    # Whole seconds of sending (the first and last are partial): about the rate, not twice it.
    steady = statistics.median(posted[1:6])
    assert 0.7 * rate <= steady <= 1.3 * rate, posted
    assert max(posted) < 1.5 * rate, posted
    assert sum(posted) == verdict["slo"]["requests"]
    assert sum(delivered) == verdict["delivered"]
    assert 0.7 * rate <= statistics.median(delivered[1:6]) <= 1.3 * rate, delivered
    # The bot's side is the harness's: in the section's table and its JSON, as in summary.json.
    assert drawn["bridges"] == summary["bridges"]
    assert drawn["bridges"]["e2e_ms"]["p99"] == verdict["e2e_p99_ms"]
    assert drawn["bridge_rows"]["deliveries received"] == str(summary["deliveries"])
    # Locust's own figures are the webhooks alone: no delivery, bridge or gateway row, and
    # its total is what the harness posted.
    rows = stats_rows(report)
    assert int(rows.pop("Aggregated")["Request Count"]) == summary["requests"]
    assert rows, "Locust counted the webhooks"
    assert all(name.startswith("webhook ") for name in rows), sorted(rows)
    assert {row["Type"] for row in rows.values()} == {"POST"}
    locust = drawn["locust"]
    assert all(s["name"].startswith("webhook ") for s in locust["requests_statistics"][:-1])
    assert locust["requests_statistics"][-1]["num_requests"] == summary["requests"]
    # Its "Total Requests per Second" chart: about the webhook rate, well below the
    # webhooks and deliveries together (about twice the rate).
    rps = [point["current_rps"][1] for point in locust["history"]]
    assert 0 < max(rps) < 1.5 * rate, rps


def test_spike_profile_runs_ten_times_the_users_and_loses_nothing(
    shared_relay: RelayProcess, run_loadtest: Run, tmp_path: Path
) -> None:
    report = tmp_path / "report"
    status = run_loadtest(
        [
            *common(shared_relay, report),
            *tenant_options(shared_relay, "spike", 1),
            "--profile",
            "spike",
            "--rate",
            "4",
            "--users",
            "2",
            "--duration",
            "10",
        ]
    )
    verdict = json.loads((report / "verdict.json").read_text())
    assert status == 0, verdict
    assert verdict["lost"] == 0
    with (report / "locust_stats_history.csv").open() as f:
        peak = max(int(row["User Count"]) for row in csv.DictReader(f))
    assert peak == 2 * 10 + 1  # ten times the webhook users, plus the bridge


def test_bridges_that_churn_still_receive_everything(
    shared_relay: RelayProcess, run_loadtest: Run, tmp_path: Path
) -> None:
    report = tmp_path / "report"
    status = run_loadtest(
        [
            *common(shared_relay, report),
            *tenant_options(shared_relay, "churn", 1),
            "--churn",
            "1",
            "--rate",
            "15",
            "--duration",
            "5",
        ]
    )
    verdict = json.loads((report / "verdict.json").read_text())
    assert status == 0, verdict
    assert verdict["lost"] == 0
    bridges = json.loads((report / "summary.json").read_text())["bridges"]
    assert bridges["churns"] >= 2
    assert bridges["connects"] >= 3, "the bridge reconnected after each churn"


def test_web_ui_serves_the_live_run_and_the_verdict_follows(
    shared_relay: RelayProcess, run_loadtest: Run, tmp_path: Path
) -> None:
    report = tmp_path / "report"
    port = free_port()
    argv = [
        *common(shared_relay, report),
        *tenant_options(shared_relay, "web", 1),
        "--rate", "5", "--duration", "6", "--web", f"127.0.0.1:{port}", "--web-linger", "1",
    ]  # fmt: skip
    with ThreadPoolExecutor(1) as pool:
        run = pool.submit(run_loadtest, argv)
        states, names = set(), set()
        deadline = time.monotonic() + 60
        while not run.done() and time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{port}/stats/requests", timeout=5
                ) as r:
                    live = json.loads(r.read())
                states.add(live["state"])
                names |= {row["name"] for row in live["stats"]}
            except OSError:
                pass
            time.sleep(0.3)
        status = run.result(timeout=120)
    assert "running" in states
    assert status == 0
    # The live UI's tables and charts are the webhooks alone, as in the report.
    names.discard("Aggregated")
    assert names, "the live UI showed the webhooks"
    assert all(name.startswith("webhook ") for name in names), sorted(names)
    assert json.loads((report / "verdict.json").read_text())["lost"] == 0


def test_a_worker_joining_from_elsewhere_sends_for_the_master(
    shared_relay: RelayProcess, run_loadtest: Run, tmp_path: Path
) -> None:
    report = tmp_path / "report"
    port = free_port()
    options = [
        *common(shared_relay, report),
        *tenant_options(shared_relay, "join", 1),
        "--rate", "10", "--duration", "4",
    ]  # fmt: skip
    with ThreadPoolExecutor(2) as pool:
        master = pool.submit(
            run_loadtest,
            [*options, "--master-bind", f"127.0.0.1:{port}", "--expect-workers", "1"],
        )
        worker = pool.submit(run_loadtest, [*options, "--join", f"127.0.0.1:{port}"])
        assert master.result(timeout=300) == 0
        assert worker.result(timeout=60) == 0
    verdict = json.loads((report / "verdict.json").read_text())
    assert verdict["accepted"] == verdict["delivered"] >= 10
