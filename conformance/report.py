"""The report formats: JSON (PROTOCOL.md §4), JUnit XML, a self-contained HTML page, and text.

Each renderer is a pure function of a :class:`~conformance.runner.Report`.
"""

from __future__ import annotations

import html
import json
import xml.etree.ElementTree as ET
from collections.abc import Callable

from conformance.catalogue import CATALOGUE, CheckResult, Group, Severity, Status
from conformance.runner import Report

_SEVERITY_ORDER = list(Severity)
GROUP_TITLES = {
    Group.TLS: "TLS (sslyze scan)",
    Group.CERTIFICATE: "Certificate chain",
    Group.WEBHOOK: "Webhook behaviour",
}


def to_json(report: Report) -> str:
    """``{"checks": [...], "summary": {...}}`` exactly as PROTOCOL.md §4 describes."""
    document = {
        "checks": [item.as_dict() for item in report.results],
        "summary": report.summary(),
    }
    return json.dumps(document, indent=2) + "\n"


def to_junit(report: Report) -> str:
    """JUnit XML: one testsuite per group, one testcase per check.

    ``fail`` becomes ``<failure>``, ``skip`` becomes ``<skipped>``, ``info``
    passes with its detail in ``<system-out>`` so CI systems show it.
    """
    root = ET.Element(
        "testsuites",
        name=f"linerelay conformance ({report.profile})",
        tests=str(len(report.results)),
        failures=str(report.count(Status.FAIL)),
        errors="0",
        skipped=str(report.count(Status.SKIP)),
        time=f"{report.seconds:.3f}",
        timestamp=report.started_at.isoformat(timespec="seconds"),
    )
    for group in Group:
        members = [item for item in report.results if item.spec.group is group]
        suite = ET.SubElement(
            root,
            "testsuite",
            name=f"conformance.{group.value}",
            tests=str(len(members)),
            failures=str(sum(1 for item in members if item.status is Status.FAIL)),
            errors="0",
            skipped=str(sum(1 for item in members if item.status is Status.SKIP)),
            timestamp=report.started_at.isoformat(timespec="seconds"),
            hostname=report.target,
        )
        properties = ET.SubElement(suite, "properties")
        ET.SubElement(properties, "property", name="target", value=report.target)
        ET.SubElement(properties, "property", name="profile", value=report.profile)
        for item in members:
            case = ET.SubElement(
                suite,
                "testcase",
                classname=f"conformance.{group.value}",
                name=f"{item.id}: {item.spec.title}",
                time="0",
            )
            if item.status is Status.FAIL:
                failure = ET.SubElement(
                    case, "failure", message=item.detail, type=f"severity:{item.spec.severity}"
                )
                failure.text = f"{item.detail}\nReference: {item.spec.reference}"
            elif item.status is Status.SKIP:
                ET.SubElement(case, "skipped", message=item.detail)
            else:
                ET.SubElement(case, "system-out").text = f"{item.status}: {item.detail}"
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, "unicode") + "\n"


# Terminal.

_ANSI = {
    Status.PASS: "\033[32m",
    Status.FAIL: "\033[1;31m",
    Status.SKIP: "\033[33m",
    Status.INFO: "\033[36m",
}
_BOLD, _RESET = "\033[1m", "\033[0m"


def to_terminal(report: Report, colour: bool = False) -> str:
    """A summary for people at a terminal; coloured when ``colour``."""

    def paint(code: str, text: str) -> str:
        return f"{code}{text}{_RESET}" if colour else text

    lines = [
        paint(_BOLD, f"linerelay conformance: {report.target}"),
        f"profile {report.profile}, {len(report.results)} checks in {report.seconds:.1f} s",
    ]
    for group in Group:
        lines.append("")
        lines.append(paint(_BOLD, GROUP_TITLES[group]))
        for item in (i for i in report.results if i.spec.group is group):
            label = paint(_ANSI[item.status], f"{item.status.value.upper():<4}")
            lines.append(f"  {label}  {item.id:<30} {item.spec.title}")
            if item.status is not Status.PASS:
                lines.append(f"        {item.detail}")
    counts = ", ".join(f"{report.count(status)} {status.value}" for status in Status)
    verdict = (
        paint(_ANSI[Status.FAIL], "FAIL: " + ", ".join(item.id for item in report.failed))
        if report.failed
        else paint(_ANSI[Status.PASS], "PASS: no check failed")
    )
    lines += ["", f"{counts}", verdict]
    return "\n".join(lines) + "\n"


# HTML.

