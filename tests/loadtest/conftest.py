"""Fixtures for the load harness's tests: misbehaving targets and a command runner."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from loadtest.cli import register
from tests.support.processes import stop
from tests.support.relay import LINERELAY, RelayProcess

TARGETS = Path(__file__).with_name("targets.py")


def parse(argv: list[str]) -> argparse.Namespace:
    """Parse ``linerelay loadtest ARGV`` with the harness's own parser."""
    parser = argparse.ArgumentParser(prog="linerelay")
    parser.add_argument("--state-dir", default="var")
    register(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["loadtest", *argv])


def loadtest(argv: list[str]) -> int:
    """Run ``linerelay loadtest ARGV`` (Locust runs in real child processes); its exit status."""
    args = parse(argv)
    status: int = args.func(args)
    return status


def _start(mode: str) -> Iterator[str]:
    process = subprocess.Popen(
        [sys.executable, str(TARGETS), mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert process.stdout is not None
    port = process.stdout.readline().strip()
    try:
        assert port.isdigit(), f"target {mode} did not start"
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(process)


@pytest.fixture
def slow_target() -> Iterator[str]:
    """A target answering every webhook 200 after 1.2 s."""
    yield from _start("slow")


@pytest.fixture
def blackhole_target() -> Iterator[str]:
    """A target answering 200 whose bridge endpoint never delivers anything."""
    yield from _start("blackhole")


@pytest.fixture
def run_loadtest() -> Callable[[list[str]], int]:
    """``linerelay loadtest`` as a callable."""
    return loadtest


@pytest.fixture(scope="package")
def shared_relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayProcess]:
    """One real relay for all of these tests: starting one costs seconds on a loaded machine.

    Tests keep apart by using tenants of their own.
    """
    process = RelayProcess(tmp_path_factory.mktemp("relay") / "state").start()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture
def gateway() -> Iterator[str]:
    """A ``linerelay loadtest gateway`` process (20 ms latency); its base URL."""
    process = subprocess.Popen(
        [LINERELAY, "loadtest", "gateway", "--listen", "127.0.0.1:0", "--latency-ms", "20"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        yield json.loads(process.stdout.readline())["gateway"]
    finally:
        stop(process)
