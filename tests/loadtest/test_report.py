"""The verdict and the per-second chart of webhooks apart from deliveries, in Locust's report."""

from __future__ import annotations

from pathlib import Path

import pytest

from loadtest.chart import nice_ceiling
from loadtest.report import (
    BridgeSide,
    GatewayRow,
    NodeRow,
    ReportError,
    Series,
    add_to,
    amend,
    node_rows,
    section,
)
from loadtest.tally import ACCEPTED, BAD_FRAME, CHURN, CONNECT, DELIVERED, POSTED, Buckets, Tally
from loadtest.verdict import Slo, judge
from tests.loadtest.report_html import read

LOCUST_LIKE = (
    "<!DOCTYPE html><html><head><title>Locust</title>\n"
    # Locust's inlined bundle holds markup in its strings; only the real <body> counts.
    '<script>const frame = "<body style=\\"margin:0;\\">";\r\u2028</script></head>\n'
    '<body class="x">\n<div id="root"></div>\n'
    "<script>window.templateArgs = {}</script>\n</body></html>"
)


def run_tally(rate: int = 40, seconds: int = 5) -> Tally:
    t = Tally()
    for second in range(seconds):
        for i in range(rate):
            marker = f"m{second}-{i}"
            t.answered(200, 12, marker, sent_at=1000 + second + i / rate)
            t.delivered_one(marker, 1000, at=1000 + second + i / rate + 1.0)
    return t


def test_series_cover_every_second_from_first_to_last_with_gaps_as_zero() -> None:
    timeline = Buckets()
    timeline.add(POSTED, 100, 3)
    timeline.add(DELIVERED, 103, 2)
    series = Series.from_timeline(timeline)
    assert series.start == 100
    assert series.counts[POSTED] == [3, 0, 0, 0]
    assert series.counts[DELIVERED] == [0, 0, 0, 2]
    assert Series.from_timeline(Buckets()).counts[POSTED] == []


def test_the_section_draws_webhooks_and_deliveries_as_separate_series_at_the_rate() -> None:
    t = run_tally(rate=40)
    verdict = judge(t, Slo(), with_bridges=True)
    html = amend(LOCUST_LIKE, section(verdict, Series.from_timeline(t.timeline), [], []))
    found = read(html)
    assert found["series"]["posted"] == [40, 40, 40, 40, 40, 0]
    assert found["series"]["delivered"] == [0, 40, 40, 40, 40, 40]
    assert set(found["drawn_series"]) == {"posted", "failed", "delivered", "redelivered"}
    assert len(found["drawn_series"]["posted"].split()) == 6
    assert found["locust_report"]


def busy_bridges(t: Tally) -> Tally:
    """``t`` with bridges that connected, churned, failed once and answered through a gateway."""
    t.delivered_one("m0-0", 2500, redelivery=True, at=1010)
    t.delivered_one(None, None, at=1010)
    for _ in range(3):
        t.bridge_event(CONNECT)
    t.bridge_event(CHURN)
    t.bridge_event(CHURN)
    t.connection_failed("InvalidStatus 429")
    for ms in range(1, 101):
        t.gateway_call("reply", ms, ok=ms != 100)
    t.gateway_call("loading", 4, ok=True)
    return t


def test_the_bridges_side_holds_deliveries_e2e_connections_and_gateway_calls() -> None:
    t = busy_bridges(run_tally(rate=10, seconds=2))
    t.e2e.add(3000)
    side = BridgeSide.from_tally(t)
    assert (side.deliveries, side.redeliveries, side.bad_deliveries) == (22, 1, 1)
    assert side.e2e_ms == {"p50": 1000, "p95": 2500, "p99": 3000, "max": 3000}
    assert (side.connects, side.churns, side.bad_frames) == (3, 2, 0)
    assert side.connection_failures == {"InvalidStatus 429": 1}
    assert side.gateway == (
        GatewayRow("loading", 1, 0, 4, 4, 4),
        GatewayRow("reply", 100, 1, 50, 99, 100),
    )
    assert side.to_json()["gateway"]["reply"] == {
        "calls": 100,
        "failures": 1,
        "p50_ms": 50,
        "p99_ms": 99,
        "max_ms": 100,
    }


