"""The shipped systemd units: well-formed, hardened, and wired for socket activation."""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
from pathlib import Path

import pytest

SYSTEMD = Path(__file__).resolve().parents[2] / "systemd"
UNITS = sorted(p for p in SYSTEMD.iterdir() if p.suffix in (".service", ".socket", ".path"))
SERVICES = [u for u in UNITS if u.suffix == ".service"]
#: The highest exposure `systemd-analyze security` may give each service (issue 13).
MAX_EXPOSURE = {
    "linerelay.service": 1.2,
    "linerelay-bridge@.service": 1.5,
    "linerelay-provision.service": 1.2,
    "linerelay-certs.service": 1.2,
}
needs_systemd = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed"
)


def unit(name: str) -> configparser.RawConfigParser:
    """A unit file parsed; repeated keys keep their last value, as good as needed here."""
    parser = configparser.RawConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(SYSTEMD / name)
    return parser


def values(name: str, key: str) -> list[str]:
    """Every value of ``key`` in a unit, repeated keys and lists flattened."""
    found: list[str] = []
    for line in (SYSTEMD / name).read_text().splitlines():
        if line.startswith(key + "="):
            found += line.split("=", 1)[1].split()
    return found


def exposure(path: Path) -> float:
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    match = re.search(r"Overall exposure level for \S+: ([\d.]+)", result.stdout + result.stderr)
    assert match, result.stdout + result.stderr
    return float(match.group(1))


def test_every_unit_ships() -> None:
    assert {u.name for u in UNITS} == {
        "linerelay.service",
        "linerelay.socket",
        "linerelay-admin.socket",
        "linerelay-provision.service",
        "linerelay-certs.path",
        "linerelay-certs.service",
        "linerelay-bridge@.service",
    }
    assert set(MAX_EXPOSURE) == {s.name for s in SERVICES}


@needs_systemd
@pytest.mark.parametrize("service", SERVICES, ids=lambda u: u.name)
def test_service_exposure_stays_low(service: Path) -> None:
    assert exposure(service) <= MAX_EXPOSURE[service.name]


@needs_systemd
@pytest.mark.parametrize("path", UNITS, ids=lambda u: u.name)
def test_unit_parses_without_warnings(path: Path, tmp_path: Path) -> None:
    # Verified beside the other units, so references between them resolve.
    for other in UNITS:
        shutil.copy(other, tmp_path / other.name)
    result = subprocess.run(
        ["systemd-analyze", "verify", path.name],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
    )
    # The only complaints allowed: the programs are not installed on the test machine.
    complaints = [
        line
        for line in result.stderr.splitlines()
        if line.strip()
        and "is not executable" not in line
        and "not found" not in line
        and "No such file" not in line
    ]
    assert complaints == []


def test_the_sockets_are_named_as_the_relay_expects() -> None:
    public, admin = unit("linerelay.socket"), unit("linerelay-admin.socket")
    assert public["Socket"]["ListenStream"] == "0.0.0.0:443"
    assert public["Socket"]["FileDescriptorName"] == "public"
    assert admin["Socket"]["ListenStream"] == "127.0.0.1:9443"
    assert admin["Socket"]["FileDescriptorName"] == "admin"
    assert admin["Socket"]["Service"] == "linerelay.service"


def test_the_relay_holds_no_capability_and_notifies_systemd() -> None:
    service = unit("linerelay.service")["Service"]
    assert service["CapabilityBoundingSet"] == ""
    assert service["AmbientCapabilities"] == ""
    assert service["Type"] == "notify"
    assert service["NotifyAccess"] == "main"
    assert service["WatchdogSec"]
    assert service["Sockets"].split() == ["linerelay.socket", "linerelay-admin.socket"]
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert service["User"] == "linerelay"


def test_provisioning_gets_the_credentials_before_the_relay_starts() -> None:
    loaded = values("linerelay-provision.service", "LoadCredential")
    assert loaded == [f"linerelay.{n}" for n in ("relay-toml", "tls-chain", "tls-key", "tenants")]
    assert "linerelay.service" in values("linerelay-provision.service", "Before")
    assert "linerelay-provision.service" in values("linerelay.service", "Requires")
    assert "linerelay-provision.service" in values("linerelay.service", "After")


def test_a_certificate_change_reloads_the_relay() -> None:
    text = (SYSTEMD / "linerelay-certs.path").read_text()
    assert "PathChanged=/var/lib/linerelay/config/tls/fullchain.pem" in text
    assert "PathChanged=/var/lib/linerelay/config/tls/privkey.pem" in text
    service = unit("linerelay-certs.service")["Service"]
    assert service["ExecStart"] == "/bin/systemctl try-reload-or-restart linerelay.service"
