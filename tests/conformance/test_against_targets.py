"""The suite proves itself: real broken targets, real sslyze scans, real reports parsed back.

Each deliberately broken target must be caught by the check meant to catch
it (and not blamed for what it does right); the real relay on its embedded
default must pass with no failure.
"""

from __future__ import annotations

import os
import pty
import re
import shutil
import struct
import subprocess
import sys
import xml.etree.ElementTree as ET
import zlib
from collections import Counter
from pathlib import Path

import httpx
import pytest

from tests.support.relay import LINERELAY, free_port
from tls import pki as tls_pki

pytestmark = pytest.mark.integration

TARGET_SCRIPT = Path(__file__).parent / "target.py"


# One run per target for the whole module: sslyze scans are the slow part.


@pytest.fixture(scope="module")
def stock_run(start_target, run_conformance, pki: tls_pki.DevPKI, tmp_path_factory):
    """Hypercorn's stock SSLContext (TLS 1.2 allowed), full chain, correct behaviour."""
    target = start_target("--certfile", str(pki.chain), "--keyfile", str(pki.key), "--tls", "stock")
    return run_conformance(
        tmp_path_factory.mktemp("stock"), target.url(), "--ca", str(pki.root), "--requests", "3"
    )


@pytest.fixture(scope="module")
def leaf_only_run(start_target, run_conformance, pki: tls_pki.DevPKI, tmp_path_factory):
    """TLS 1.3 only, but the server sends its leaf without the intermediate."""
    target = start_target("--certfile", str(pki.leaf), "--keyfile", str(pki.key), "--tls", "modern")
    return run_conformance(
        tmp_path_factory.mktemp("leaf"),
        target.url(),
        "--ca",
        str(pki.root),
        "--only",
        "tls",
        "--only",
        "certificate",
    )


@pytest.fixture(scope="module")
def relay_run(relay_target, relay_url, run_conformance, tmp_path_factory):
    """The real relay on its embedded default, default (modern) profile."""
    return run_conformance(
        tmp_path_factory.mktemp("relay"), relay_url, "--ca", str(relay_target.ca_file)
    )


def test_tls12_on_hypercorns_stock_context_fails_the_modern_protocol_check(stock_run):
    assert stock_run.returncode == 1
    assert stock_run.status("tls-protocols") == "fail"
    assert "TLS 1.2" in stock_run.detail("tls-protocols")
    # What the stock target does right is not blamed.
    for check_id in (
        "cert-chain-complete",
        "cert-trusted",
        "webhook-verify-http1",
        "webhook-signature-wrong",
        "tls-cipher-3des",
        "tls-cipher-cbc",
    ):
        assert stock_run.status(check_id) == "pass", check_id


def test_the_intermediate_profile_accepts_tls12_with_ecdhe_aead(
    start_target, run_conformance, pki: tls_pki.DevPKI, tmp_path
):
    target = start_target("--certfile", str(pki.chain), "--keyfile", str(pki.key), "--tls", "stock")
    run = run_conformance(
        tmp_path, target.url(), "--ca", str(pki.root), "--profile", "intermediate", "--only", "tls"
    )
    assert run.status("tls-protocols") == "pass"
    assert run.status("tls-cipher-profile") == "pass"


def test_a_leaf_only_chain_fails_the_chain_completeness_check(leaf_only_run):
    assert leaf_only_run.returncode == 1
    assert leaf_only_run.status("cert-chain-complete") == "fail"
    assert "fullchain.pem" in leaf_only_run.detail("cert-chain-complete")
    assert leaf_only_run.status("tls-protocols") == "pass"
    assert leaf_only_run.status("cert-hostname") == "pass"
    # --only leaves the webhook group out, reported as skipped.
    assert leaf_only_run.status("webhook-latency") == "skip"


