"""The test PKI: root -> intermediate -> leaf, written safely."""

from __future__ import annotations

import datetime
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509

from tls import devpki, doctor

LINERELAY = str(Path(sys.executable).parent / "linerelay")


def test_the_leaf_is_issued_by_the_intermediate_which_is_issued_by_the_root():
    pems = devpki.issue(["relay.example", "127.0.0.1"])
    leaf, intermediate, root = (
        x509.load_pem_x509_certificate(pem) for pem in (pems.leaf, pems.intermediate, pems.root)
    )
    leaf.verify_directly_issued_by(intermediate)
    intermediate.verify_directly_issued_by(root)
    assert leaf.issuer != root.subject
    assert doctor.covers_host(leaf, "relay.example")
    assert doctor.covers_host(leaf, "127.0.0.1")
    findings = doctor.diagnose([leaf, intermediate], [root], host="relay.example")
    assert doctor.worst(findings) is doctor.Level.OK, findings


def test_the_leaf_lives_at_most_90_days():
    now = datetime.datetime(2026, 6, 1, tzinfo=datetime.UTC)
    leaf = x509.load_pem_x509_certificate(devpki.issue(now=now).leaf)
    assert leaf.not_valid_after_utc - now == datetime.timedelta(days=90)
    with pytest.raises(devpki.DevPKIError, match="between 1 and 90"):
        devpki.issue(days=91)


def test_an_unusable_host_is_refused_with_a_clear_error():
    with pytest.raises(devpki.DevPKIError, match="at least one host"):
        devpki.issue([])


def test_written_files_use_certbots_names_and_the_key_is_private(tmp_path: Path):
    pki = devpki.create(tmp_path / "pki")
    assert sorted(path.name for path in pki.directory.iterdir()) == sorted(devpki.FILE_NAMES)
    assert stat.S_IMODE(pki.key.stat().st_mode) == 0o600
    assert pki.fullchain.read_bytes() == pki.cert.read_bytes() + pki.chain.read_bytes()


def test_existing_files_are_kept_unless_forced(tmp_path: Path):
    pki = devpki.create(tmp_path)
    before = {path.name: path.read_bytes() for path in tmp_path.iterdir()}
    with pytest.raises(devpki.DevPKIError, match="--force"):
        devpki.create(tmp_path)
    assert {path.name: path.read_bytes() for path in tmp_path.iterdir()} == before
    devpki.create(tmp_path, force=True)
    assert pki.key.read_bytes() != before["privkey.pem"]


@pytest.mark.integration
def test_the_command_writes_a_pki_and_refuses_bad_input_with_status_2(tmp_path: Path):
    done = subprocess.run(
        [LINERELAY, "tls", "dev-pki", str(tmp_path / "pki"), "--host", "relay.example"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "pki" / "fullchain.pem").is_file()
    refused = subprocess.run(
        [LINERELAY, "tls", "dev-pki", str(tmp_path / "other"), "--days", "365"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert refused.returncode == 2
    assert "between 1 and 90" in refused.stderr
    assert not (tmp_path / "other").exists()
