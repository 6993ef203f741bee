"""A line chart as inline SVG: per-second series drawn without a script or a download.

The report's chart must show in any browser, offline and from a CI
artifact, so it is plain SVG text built here from the numbers. Each series
is one ``<polyline>`` carrying ``data-series="NAME"``, with a legend entry.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from html import escape

WIDTH = 960
HEIGHT = 240
_LEFT, _RIGHT, _TOP, _BOTTOM = 56, 16, 34, 40
_TICKS = 5


@dataclass(frozen=True, slots=True)
class Line:
    """One series: its name (the ``data-series`` attribute), legend label, colour and points."""

    name: str
    label: str
    colour: str
    values: list[int]


def nice_ceiling(value: float) -> float:
    """The smallest of 1, 2, 2.5 or 5 times a power of ten that is at least ``value`` (1 for 0)."""
    if value <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5):
        if step * power >= value:
            return float(step * power)
    return float(10 * power)


def _number(value: float) -> str:
    return f"{value:g}"


def line_chart(title: str, lines: list[Line], *, y_label: str, x_label: str) -> str:
    """An SVG chart of ``lines`` against their index (seconds since the start)."""
    length = max((len(line.values) for line in lines), default=0)
    top = nice_ceiling(max((max(line.values, default=0) for line in lines), default=0))
    plot_w = WIDTH - _LEFT - _RIGHT
    plot_h = HEIGHT - _TOP - _BOTTOM
    span = max(1, length - 1)

    def x(i: int) -> float:
        return _LEFT + plot_w * i / span

    def y(v: float) -> float:
        return _TOP + plot_h * (1 - v / top)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" '
        f'width="100%" role="img" aria-label="{escape(title)}" font-family="sans-serif" '
        'font-size="12">',
        f"<title>{escape(title)}</title>",
    ]
    for k in range(_TICKS + 1):
        value = top * k / _TICKS
        parts.append(
            f'<line x1="{_LEFT}" x2="{WIDTH - _RIGHT}" y1="{y(value):.1f}" y2="{y(value):.1f}" '
            'stroke="#ddd"/>'
            f'<text x="{_LEFT - 6}" y="{y(value) + 4:.1f}" text-anchor="end">{_number(value)}</text>'
        )
    for k in range(_TICKS + 1):
        i = round(span * k / _TICKS)
        parts.append(
            f'<text x="{x(i):.1f}" y="{HEIGHT - _BOTTOM + 16}" text-anchor="middle">{i}</text>'
        )
    parts.append(
        f'<text x="{_LEFT + plot_w / 2:.1f}" y="{HEIGHT - 6}" text-anchor="middle">'
        f"{escape(x_label)}</text>"
        f'<text x="14" y="{_TOP + plot_h / 2:.1f}" text-anchor="middle" '
        f'transform="rotate(-90 14 {_TOP + plot_h / 2:.1f})">{escape(y_label)}</text>'
    )
    legend_x = _LEFT
    for line in lines:
        points = " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in enumerate(line.values))
        parts.append(
            f'<polyline data-series="{escape(line.name)}" fill="none" '
            f'stroke="{escape(line.colour)}" stroke-width="2" points="{points}"/>'
            f'<rect x="{legend_x}" y="10" width="14" height="4" fill="{escape(line.colour)}"/>'
            f'<text x="{legend_x + 20}" y="16">{escape(line.label)}</text>'
        )
        legend_x += 40 + 7 * len(line.label)
    parts.append("</svg>")
    return "".join(parts)
