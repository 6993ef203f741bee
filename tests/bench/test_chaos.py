"""The chaos soak's short version (bench/chaos.py), in the ordinary suite.

Signed traffic to three tenants whose bridges churn, while the relay is
killed with SIGKILL and restarted, its store is locked by the sqlite3 shell,
and (where this process may mount a tmpfs) its state dir fills up. Every
webhook answered 200 must reach a bridge byte for byte; answers are 200 or
503 only. The relay runs with a short nack backoff so the drains are quick.
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


def soak(tmp_path: Path, *args: str) -> dict[str, Any]:
    """Run ``python -m bench.chaos ARGS``; its JSON summary."""
    config = tmp_path / "relay.toml"
    config.write_text("nack_backoff = 0.05\n")
    out = tmp_path / "chaos.json"
    run = subprocess.run(
        [
            *(sys.executable, "-m", "bench.chaos", *args, "--relay-config", str(config)),
            *("--drain", "20", "--final-drain", "30", "--json", str(out)),
        ],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert out.exists(), (
        f"the soak did not finish (exit {run.returncode}):\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    )
    summary: dict[str, Any] = json.loads(out.read_text())
    return summary


def test_kill_9_and_a_locked_store_lose_no_webhook(tmp_path: Path) -> None:
    summary = soak(tmp_path, "--duration", "30", "--faults", "kill,lock", "--steady", "3")
    assert summary["problems"] == [], f"seed {summary['seed']}: {summary['problems']}"
    assert {f["fault"] for f in summary["faults"]} == {"kill", "lock"}
    assert summary["accepted"] > 400
    assert summary["delivered"] >= summary["accepted"]
    # The faults bit: the relay was unreachable while killed, and answered 503
    # (never 200) while the store was locked past the acknowledgement deadline.
    kills = [f for f in summary["faults"] if f["fault"] == "kill"]
    assert any(f["statuses"].get("0") for f in kills), kills
    locks = [f for f in summary["faults"] if f["fault"] == "lock"]
    assert any(f["statuses"].get("503") for f in locks), locks
    assert all(f["recovery_s"] is not None for f in summary["faults"])


def test_a_full_disk_is_answered_503_loses_nothing_and_recovers_unaided(tmp_path: Path) -> None:
    summary = soak(tmp_path, "--duration", "20", "--faults", "disk", "--steady", "3")
    disks = summary["faults"]
    assert disks, "no disk fault ran"
    assert any(f["statuses"].get("503") for f in disks), disks  # the disk really filled up
    assert all(f["recovery_s"] is not None for f in disks), disks
    assert summary["problems"] == [], f"seed {summary['seed']}: {summary['problems']}"
    assert summary["delivered"] >= summary["accepted"]
