"""Fixtures for the conformance suite's own tests: a dev PKI, broken targets, real runs.

Every target is a real Hypercorn process (target.py beside this file) with
certificates from :mod:`tls.pki`; every run is the real
``linerelay conformance`` command writing all three report formats. Each
target is scanned once per session: sslyze scans are the slow part.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.processes import stop
from tests.support.relay import LINERELAY, RelayProcess
from tls import pki as tls_pki

HERE = Path(__file__).parent
TARGET = HERE / "target.py"
SECRET = "conformance-test-secret"
TENANT = "acme"


@dataclass
class Run:
    """One finished ``linerelay conformance`` run and its reports."""

    returncode: int
    stdout: str
    stderr: str
    json_path: Path
    junit_path: Path
    html_path: Path

    @property
    def report(self) -> dict[str, Any]:
        """The JSON report, parsed."""
        data: dict[str, Any] = json.loads(self.json_path.read_text())
        return data

    def status(self, check_id: str) -> str:
        """The status of ``check_id`` in the JSON report."""
        for check in self.report["checks"]:
            if check["id"] == check_id:
                return str(check["status"])
        raise KeyError(check_id)

    def detail(self, check_id: str) -> str:
        """The detail of ``check_id`` in the JSON report."""
        return next(str(c["detail"]) for c in self.report["checks"] if c["id"] == check_id)

    def failed(self) -> set[str]:
        """Ids of the failed checks."""
        return {c["id"] for c in self.report["checks"] if c["status"] == "fail"}


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> tls_pki.DevPKI:
    """root -> intermediate -> leaf for localhost and 127.0.0.1."""
    return tls_pki.create(tmp_path_factory.mktemp("pki"), ["localhost", "127.0.0.1"])


@dataclass
class Target:
    """A running target.py process."""

    proc: subprocess.Popen[str]
    port: int

    def url(self) -> str:
        """Its webhook URL."""
        return f"https://127.0.0.1:{self.port}/webhook/{TENANT}"


def _start_target(*args: str) -> Target:
    proc = subprocess.Popen(
        [sys.executable, str(TARGET), "--secret", SECRET, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("PORT "):
        proc.kill()
        _, err = proc.communicate(timeout=30)
        raise RuntimeError(f"target did not start: {line}{err}")
    return Target(proc, int(line.split()[1]))


@pytest.fixture(scope="session")
def start_target() -> Iterator[Callable[..., Target]]:
    """Start target.py with the given options; every process is stopped at the end."""
    started: list[Target] = []

    def start(*args: str) -> Target:
        target = _start_target(*args)
        started.append(target)
        return target

    yield start
    for target in started:
        stop(target.proc)


def _conformance(tmp: Path, url: str, *args: str, secret: str = SECRET) -> Run:
    """Run the real command with all three reports; return the run."""
    tmp.mkdir(parents=True, exist_ok=True)
    run = Run(0, "", "", tmp / "report.json", tmp / "report.xml", tmp / "report.html")
    completed = subprocess.run(
        [
            LINERELAY,
            "conformance",
            url,
            "--tenant-secret",
            secret,
            "--report",
            "json",
            str(run.json_path),
            "--report",
            "junit",
            str(run.junit_path),
            "--report",
            "html",
            str(run.html_path),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    run.returncode, run.stdout, run.stderr = (
        completed.returncode,
        completed.stdout,
        completed.stderr,
    )
    return run


@pytest.fixture(scope="session")
def relay_target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayProcess]:
    """The real relay on its embedded default, with one tenant."""
    relay = RelayProcess(tmp_path_factory.mktemp("relay") / "state").start(timeout=60)
    try:
        relay.add_tenant(TENANT, SECRET)
        yield relay
    finally:
        relay.stop()


@pytest.fixture(scope="session")
def run_conformance() -> Callable[..., Run]:
    """``run_conformance(tmp_dir, url, *args, secret=...)``: the real command, all reports."""
    return _conformance


@pytest.fixture(scope="session")
def relay_url(relay_target: RelayProcess) -> str:
    """The webhook URL of the relay's test tenant."""
    return relay_target.webhook_url(TENANT)
