from __future__ import annotations

import datetime as dt
import ipaddress
import stat
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509 import verification

from tls.pki import LEAF_DAYS, EmbeddedPKI


def load_chain(path: Path) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(path.read_bytes())


def test_chain_is_leaf_then_intermediate_under_the_root(tmp_path: Path) -> None:
    pki = EmbeddedPKI(tmp_path / "pki")
    assert pki.ensure()
    leaf, intermediate = load_chain(pki.chain)
    root = x509.load_pem_x509_certificate(pki.root.read_bytes())
    assert leaf.issuer == intermediate.subject
    assert intermediate.issuer == root.subject
    result = subprocess.run(
        [
            "openssl",
            "verify",
            "-CAfile",
            str(pki.root),
            "-untrusted",
            str(pki.chain),
            str(pki.leaf),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_strict_rfc5280_verifier_accepts_the_leaf_for_localhost_and_loopback(
    tmp_path: Path,
) -> None:
    pki = EmbeddedPKI(tmp_path / "pki")
    pki.ensure()
    leaf, intermediate = load_chain(pki.chain)
    store = verification.Store([x509.load_pem_x509_certificate(pki.root.read_bytes())])
    for name in (x509.DNSName("localhost"),):
        verifier = verification.PolicyBuilder().store(store).build_server_verifier(name)
        chain = verifier.verify(leaf, [intermediate])
        assert len(chain) == 3

    verifier = (
        verification.PolicyBuilder()
        .store(store)
        .build_server_verifier(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    )
    assert verifier.verify(leaf, [intermediate])


def test_leaf_lives_at_most_90_days(tmp_path: Path) -> None:
    pki = EmbeddedPKI(tmp_path / "pki")
    pki.ensure()
    leaf = load_chain(pki.chain)[0]
    assert leaf.not_valid_after_utc - leaf.not_valid_before_utc <= dt.timedelta(
        days=LEAF_DAYS, minutes=5
    )


def test_pki_is_made_once_and_the_root_is_kept(tmp_path: Path) -> None:
    pki = EmbeddedPKI(tmp_path / "pki")
    pki.ensure()
    root = pki.root.read_bytes()
    assert not pki.ensure()
    assert pki.root.read_bytes() == root


def test_a_leaf_near_expiry_is_reissued_under_the_same_root(tmp_path: Path) -> None:
    pki = EmbeddedPKI(tmp_path / "pki")
    pki.ensure()
    old_leaf, root = pki.leaf.read_bytes(), pki.root.read_bytes()
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=LEAF_DAYS - 10)
    assert pki.ensure(now=later)
    assert pki.leaf.read_bytes() != old_leaf
    assert pki.root.read_bytes() == root


def test_private_keys_are_private(tmp_path: Path) -> None:
    pki = EmbeddedPKI(tmp_path / "pki")
    pki.ensure()
    for key in (tmp_path / "pki").glob("*.key"):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600


def test_a_missing_leaf_is_reissued_from_the_kept_intermediate(tmp_path: Path) -> None:
    pki = EmbeddedPKI(tmp_path / "pki")
    pki.ensure()
    root = pki.root.read_bytes()
    pki.leaf.unlink()
    assert pki.ensure()
    assert pki.leaf.exists()
    assert pki.root.read_bytes() == root


def test_a_pki_folder_without_its_intermediate_is_a_clear_error(tmp_path: Path) -> None:
    pki = EmbeddedPKI(tmp_path / "pki")
    pki.ensure()
    (tmp_path / "pki" / "intermediate.key").unlink()
    with pytest.raises(FileNotFoundError, match="remove the folder"):
        pki.ensure()