def test_a_misordered_chain_with_the_root_fails_the_order_check(
    start_target, run_conformance, pki: tls_pki.DevPKI, tmp_path
):
    misordered = tmp_path / "misordered.pem"
    misordered.write_bytes(
        pki.leaf.read_bytes() + pki.root.read_bytes() + pki.intermediate.read_bytes()
    )
    target = start_target("--certfile", str(misordered), "--keyfile", str(pki.key))
    run = run_conformance(
        tmp_path / "run", target.url(), "--ca", str(pki.root), "--only", "certificate"
    )
    assert run.failed() == {"cert-chain-order"}
    assert "wrong order" in run.detail("cert-chain-order")
    assert run.status("cert-root-sent") == "info"
    assert run.status("cert-chain-complete") == "pass"


def test_a_server_accepting_any_signature_fails_every_signature_check(
    start_target, run_conformance, pki: tls_pki.DevPKI, tmp_path
):
    target = start_target(
        "--certfile",
        str(pki.chain),
        "--keyfile",
        str(pki.key),
        "--behaviour",
        "accept-any",
    )
    run = run_conformance(tmp_path, target.url(), "--only", "webhook", "--requests", "3")
    assert run.returncode == 1
    assert {
        "webhook-signature-missing",
        "webhook-signature-wrong",
        "webhook-body-tampered",
        "webhook-reserialised-json",
    } <= run.failed()
    assert run.status("webhook-verify-http1") == "pass"
    assert run.status("webhook-latency") == "pass"


def test_a_server_answering_after_1_2_seconds_fails_the_budget_checks(
    start_target, run_conformance, pki: tls_pki.DevPKI, tmp_path
):
    target = start_target(
        "--certfile", str(pki.chain), "--keyfile", str(pki.key), "--behaviour", "slow"
    )
    run = run_conformance(tmp_path, target.url(), "--only", "webhook", "--requests", "2")
    assert run.returncode == 1
    assert {"webhook-latency", "webhook-verify-http1", "webhook-verify-http2"} <= run.failed()
    assert "over budget" in run.detail("webhook-latency")
    assert run.status("webhook-signature-wrong") == "pass"


def test_a_server_without_http2_fails_only_the_http2_check(
    start_target, run_conformance, pki: tls_pki.DevPKI, tmp_path
):
    target = start_target("--certfile", str(pki.chain), "--keyfile", str(pki.key), "--no-h2")
    run = run_conformance(tmp_path, target.url(), "--only", "webhook", "--requests", "1")
    assert run.failed() == {"webhook-verify-http2"}
    assert run.status("webhook-verify-http1") == "pass"


def _triple_des_unavailable() -> str | None:
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; sys.path.insert(0, sys.argv[1]); import target; "
            "print(target.triple_des_available() or '')",
            str(TARGET_SCRIPT.parent),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return probe.stdout.strip() or None


def test_3des_enabled_fails_the_sweet32_check(
    start_target, run_conformance, pki: tls_pki.DevPKI, tmp_path
):
    reason = _triple_des_unavailable()
    if reason:
        pytest.skip(reason)
    target = start_target("--certfile", str(pki.chain), "--keyfile", str(pki.key), "--tls", "3des")
    run = run_conformance(tmp_path, target.url(), "--ca", str(pki.root), "--only", "tls")
    assert run.status("tls-cipher-3des") == "fail"
    assert "3DES" in run.detail("tls-cipher-3des")


def test_the_real_relay_on_its_embedded_default_passes_with_no_failure(relay_run):
    assert relay_run.returncode == 0, relay_run.stdout + relay_run.stderr
    report = relay_run.report
    assert report["summary"]["fail"] == 0
    assert report["summary"]["result"] == "pass"
    statuses = Counter(check["status"] for check in report["checks"])
    # Everything was actually checked: only the informational checks are not a pass.
    assert statuses["skip"] == 0
    assert statuses["pass"] >= 30


