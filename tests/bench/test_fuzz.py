"""The network fuzzer's short run (bench/fuzz.py), in the ordinary suite.

A few thousand mutated HTTP/1.1 requests, HTTP/2 frame sequences and bridge
WebSocket frames against a real relay over TLS; after every batch the relay
must be alive and a legitimate signed webhook must get a 200 and reach its
bridge. The seed is fixed so a failure here replays exactly (the failure
message names the inputs); ``LINERELAY_FUZZ_SEED`` explores another one.
The long run (100,000 inputs) is in the README.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SEED = int(os.environ.get("LINERELAY_FUZZ_SEED", "20261203"))
INPUTS = 2400


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One short fuzz run for the module; its JSON report."""
    out = tmp_path_factory.mktemp("fuzz") / "report.json"
    run = subprocess.run(
        [
            *(sys.executable, "-m", "bench.fuzz", "--inputs", str(INPUTS)),
            *("--seed", str(SEED), "--json", str(out)),
        ],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.exists(), (
        f"the fuzzer did not finish (exit {run.returncode}):\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    )
    result: dict[str, Any] = json.loads(out.read_text())
    return result


def test_every_input_was_sent_and_every_kind_answered(report: dict[str, Any]) -> None:
    assert report["inputs"] == INPUTS
    for kind in ("http1", "http2"):
        answered = sum(
            n
            for k, n in report["outcomes"].items()
            if k.startswith(f"{kind}:") and k[-3:].isdigit()
        )
        assert answered > INPUTS // 10, report["outcomes"]
    # Authenticated bridge connections were opened and fed frames (no 401 or 429 on upgrade).
    reached = sum(
        n for k, n in report["outcomes"].items() if k.startswith("ws:") and "upgrade" not in k
    )
    assert reached > INPUTS // 10, report["outcomes"]


def test_relay_stays_alive_and_keeps_serving_legitimate_webhooks(report: dict[str, Any]) -> None:
    broken = [f for f in report["failures"] if f["check"] in ("alive", "legitimate webhook")]
    assert not broken, f"seed {SEED}: {broken}"
    assert report["restarts"] == 0


def test_no_input_gets_a_server_error(report: dict[str, Any]) -> None:
    errors = [f for f in report["failures"] if f["check"] == "5xx"]
    assert not errors, f"seed {SEED}: {errors}"


def test_memory_stays_bounded(report: dict[str, Any]) -> None:
    grown = [f for f in report["failures"] if f["check"] == "rss"]
    assert not grown, f"seed {SEED}: {grown}"


def test_fuzzing_writes_no_error_level_log_line(report: dict[str, Any]) -> None:
    noisy = [f for f in report["failures"] if f["check"] == "log"]
    assert not noisy, f"seed {SEED}: {noisy[:3]}; e.g. {report['error_lines'][:3]}"


def test_no_secret_token_or_signature_reaches_the_log(report: dict[str, Any]) -> None:
    leaks = [f for f in report["failures"] if f["check"] == "leak"]
    assert not leaks, f"seed {SEED}: {leaks}"
