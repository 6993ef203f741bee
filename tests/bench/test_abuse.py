"""The abuse harness (bench/abuse.py) end to end, on its two quick probes.

Not a test of the relay's defences (those are issue 9's own tests): it keeps
the harness working. A real relay under legitimate load from 127.0.0.1 and an
attacker process on 127.0.0.2; every figure the report promises must be there,
and the legitimate traffic must be clean before the attack and fully
delivered after it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def run_abuse(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], Any]:
    """``python -m bench.abuse ARGS --json FILE``, which must succeed; its run and report."""
    out = tmp_path / "abuse.json"
    run = subprocess.run(
        [sys.executable, "-m", "bench.abuse", *args, "--json", str(out)],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return run, json.loads(out.read_text())


def test_harness_reports_every_figure_for_each_attack(tmp_path: Path) -> None:
    run, reports = run_abuse(
        tmp_path,
        *("--attack", "smuggle", "signature_variants"),
        *("--duration", "3", "--baseline", "2", "--settle", "2", "--rate", "50"),
    )
    assert [r["attack"] for r in reports] == ["smuggle", "signature_variants"]
    for report in reports:
        attacker, legit, relay = report["attacker"], report["legit"], report["relay"]
        assert "error" not in attacker, attacker
        assert attacker["requests"] > 0
        assert attacker["source"] == "127.0.0.2"
        assert legit["baseline"]["requests"] >= 50
        assert legit["baseline"]["non_200"] == 0, legit["baseline"]
        assert legit["baseline"]["p99_ms"] is not None
        assert legit["lost"] == 0
        assert legit["mismatched_total_so_far"] == 0
        for figure in ("rss_kib", "fds"):
            assert all(isinstance(relay[figure][k], int) for k in ("before", "peak", "after"))
        assert relay["log_during"]["lines"] > 0
        for phase in ("log_baseline", "log_during", "log_after"):
            assert relay[phase]["leaks"] == 0, f"{report['attack']}: secrets in the relay's log"
        assert relay["restarted"] is False
        # The human-readable block went to stdout too.
        assert f"== {report['attack']} ==" in run.stdout
    # No secret reached the report.
    assert "secret" not in reports[0]["params"]
    assert "token" not in reports[0]["params"]


def test_abandoned_connections_are_forgotten(tmp_path: Path) -> None:
    _, reports = run_abuse(
        tmp_path,
        *("--attack", "abandon"),
        *("--duration", "10", "--baseline", "2", "--settle", "3", "--rate", "20"),
    )
    report = reports[0]
    assert report["attacker"]["opened"] >= 500
    rss = report["relay"]["rss_kib"]
    # 1,000 abandoned connections may cost the allocator a little, not a copy of each.
    assert rss["after"] - rss["before"] < 16 * 1024, rss
