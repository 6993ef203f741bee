"""The harness's own part of Locust's HTML report: the SLO verdict, and webhooks apart from deliveries.

Locust 2.x builds its report from fixed parts. Its requests-per-second chart
plots the total of every request event it was told of, and the simulated
bridges tell it of every delivery (so that its tables show end-to-end
latencies), as of bridge connections and gateway calls: a run posting 40
webhooks a second shows 80 there. Locust has no hook for content of one's
own in that file, so once the run is judged the command adds a section at
the top of it (:func:`amend`): the verdict objective by objective with the
figures, a chart of webhooks posted and not accepted, and of deliveries and
redeliveries to bridges, per second (from the tally, exact across generator
processes), the counts per target, and all of it as JSON in
``<script type="application/json" id="linerelay-report">`` for tools.

Building the section is pure; :func:`add_to` is the only I/O.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from html import escape
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from loadtest.chart import Line, line_chart
from loadtest.tally import ACCEPTED, DELIVERED, FAILED, POSTED, REDELIVERED, Buckets
from loadtest.verdict import Verdict

SECTION_ID = "linerelay-verdict"
DATA_ID = "linerelay-report"

#: The two charts, webhooks and deliveries apart: (title, [(tally series, legend, colour)]).
CHARTS = (
    (
        "Webhooks posted per second",
        ((POSTED, "webhooks posted", "#1f77b4"), (FAILED, "not accepted", "#d62728")),
    ),
    (
        "Deliveries to simulated bridges per second",
        (
            (DELIVERED, "deliveries", "#2ca02c"),
            (REDELIVERED, "redeliveries (attempt > 1)", "#ff7f0e"),
        ),
    ),
)
SERIES = tuple(name for _, lines in CHARTS for name, _, _ in lines)

_STYLE = """
#linerelay-verdict { font-family: sans-serif; max-width: 1200px; margin: 24px auto;
  padding: 16px 24px; background: #fff; color: #222; border: 1px solid #ddd; }
#linerelay-verdict table { border-collapse: collapse; margin: 8px 0 16px; }
#linerelay-verdict th, #linerelay-verdict td { border: 1px solid #ddd; padding: 4px 10px;
  text-align: left; }