_CSS = """
:root { --pass:#1a7f37; --fail:#cf222e; --skip:#9a6700; --info:#0969da; --ink:#1f2328;
        --muted:#59636e; --line:#d1d9e0; --bg:#f6f8fa; }
* { box-sizing: border-box; }
body { margin:0; font:15px/1.5 system-ui,-apple-system,"Segoe UI",sans-serif; color:var(--ink);
       background:var(--bg); }
main { max-width:1100px; margin:0 auto; padding:24px; }
header.verdict { border-radius:10px; padding:20px 24px; color:#fff; margin-bottom:20px; }
header.verdict.pass { background:var(--pass); } header.verdict.fail { background:var(--fail); }
header.verdict h1 { margin:0 0 4px; font-size:26px; }
header.verdict p { margin:0; opacity:.95; word-break:break-all; }
.counts { display:flex; gap:12px; margin:0 0 24px; flex-wrap:wrap; }
.count { background:#fff; border:1px solid var(--line); border-radius:8px; padding:10px 18px;
         min-width:110px; }
.count b { display:block; font-size:28px; }
.count.pass b { color:var(--pass); } .count.fail b { color:var(--fail); }
.count.skip b { color:var(--skip); } .count.info b { color:var(--info); }
section { background:#fff; border:1px solid var(--line); border-radius:10px; margin:0 0 20px;
          overflow:hidden; }
section h2 { margin:0; padding:12px 18px; font-size:17px; border-bottom:1px solid var(--line);
             background:#fbfcfd; }
.failed h2 { color:var(--fail); }
.check { padding:12px 18px; border-bottom:1px solid var(--line); display:grid;
         grid-template-columns:70px 1fr; gap:4px 14px; }
.check:last-child { border-bottom:0; }
.pill { grid-row:span 3; align-self:start; text-align:center; font-weight:700; font-size:12px;
        letter-spacing:.05em; color:#fff; border-radius:999px; padding:3px 0; }
.pill.pass { background:var(--pass); } .pill.fail { background:var(--fail); }
.pill.skip { background:var(--skip); } .pill.info { background:var(--info); }
.title { font-weight:600; } .title code { font-weight:400; color:var(--muted); margin-left:6px; }
.sev { font-size:12px; color:var(--muted); margin-left:8px; text-transform:uppercase; }
.detail { font-family:ui-monospace,SFMono-Regular,Menlo,monospace; font-size:13px;
          white-space:pre-wrap; word-break:break-word; }
details { color:var(--muted); font-size:14px; } summary { cursor:pointer; }
.check.fail { background:#fff5f5; }
footer { color:var(--muted); font-size:13px; }
"""


def _linked(reference: str) -> str:
    parts = []
    for piece in reference.split("; "):
        if piece.startswith(("https://", "http://")):
            url = html.escape(piece, quote=True)
            parts.append(f'<a href="{url}">{html.escape(piece)}</a>')
        else:
            parts.append(html.escape(piece))
    return "; ".join(parts)


def _check_html(item: CheckResult, anchor: bool) -> str:
    status = item.status.value
    id_attr = f' id="check-{html.escape(item.id)}"' if anchor else ""
    return (
        f'<div class="check {status}"{id_attr} data-check="{html.escape(item.id)}" '
        f'data-status="{status}">'
        f'<span class="pill {status}">{status.upper()}</span>'
        f'<div class="title">{html.escape(item.spec.title)}<code>{html.escape(item.id)}</code>'
        f'<span class="sev">{html.escape(item.spec.severity.value)}</span></div>'
        f'<div class="detail">{html.escape(item.detail)}</div>'
        f"<details><summary>What this means</summary><p>{html.escape(item.spec.meaning)}</p>"
        f"<p>Reference: {_linked(item.spec.reference)}</p></details>"
        "</div>"
    )


def to_html(report: Report) -> str:
    """One self-contained page (inline CSS, no script, no external resources)."""
    verdict = "fail" if report.failed else "pass"
    headline = f"{len(report.failed)} check(s) failed" if report.failed else "No check failed"
    counts = "".join(
        f'<div class="count {status.value}"><b>{report.count(status)}</b>{status.value}</div>'
        for status in Status
    )
    body = []
    if report.failed:
        body.append('<section class="failed"><h2>Failed checks: fix these first</h2>')
        worst_first = sorted(
            report.failed, key=lambda item: _SEVERITY_ORDER.index(item.spec.severity)
        )
        body += [_check_html(item, anchor=False) for item in worst_first]
        body.append("</section>")
    for group in Group:
        members = [item for item in report.results if item.spec.group is group]
        body.append(f"<section><h2>{html.escape(GROUP_TITLES[group])}</h2>")
        body += [_check_html(item, anchor=True) for item in members]
        body.append("</section>")
    when = report.started_at.strftime("%Y-%m-%d %H:%M:%S UTC")
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>linerelay conformance: {verdict.upper()} ({html.escape(report.target)})</title>
<style>{_CSS}</style>
</head>
<body>
<main>
<header class="verdict {verdict}">
<h1>{verdict.upper()}: {headline}</h1>
<p>{html.escape(report.target)}</p>
<p>profile <b>{html.escape(report.profile)}</b> &middot; {when} &middot;
{report.seconds:.1f} s &middot; {len(report.results)} checks</p>
</header>
<div class="counts">{counts}</div>
{"".join(body)}
<footer>
<p>PASS: meets the requirement. FAIL: does not; the detail says what was seen and
&ldquo;What this means&rdquo; why it matters. SKIP: could not be checked (the detail
says why). INFO: reported, never a failure. Catalogue: {len(CATALOGUE)} checks.</p>
</footer>
</main>
</body>
</html>
"""


RENDERERS: dict[str, Callable[[Report], str]] = {
    "json": to_json,
    "junit": to_junit,
    "html": to_html,
}
