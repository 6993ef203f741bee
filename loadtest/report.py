"""The harness's own part of Locust's HTML report: the SLO verdict, the bot's side, the targets.

Locust's statistics hold the webhooks alone (LINE's side of a run), so its
tables and charts, in the report as in the live web UI, are about webhooks:
its "Total Requests per Second" is the webhook rate. Everything on the bot's
side (deliveries and their end-to-end times, the simulated bridges'
connections, their Messaging API calls) is counted by the harness's tally,
exact across generator processes. Locust 2.x builds its report from fixed
parts with no hook for content of one's own, so once the run is judged the
command adds a section at the top of it (:func:`amend`): the verdict
objective by objective with the figures, a chart of webhooks posted and not
accepted and one of deliveries and redeliveries to bridges, per second, the
bridges' table (:class:`BridgeSide`), the counts per target, and all of it
as JSON in ``<script type="application/json" id="linerelay-report">`` for
tools.

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
from loadtest.tally import (
    ACCEPTED,
    BAD_FRAME,
    CHURN,
    CONNECT,
    DELIVERED,
    FAILED,
    POSTED,
    REDELIVERED,
    Buckets,
    Histogram,
    Tally,
)
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


@dataclass(frozen=True, slots=True)
class GatewayRow:
    """The simulated bridges' Messaging API calls of one name (``reply``, ``loading``)."""

    name: str
    calls: int
    failures: int
    p50_ms: int | None
    p99_ms: int | None
    max_ms: int | None


@dataclass(frozen=True, slots=True)
class BridgeSide:
    """The bot's side of a run, as the tally counted it: what Locust's statistics leave out.

    ``deliveries`` is every delivery the simulated bridges received, of which
    ``redeliveries`` came with ``attempt > 1`` and ``bad_deliveries`` were not
    the run's webhooks or failed their signature. ``e2e_ms`` holds the
    end-to-end percentiles (``p50``, ``p95``, ``p99``, ``max``) of each
    webhook's first delivery. ``connection_failures`` counts connections that
    failed to open or broke, by reason.
    """

    deliveries: int
    redeliveries: int
    bad_deliveries: int
    e2e_ms: dict[str, int | None]
    connects: int
    connection_failures: dict[str, int]
    churns: int
    bad_frames: int
    gateway: tuple[GatewayRow, ...]

    @classmethod
    def from_tally(cls, tally: Tally) -> BridgeSide:
        """The bot's side of ``tally``."""
        return cls(
            deliveries=tally.deliveries,
            redeliveries=tally.redeliveries,
            bad_deliveries=tally.bad_deliveries,
            e2e_ms=_percentiles(tally.e2e),
            connects=tally.bridge_events[CONNECT],
            connection_failures=dict(sorted(tally.connection_failures.items())),
            churns=tally.bridge_events[CHURN],
            bad_frames=tally.bridge_events[BAD_FRAME],
            gateway=tuple(
                GatewayRow(
                    name,
                    times.total,
                    tally.gateway_failures[name],
                    times.percentile(50),
                    times.percentile(99),
                    times.percentile(100),
                )
                for name, times in sorted(tally.gateway.items())
            ),
        )

    def to_json(self) -> dict[str, Any]:
        """A JSON-able form (``summary.json``'s ``bridges``; the gateway's calls by name)."""
        data = asdict(self)
        data["gateway"] = {
            g.name: {k: v for k, v in asdict(g).items() if k != "name"} for g in self.gateway
        }
        return data

    def rows(self) -> list[tuple[str, str]]:
        """The report's table as (what, figure): only the rows that apply to this run.

        Churns show only when bridges churned, connection failures by reason
        only when some failed, and gateway calls only those made.
        """
        e2e = " / ".join("n/a" if v is None else str(v) for v in self.e2e_ms.values())
        rows = [
            ("deliveries received", str(self.deliveries)),
            ("of which redeliveries (attempt > 1)", str(self.redeliveries)),
            ("of which bad (not ours, or a bad signature)", str(self.bad_deliveries)),
            ("end-to-end p50 / p95 / p99 / max", f"{e2e} ms"),
            ("bridge connections opened", str(self.connects)),
            ("bridge connections failed or broken", str(sum(self.connection_failures.values()))),
        ]
        rows += [
            (f"failed or broken: {reason}", str(n))
            for reason, n in self.connection_failures.items()
        ]
        if self.churns:
            rows.append(("bridge churns (dropped on purpose)", str(self.churns)))
        rows.append(("bad frames", str(self.bad_frames)))
        rows += [
            (
                f"gateway {g.name} calls",
                f"{g.calls}, {g.failures} failed, p99 {'n/a' if g.p99_ms is None else g.p99_ms} ms",
            )
            for g in self.gateway
        ]
        return rows


def _percentiles(times: Histogram) -> dict[str, int | None]:
    return {
        "p50": times.percentile(50),
        "p95": times.percentile(95),
        "p99": times.percentile(99),
        "max": times.percentile(100),
    }


def _cell(value: object) -> str:
    return f"<td>{escape('' if value is None else str(value))}</td>"


def _script_json(data: dict[str, Any]) -> str:
    # Markup in a string ("</script>", "<!--") must not end or bend the script element:
    # JSON spells those characters as escapes instead.
    text = json.dumps(data, ensure_ascii=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def section(
    verdict: Verdict,
    series: Series,
    nodes: list[NodeRow],
    facts: list[tuple[str, str]],
    bridges: BridgeSide | None = None,
) -> str:
    """The HTML section: verdict per objective, the per-second charts, the bridges, nodes, JSON.

    ``bridges`` is None when the run had no simulated bridges.
    """
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
    if bridges is None:
        bridge_part = (
            "<p>No simulated bridges in this run: nothing on the bot's side was counted.</p>"
        )
    else:
        bridge_rows = "".join(
            f"<tr><th>{escape(what)}</th>{_cell(figure)}</tr>" for what, figure in bridges.rows()
        )
        bridge_part = f'<table id="linerelay-bridges"><tbody>{bridge_rows}</tbody></table>'
    data = {
        "verdict": verdict.to_json(),
        "checks": [c.to_json() for c in verdict.checks],
        "series": {"start": series.start, "step_s": 1, **series.counts},
        "bridges": bridges.to_json() if bridges is not None else None,
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
        "Locust's own tables and charts further down (&ldquo;Total Requests per "
        "Second&rdquo;, response times, failures) count the webhooks alone, as LINE's "
        "platform posts them; the bot's side is the harness's, in the next table.</p>"
        "<h2>Bridges (the bot's side)</h2>"
        f"{bridge_part}"
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
