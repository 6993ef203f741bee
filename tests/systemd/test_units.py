"""The shipped systemd units: well-formed and hardened."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

UNITS = sorted((Path(__file__).resolve().parents[2] / "systemd").glob("*.service"))
needs_systemd = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed"
)


def test_both_units_ship() -> None:
    assert {u.name for u in UNITS} == {"linerelay.service", "linerelay-bridge@.service"}


@needs_systemd
@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.name)
def test_unit_exposure_stays_low(unit: Path) -> None:
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", str(unit)],
        capture_output=True,
        text=True,
        check=False,
    )
    match = re.search(r"Overall exposure level for \S+: ([\d.]+)", result.stdout + result.stderr)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= 2.0


@needs_systemd
@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.name)
def test_unit_parses_without_warnings(unit: Path) -> None:
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, check=False
    )
    # The only complaint allowed: the program is not installed on the test machine.
    complaints = [
        line
        for line in result.stderr.splitlines()
        if line.strip() and "is not executable" not in line and "not found" not in line
    ]
    assert complaints == []


def test_relay_unit_reloads_with_sighup_and_runs_unprivileged() -> None:
    text = (UNITS[1] if UNITS[1].name == "linerelay.service" else UNITS[0]).read_text()
    assert "ExecReload=/bin/kill -HUP $MAINPID" in text
    assert "User=linerelay" in text
    assert "NoNewPrivileges=yes" in text
