"""Reading back what the harness put into Locust's HTML report (shared by unit and run tests)."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from typing import Any

from loadtest.report import DATA_ID, SECTION_ID

LOCUST_ARGS = "window.templateArgs ="
BRIDGES_TABLE = "linerelay-bridges"


class _Reader(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.in_section = 0
        self.in_data = False
        self.data = ""
        self.series: list[dict[str, str | None]] = []
        self.checks: list[dict[str, str | None]] = []
        self.sections = 0
        self.locust_args: dict[str, Any] | None = None
        self.in_bridges = False
        self.cells: list[str] | None = None
        self.bridge_rows: dict[str, str] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "section" and found.get("id") == SECTION_ID:
            self.sections += 1
            self.in_section += 1
        if not self.in_section:
            return
        if tag == "script" and found.get("id") == DATA_ID:
            self.in_data = True
        elif tag == "polyline":
            self.series.append(found)
        elif tag == "tr" and "data-objective" in found:
            self.checks.append(found)
        elif tag == "table":
            self.in_bridges = found.get("id") == BRIDGES_TABLE
        elif tag == "tr" and self.in_bridges:
            self.cells = []
        elif tag in ("th", "td") and self.cells is not None:
            self.cells.append("")

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self.in_data = False
        elif tag == "section" and self.in_section:
            self.in_section -= 1
        elif tag == "table":
            self.in_bridges = False
        elif tag == "tr" and self.cells is not None:
            what, figure = self.cells
            self.bridge_rows[what] = figure
            self.cells = None

    def handle_data(self, data: str) -> None:
        if self.in_data:
            self.data += data
        elif self.cells:
            self.cells[-1] += data
        elif LOCUST_ARGS in data:
            # Locust renders its report's data into the page as one JSON object.
            start = data.index(LOCUST_ARGS) + len(LOCUST_ARGS)
            text = data[start:].lstrip()
            self.locust_args, _ = json.JSONDecoder().raw_decode(text)


def read(html: str) -> dict[str, Any]:
    """The section's embedded JSON, with the chart's series and the check rows as drawn.

    Keys added: ``drawn_series`` (``data-series`` of each polyline, in order, with its
    points), ``check_rows`` (objective -> "true"/"false"), ``bridge_rows`` (the bridges'
    table as drawn, what -> figure), ``sections`` (how many verdict sections the file
    has), ``locust_report`` (whether Locust's own data is still there) and ``locust``
    (that data: Locust's template arguments, with its statistics and chart history).
    """
    reader = _Reader()
    reader.feed(html)
    data: dict[str, Any] = json.loads(reader.data) if reader.data else {}
    data["drawn_series"] = {s["data-series"]: s["points"] for s in reader.series}
    data["check_rows"] = {c["data-objective"]: c["data-pass"] for c in reader.checks}
    data["bridge_rows"] = reader.bridge_rows
    data["sections"] = reader.sections
    data["locust_report"] = reader.locust_args is not None
    data["locust"] = reader.locust_args or {}
    return data
