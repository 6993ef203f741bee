"""Reading back what the harness put into Locust's HTML report (shared by unit and run tests)."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from typing import Any

from loadtest.report import DATA_ID, SECTION_ID


class _Reader(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.in_section = 0
        self.in_data = False
        self.data = ""
        self.series: list[dict[str, str | None]] = []
        self.checks: list[dict[str, str | None]] = []
        self.sections = 0
        self.locust_args = False

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

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self.in_data = False
        elif tag == "section" and self.in_section:
            self.in_section -= 1

    def handle_data(self, data: str) -> None:
        if self.in_data:
            self.data += data
        elif "window.templateArgs" in data:
            self.locust_args = True


def read(html: str) -> dict[str, Any]:
    """The section's embedded JSON, with the chart's series and the check rows as drawn.

    Keys added: ``drawn_series`` (``data-series`` of each polyline, in order, with its
    points), ``check_rows`` (objective -> "true"/"false"), ``sections`` (how many verdict
    sections the file has) and ``locust_report`` (whether Locust's own data is still there).
    """
    reader = _Reader()
    reader.feed(html)
    data: dict[str, Any] = json.loads(reader.data) if reader.data else {}
    data["drawn_series"] = {s["data-series"]: s["points"] for s in reader.series}
    data["check_rows"] = {c["data-objective"]: c["data-pass"] for c in reader.checks}
    data["sections"] = reader.sections
    data["locust_report"] = reader.locust_args
    return data