def test_the_bridges_table_shows_only_the_rows_that_apply() -> None:
    quiet = Tally()
    quiet.bridge_event(CONNECT)
    quiet.delivered_one("A", 40)
    rows = dict(BridgeSide.from_tally(quiet).rows())
    assert rows["deliveries received"] == "1"
    assert rows["end-to-end p50 / p95 / p99 / max"] == "40 / 40 / 40 / 40 ms"
    assert rows["bridge connections failed or broken"] == "0"
    assert rows["bad frames"] == "0"
    assert not any("churn" in what or "gateway" in what for what in rows)
    assert not any(what.startswith("failed or broken:") for what in rows)
    busy = busy_bridges(Tally())
    busy.bridge_event(BAD_FRAME)
    rows = dict(BridgeSide.from_tally(busy).rows())
    assert rows["bridge churns (dropped on purpose)"] == "2"
    assert rows["failed or broken: InvalidStatus 429"] == "1"
    assert rows["bad frames"] == "1"
    assert rows["gateway reply calls"] == "100, 1 failed, p99 99 ms"
    nothing = dict(BridgeSide.from_tally(Tally()).rows())
    assert nothing["end-to-end p50 / p95 / p99 / max"] == "n/a / n/a / n/a / n/a ms"


def test_the_section_draws_the_bridges_table_and_embeds_it_as_json() -> None:
    t = busy_bridges(run_tally(rate=10, seconds=2))
    side = BridgeSide.from_tally(t)
    verdict = judge(t, Slo(), with_bridges=True)
    html = section(verdict, Series.from_timeline(t.timeline), [], [], side)
    found = read(amend(LOCUST_LIKE, html))
    assert found["bridges"] == side.to_json()
    assert found["bridge_rows"] == dict(side.rows())
    assert "count the webhooks alone" in html
    assert "adds up every event" not in html


def test_without_bridges_the_section_says_nothing_was_counted_on_the_bots_side() -> None:
    t = run_tally(seconds=1)
    verdict = judge(t, Slo(), with_bridges=False)
    html = section(verdict, Series.from_timeline(t.timeline), [], [], None)
    found = read(amend(LOCUST_LIKE, html))
    assert found["bridges"] is None
    assert found["bridge_rows"] == {}
    assert "No simulated bridges in this run" in html


def test_the_section_shows_the_verdict_objective_by_objective() -> None:
    t = run_tally()
    t.answered(200, 1200, "late", sent_at=1003)
    verdict = judge(t, Slo(), with_bridges=True)
    found = read(amend(LOCUST_LIKE, section(verdict, Series.from_timeline(t.timeline), [], [])))
    assert found["verdict"] == verdict.to_json()
    assert found["check_rows"]["answers over budget"] == "false"
    assert found["check_rows"]["ack p99"] == "true"
    assert found["check_rows"]["accepted webhooks lost"] == "false"
    assert [c["objective"] for c in found["checks"]] == [c.objective for c in verdict.checks]


def test_text_from_the_run_cannot_break_out_of_the_page() -> None:
    verdict = judge(run_tally(seconds=1), Slo(), with_bridges=False)
    nasty = "https://x/</script><script>alert(1)</script>"
    html = section(verdict, Series.from_timeline(Buckets()), [NodeRow(nasty, 1, 1, None)], [])
    assert "<script>alert" not in html
    assert read(amend(LOCUST_LIKE, html))["nodes"][0]["target"] == nasty


def test_targets_are_one_row_each_and_bridge_targets_apart_when_they_differ() -> None:
    counts = Buckets()
    counts.add(POSTED, 0, 5)
    counts.add(ACCEPTED, 0, 4)
    counts.add(POSTED, 1, 6)
    counts.add(DELIVERED, 1, 7)
    assert node_rows(("a", "b"), ("a", "b"), counts) == [
        NodeRow("a", 5, 4, 0),
        NodeRow("b", 6, 0, 7),
    ]
    assert node_rows(("a",), ("b", "c"), counts) == [
        NodeRow("a", 5, 4, None),
        NodeRow("b", None, None, 0),
        NodeRow("c", None, None, 7),
    ]


def test_the_section_goes_first_in_the_body_and_the_file_is_replaced_whole(
    tmp_path: Path,
) -> None:
    path = tmp_path / "report.html"
    path.write_text(LOCUST_LIKE)
    add_to(path, "<section>ours</section>")
    text = path.read_text()
    assert text.index('<body class="x"><section>ours</section>') < text.index('<div id="root">')
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html"]


def test_a_file_without_a_body_or_no_file_is_a_report_error(tmp_path: Path) -> None:
    with pytest.raises(ReportError, match="body"):
        amend("<html>no body</html>", "x")
    with pytest.raises(ReportError, match="cannot read"):
        add_to(tmp_path / "missing.html", "x")


@pytest.mark.parametrize(
    ("value", "ceiling"), [(0, 1), (0.3, 0.5), (1, 1), (37, 50), (40, 50), (80, 100), (101, 200)]
)
def test_the_chart_scale_ends_on_a_round_number(value: float, ceiling: float) -> None:
    assert nice_ceiling(value) == ceiling