def test_the_suite_queues_nothing_on_the_relay(relay_run, relay_target):
    # Every signed body is a Verify (events: []): the relay counts them as "verify" and
    # accepts (queues for a bridge) none.
    assert relay_run.returncode == 0
    metrics = httpx.get(f"{relay_target.admin_url}/metrics", timeout=10).text
    outcomes = dict(
        re.findall(r'linerelay_webhooks_total\{outcome="([a-z_]+)"\} ([0-9.e+]+)', metrics)
    )
    assert float(outcomes["accepted"]) == 0
    assert float(outcomes["verify"]) >= 20  # the latency series alone sends 20


def test_a_missing_secret_file_exits_2(tmp_path: Path):
    done = subprocess.run(
        [
            LINERELAY,
            "conformance",
            "https://127.0.0.1:1/webhook/acme",
            "--tenant-secret-file",
            str(tmp_path / "nope"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "nope" in done.stderr


def test_the_json_report_has_exactly_the_contract_keys(relay_run):
    report = relay_run.report
    assert set(report) == {"checks", "summary"}
    for check in report["checks"]:
        assert set(check) == {"id", "title", "status", "severity", "detail", "reference"}
        assert check["status"] in {"pass", "fail", "skip", "info"}
    assert len({check["id"] for check in report["checks"]}) == len(report["checks"])


def test_the_junit_report_matches_the_json_report(stock_run):
    root = ET.parse(stock_run.junit_path).getroot()
    assert root.tag == "testsuites"
    checks = stock_run.report["checks"]
    suites = root.findall("testsuite")
    cases = [case for suite in suites for case in suite.findall("testcase")]
    assert len(cases) == len(checks) == int(root.get("tests", "-1"))
    failed = {c.get("name", "").split(":")[0] for c in cases if c.find("failure") is not None}
    skipped = {c.get("name", "").split(":")[0] for c in cases if c.find("skipped") is not None}
    assert failed == stock_run.failed()
    assert skipped == {c["id"] for c in checks if c["status"] == "skip"}
    assert int(root.get("failures", "-1")) == len(failed)
    for suite in suites:
        members = suite.findall("testcase")
        assert int(suite.get("tests", "-1")) == len(members)
        assert int(suite.get("failures", "-1")) == sum(
            1 for c in members if c.find("failure") is not None
        )
        assert int(suite.get("skipped", "-1")) == sum(
            1 for c in members if c.find("skipped") is not None
        )


def test_the_terminal_summary_names_the_failed_checks(stock_run):
    assert "FAIL: " in stock_run.stdout
    assert "tls-protocols" in stock_run.stdout.splitlines()[-1]
    assert "\033[" not in stock_run.stdout  # not a TTY: no colour codes


# The HTML report, rendered by a real browser.

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")


def _chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    return subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )


def png_pixels(data: bytes) -> tuple[int, int, list[tuple[int, ...]]]:
    """Decode an 8-bit RGB/RGBA PNG (what Chromium writes) into (width, height, pixels)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width, height, channels = 8, b"", 0, 0, 0
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        chunk = data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, colour = struct.unpack(">IIBB", chunk[:10])
            assert depth == 8
            assert colour in (2, 6)
            channels = 3 if colour == 2 else 4
        elif kind == b"IDAT":
            idat += chunk
        pos += 12 + length
    raw = zlib.decompress(idat)
    stride = width * channels
    rows: list[bytearray] = []
    previous = bytearray(stride)
    for y in range(height):
        line = raw[y * (stride + 1) : (y + 1) * (stride + 1)]
        kind, row = line[0], bytearray(line[1:])
        for i in range(stride):
            left = row[i - channels] if i >= channels else 0
            up = previous[i]
            corner = previous[i - channels] if i >= channels else 0
            if kind == 1:
                row[i] = (row[i] + left) & 0xFF
            elif kind == 2:
                row[i] = (row[i] + up) & 0xFF
            elif kind == 3:
                row[i] = (row[i] + (left + up) // 2) & 0xFF
            elif kind == 4:
                p = left + up - corner
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
                pred = left if pa <= pb and pa <= pc else up if pb <= pc else corner
                row[i] = (row[i] + pred) & 0xFF
        rows.append(row)
        previous = row
    pixels = [tuple(row[x * channels : x * channels + 3]) for row in rows for x in range(width)]
    return width, height, pixels


@needs_chromium
def test_the_html_report_shows_the_failed_checks_in_a_browser(stock_run, tmp_path: Path):
    dom = _chromium(tmp_path, "--dump-dom", stock_run.html_path.as_uri()).stdout
    failed = stock_run.failed()
    assert failed
    for check_id in failed:
        assert f'data-check="{check_id}" data-status="fail"' in dom
    assert "Failed checks" in dom
    # Self-contained: nothing to fetch.
    html = stock_run.html_path.read_text()
    assert "<script" not in html
    assert 'src="http' not in html
    assert '<link rel="stylesheet"' not in html


@needs_chromium
def test_the_html_report_screenshot_is_not_blank_and_shows_red(stock_run, tmp_path: Path):
    shot = tmp_path / "report.png"
    _chromium(
        tmp_path, f"--screenshot={shot}", "--window-size=1000,800", stock_run.html_path.as_uri()
    )
    width, height, pixels = png_pixels(shot.read_bytes())
    assert (width, height) == (1000, 800)
    colours = Counter(pixels)
    assert len(colours) > 50  # text, badges, borders: not a blank page
    background_share = colours.most_common(1)[0][1] / len(pixels)
    assert background_share < 0.9
    # The failure banner is drawn in the report's red (#cf222e).
    red = sum(n for (r, g, b), n in colours.items() if r > 180 and g < 70 and b < 80)
    assert red > 0.01 * len(pixels)


# Could not run: exit status 2, and no report pretending otherwise.


def test_connection_refused_exits_2(run_conformance, tmp_path: Path):
    run = run_conformance(tmp_path, f"https://127.0.0.1:{free_port()}/webhook/acme")
    assert run.returncode == 2
    assert "cannot connect" in run.stderr
    assert not run.json_path.exists()


def test_a_bad_url_exits_2(run_conformance, tmp_path: Path):
    run = run_conformance(tmp_path, "http://127.0.0.1:1/webhook/acme")
    assert run.returncode == 2
    assert "https" in run.stderr


def test_an_unreadable_ca_file_exits_2(run_conformance, tmp_path: Path):
    run = run_conformance(
        tmp_path, "https://127.0.0.1:443/webhook/acme", "--ca", str(tmp_path / "missing.pem")
    )
    assert run.returncode == 2
    assert "missing.pem" in run.stderr


def test_a_wrong_tenant_secret_fails_the_valid_signature_checks(
    relay_url, run_conformance, tmp_path: Path
):
    run = run_conformance(
        tmp_path, relay_url, "--only", "webhook", "--requests", "1", secret="not-the-tenant-secret"
    )
    assert run.returncode == 1
    assert run.status("webhook-verify-http1") == "fail"
    assert "401" in run.detail("webhook-verify-http1")


def _drain(fd: int) -> bytes:
    output = b""
    try:
        while chunk := os.read(fd, 65536):
            output += chunk
    except OSError:  # EIO: the other side is closed and everything was read
        pass
    finally:
        os.close(fd)
    return output


def test_the_terminal_summary_is_coloured_on_a_tty(relay_url):
    controller, terminal = pty.openpty()
    try:
        proc = subprocess.Popen(
            [
                LINERELAY,
                "conformance",
                relay_url,
                "--tenant-secret",
                "not-the-secret",
                "--only",
                "webhook",
                "--requests",
                "1",
            ],
            stdout=terminal,
            stderr=subprocess.DEVNULL,
        )
    finally:
        os.close(terminal)
    output = _drain(controller)  # read while it runs: a full pty would block the child
    assert proc.wait(timeout=120) == 1
    assert b"\x1b[1;31mFAIL" in output