#linerelay-verdict .pass { color: #1a7f37; font-weight: bold; }
#linerelay-verdict .fail { color: #c62828; font-weight: bold; }
"""


class ReportError(ValueError):
    """The report file is not an HTML document with a ``<body>``."""


@dataclass(frozen=True, slots=True)
class Series:
    """Per-second counts from ``start`` (a Unix second), one list per tally series."""

    start: int
    counts: dict[str, list[int]]

    @classmethod
    def from_timeline(cls, timeline: Buckets) -> Series:
        """Every second from the first to the last one counted, empty seconds as 0."""
        seconds = timeline.keys()
        if not seconds:
            return cls(0, {name: [] for name in SERIES})
        first, last = seconds[0], seconds[-1]
        return cls(
            first,
            {name: [timeline.get(name, s) for s in range(first, last + 1)] for name in SERIES},
        )


@dataclass(frozen=True, slots=True)
class NodeRow:
    """What one target saw; None where it played no part (webhooks only, or bridges only)."""

    target: str
    posted: int | None
    accepted: int | None
    deliveries: int | None


def node_rows(
    targets: tuple[str, ...], bridge_targets: tuple[str, ...], by_target: Buckets
) -> list[NodeRow]:
    """One row per target in order; bridge targets apart when they are another list."""
    if bridge_targets == targets:
        return [
            NodeRow(
                t,
                by_target.get(POSTED, i),
                by_target.get(ACCEPTED, i),
                by_target.get(DELIVERED, i),
            )
            for i, t in enumerate(targets)
        ]
    webhook_rows = [
        NodeRow(t, by_target.get(POSTED, i), by_target.get(ACCEPTED, i), None)
        for i, t in enumerate(targets)
    ]
    bridge_rows = [
        NodeRow(t, None, None, by_target.get(DELIVERED, i)) for i, t in enumerate(bridge_targets)
    ]
    return webhook_rows + bridge_rows


def _cell(value: object) -> str:
    return f"<td>{escape('' if value is None else str(value))}</td>"


def _script_json(data: dict[str, Any]) -> str:
    # Markup in a string ("</script>", "<!--") must not end or bend the script element:
    # JSON spells those characters as escapes instead.
    text = json.dumps(data, ensure_ascii=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def section(
    verdict: Verdict, series: Series, nodes: list[NodeRow], facts: list[tuple[str, str]]
) -> str:
    """The HTML section: verdict per objective, the per-second chart, nodes, embedded JSON."""
    word = "PASS" if verdict.passed else "FAIL"
    checks = "".join(
        f'<tr data-objective="{escape(c.objective)}" data-pass="{str(c.passed).lower()}">'
        f"{_cell(c.objective)}{_cell(c.limit)}{_cell(c.observed)}"
        f'<td class="{"pass" if c.passed else "fail"}">{"pass" if c.passed else "fail"}</td></tr>'
        for c in verdict.checks
    )
    about = "".join(f"<tr><th>{escape(k)}</th>{_cell(v)}</tr>" for k, v in facts)
    charts = "".join(
        line_chart(
            title,
            [
                Line(name, label, colour, series.counts.get(name, []))
                for name, label, colour in lines
            ],
            y_label="per second",
            x_label="seconds since the run's first webhook",
        )
        for title, lines in CHARTS
    )
    node_table = "".join(
        f"<tr>{_cell(n.target)}{_cell(n.posted)}{_cell(n.accepted)}{_cell(n.deliveries)}</tr>"
        for n in nodes
    )
    data = {
        "verdict": verdict.to_json(),
        "checks": [c.to_json() for c in verdict.checks],
        "series": {"start": series.start, "step_s": 1, **series.counts},
        "nodes": [asdict(n) for n in nodes],
        "facts": dict(facts),
    }
    return (
        f'<section id="{SECTION_ID}"><style>{_STYLE}</style>'
        f'<h1>linerelay load test: <span class="{word.lower()}">{word}</span></h1>'
        f"<table>{about}</table>"
        "<h2>Service-level objectives</h2>"
        '<table id="linerelay-slo"><thead><tr><th>objective</th><th>limit</th>'
        f"<th>observed</th><th>result</th></tr></thead><tbody>{checks}</tbody></table>"
        "<h2>Webhooks posted, and deliveries to bridges, per second</h2>"
        f"{charts}"
        "<p>Counted by the harness, across every generator process: webhooks by the second "
        "they were posted, deliveries by the second a simulated bridge received them. "
        "Locust's own "
        "&ldquo;Total Requests per Second&rdquo; chart further down adds up every event "
        "it counts (webhooks, deliveries, bridge connections, gateway calls), so it shows "
        "more than the webhook rate.</p>"
        "<h2>Targets</h2>"
        '<table id="linerelay-nodes"><thead><tr><th>target</th><th>webhooks posted</th>'
        "<th>accepted (200)</th><th>deliveries to bridges</th></tr></thead>"
        f"<tbody>{node_table}</tbody></table>"
        f'<script type="application/json" id="{DATA_ID}">{_script_json(data)}</script>'
        "</section>"
    )


class _BodyFinder(HTMLParser):
    """Finds where the document's ``<body>`` tag ends, as a browser would parse it.

    Locust's report inlines its script bundle, whose strings hold ``<body``
    too: only a parser that knows script content is text finds the real tag.
    """

    def __init__(self) -> None:
        super().__init__(convert_charrefs=False)
        self.end: tuple[int, int, int] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "body" and self.end is None:
            line, column = self.getpos()
            self.end = (line, column, len(self.get_starttag_text() or ""))


def amend(html: str, extra: str) -> str:
    """``html`` with ``extra`` placed first in its body."""
    finder = _BodyFinder()
    finder.feed(html)
    finder.close()
    if finder.end is None:
        raise ReportError("the report has no <body> to add the verdict to")
    line, column, length = finder.end
    # The parser counts lines by "\n" alone, and columns from the last one.
    offset = sum(len(text) + 1 for text in html.split("\n")[: line - 1]) + column + length
    return html[:offset] + extra + html[offset:]


def add_to(path: Path, extra: str) -> None:
    """Add ``extra`` to the report file at ``path`` (replaced whole, never half-written)."""
    try:
        text = path.read_text("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ReportError(f"cannot read {path}: {exc}") from exc
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(amend(text, extra), "utf-8")
    tmp.replace(path)
