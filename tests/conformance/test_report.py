"""Report rendering and the catalogue, on a hand-made report (no sockets)."""

from __future__ import annotations

import datetime
import json
import xml.etree.ElementTree as ET
from pathlib import Path

from conformance import report
from conformance.catalogue import CATALOGUE, Group, Status, result
from conformance.cli import PROFILE_NAMES, REPORT_FORMATS
from conformance.profiles import PROFILES
from conformance.runner import Report


def sample() -> Report:
    results = [result(spec.id, Status.PASS, "fine") for spec in CATALOGUE.values()]
    results[0] = result(results[0].id, Status.FAIL, "accepts TLS 1.0 <script>alert(1)</script>")
    results[1] = result(results[1].id, Status.SKIP, "sslyze could not tell")
    results[2] = result(results[2].id, Status.INFO, "for your information")
    return Report(
        target="https://relay.example/webhook/acme",
        profile="modern",
        started_at=datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC),
        seconds=4.2,
        results=results,
    )


def test_catalogue_entries_are_complete_and_cover_every_group():
    assert len(CATALOGUE) >= 30
    for spec in CATALOGUE.values():
        assert spec.id.startswith(("tls-", "cert-", "webhook-"))
        assert spec.title
        assert spec.reference
        assert spec.meaning
    assert {spec.group for spec in CATALOGUE.values()} == set(Group)


def test_json_report_rows_have_exactly_the_contract_keys_and_summary_counts():
    document = json.loads(report.to_json(sample()))
    assert set(document) == {"checks", "summary"}
    assert all(
        set(row) == {"id", "title", "status", "severity", "detail", "reference"}
        for row in document["checks"]
    )
    summary = document["summary"]
    assert (summary["fail"], summary["skip"], summary["info"]) == (1, 1, 1)
    assert summary["pass"] == len(CATALOGUE) - 3
    assert summary["failed"] == [sample().results[0].id]
    assert summary["result"] == "fail"


def test_junit_counts_failures_and_skips_per_suite():
    root = ET.fromstring(report.to_junit(sample()))
    assert root.get("failures") == "1"
    assert root.get("skipped") == "1"
    assert root.get("tests") == str(len(CATALOGUE))
    failures = root.findall(".//failure")
    assert len(failures) == 1
    assert "TLS 1.0" in (failures[0].get("message") or "")
    assert len(root.findall(".//skipped")) == 1


def test_html_escapes_evidence_and_lists_the_failed_check_first():
    page = report.to_html(sample())
    assert "<script>alert(1)</script>" not in page
    assert "&lt;script&gt;" in page
    failed_id = sample().results[0].id
    failed_section = page.index("Failed checks")
    assert page.index(f'data-check="{failed_id}"') > failed_section
    assert page.startswith("<!DOCTYPE html>")


def test_terminal_summary_is_coloured_only_when_asked():
    plain = report.to_terminal(sample(), colour=False)
    coloured = report.to_terminal(sample(), colour=True)
    assert "\033[" not in plain
    assert "\033[1;31m" in coloured
    assert plain.splitlines()[-1] == f"FAIL: {sample().results[0].id}"


def test_a_report_without_failures_says_pass_everywhere():
    clean = sample()
    clean.results = [result(item.id, Status.PASS, "ok") for item in clean.results]
    assert json.loads(report.to_json(clean))["summary"]["result"] == "pass"
    assert "PASS: No check failed" in report.to_html(clean)
    assert report.to_terminal(clean).splitlines()[-1] == "PASS: no check failed"


def test_the_security_teams_page_explains_every_check():
    page = (Path(__file__).parents[2] / "docs" / "conformance.md").read_text()
    missing = [check_id for check_id in CATALOGUE if f"`{check_id}`" not in page]
    assert not missing


def test_the_command_offers_every_profile_and_report_format():
    assert set(PROFILE_NAMES) == set(PROFILES)
    assert set(REPORT_FORMATS) == set(report.RENDERERS)
