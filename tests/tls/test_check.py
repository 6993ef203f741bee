"""`linerelay tls check`: the certificate rules on files and on live servers."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.processes import stop
from tests.support.relay import LINERELAY
from tls import pki, rules, sources
from tls.cli import TargetError, parse_host_port

TARGET = Path(__file__).parents[1] / "conformance" / "target.py"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [LINERELAY, "tls", "check", *args], capture_output=True, text=True, timeout=60, check=False
    )


@pytest.fixture(scope="module")
def pki_files(tmp_path_factory: pytest.TempPathFactory) -> pki.DevPKI:
    return pki.create(tmp_path_factory.mktemp("pki"), ["localhost", "127.0.0.1"])


@pytest.mark.integration
def test_check_on_files_exits_0_for_fullchain_and_1_for_cert_pem(pki_files: pki.DevPKI):
    good = run(
        "--cert",
        str(pki_files.chain),
        "--key",
        str(pki_files.key),
        "--ca",
        str(pki_files.root),
        "--host",
        "localhost",
    )
    assert good.returncode == 0, good.stdout + good.stderr
    bad = run("--cert", str(pki_files.leaf), "--ca", str(pki_files.root), "--json")
    assert bad.returncode == 1
    report = json.loads(bad.stdout)
    assert report["worst"] == "error"
    missing = [f for f in report["findings"] if f["code"] == "chain-complete"]
    assert "fullchain.pem, not cert.pem" in missing[0]["advice"]


@pytest.mark.integration
def test_check_on_an_unreadable_file_exits_2(tmp_path: Path):
    done = run("--cert", str(tmp_path / "nope.pem"))
    assert done.returncode == 2
    assert "nope.pem" in done.stderr


def serve(certfile: Path, keyfile: Path) -> Iterator[int]:
    """A real Hypercorn TLS server (tests/conformance/target.py) serving ``certfile``."""
    proc = subprocess.Popen(
        [
            sys.executable,
            str(TARGET),
            "--certfile",
            str(certfile),
            "--keyfile",
            str(keyfile),
            "--secret",
            "s",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    try:
        assert line.startswith("PORT "), line
        yield int(line.split()[1])
    finally:
        stop(proc)


@pytest.fixture(scope="module")
def leaf_only_server(pki_files: pki.DevPKI) -> Iterator[int]:
    """Sends its leaf without the intermediate."""
    yield from serve(pki_files.leaf, pki_files.key)


@pytest.fixture(scope="module")
def fullchain_server(pki_files: pki.DevPKI) -> Iterator[int]:
    """Sends leaf and intermediate."""
    yield from serve(pki_files.chain, pki_files.key)


@pytest.mark.integration
def test_check_on_a_well_deployed_live_server_exits_0(fullchain_server: int, pki_files: pki.DevPKI):
    done = run("--connect", f"localhost:{fullchain_server}", "--ca", str(pki_files.root))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "ERROR" not in done.stdout
    assert "localhost is covered" in done.stdout


@pytest.mark.integration
def test_check_on_a_live_server_finds_the_missing_intermediate(
    leaf_only_server: int, pki_files: pki.DevPKI
):
    done = run("--connect", f"127.0.0.1:{leaf_only_server}", "--ca", str(pki_files.root), "--json")
    assert done.returncode == 1, done.stderr
    report = json.loads(done.stdout)
    codes = {f["code"]: f["level"] for f in report["findings"]}
    assert codes["chain-complete"] == "error"
    assert codes["hostname"] == "ok"  # the host of --connect, 127.0.0.1, is in the SAN


@pytest.mark.integration
def test_check_on_a_closed_port_exits_2():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    done = run("--connect", f"127.0.0.1:{port}")
    assert done.returncode == 2
    assert "cannot connect" in done.stderr


def test_connect_targets_accept_host_port_ipv6_and_default_to_443():
    assert parse_host_port("relay.example:8443") == ("relay.example", 8443)
    assert parse_host_port("relay.example") == ("relay.example", 443)
    assert parse_host_port("[::1]:9443") == ("::1", 9443)
    for bad in ("relay.example:http", ":443", "relay.example:70000"):
        with pytest.raises(TargetError):
            parse_host_port(bad)


def test_without_ca_the_system_trust_store_is_used():
    anchors, name = sources.load_anchors(None)
    assert name == "the system trust store"
    assert len(anchors) > 50
    # Let's Encrypt's root, which most relays' certificates chain to.
    assert any("ISRG Root X1" in rules.describe(anchor) for anchor in anchors)
