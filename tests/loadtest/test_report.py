"""The verdict and the per-second chart of webhooks apart from deliveries, in Locust's report."""

from __future__ import annotations

from pathlib import Path

import pytest

from loadtest.chart import nice_ceiling
from loadtest.report import (
    NodeRow,
    ReportError,
    Series,
    add_to,
    amend,
    node_rows,
    section,
)
from loadtest.tally import ACCEPTED, DELIVERED, POSTED, Buckets, Tally
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
