"""The one PKI builder: the relay's embedded dev PKI and `linerelay tls dev-pki`."""

from __future__ import annotations

import datetime as dt
import ipaddress
import stat
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509 import verification

from tests.support.relay import LINERELAY
from tls import pki, rules
from tls.pki import MAX_LEAF_DAYS, DevPKI, EmbeddedPKI


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
        days=MAX_LEAF_DAYS, minutes=5
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
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=MAX_LEAF_DAYS - 10)
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


# `linerelay tls dev-pki DIR`: the same builder, certbot's file names.

CERTBOT_NAMES = ["cert.pem", "chain.pem", "fullchain.pem", "privkey.pem", "root.pem"]


def test_the_leaf_is_issued_by_the_intermediate_which_is_issued_by_the_root():
    issued = pki.issue(["relay.example", "127.0.0.1"])
    issued.leaf.verify_directly_issued_by(issued.intermediate)
    issued.intermediate.verify_directly_issued_by(issued.root)
    assert issued.leaf.issuer != issued.root.subject
    assert rules.covers_host(issued.leaf, "relay.example")
    assert rules.covers_host(issued.leaf, "127.0.0.1")
    findings = rules.judge([issued.leaf, issued.intermediate], [issued.root], host="relay.example")
    assert rules.worst(findings) is rules.Level.OK, findings


def test_both_layouts_mean_the_same_by_chain_and_neither_marks_the_san_critical(
    tmp_path: Path,
) -> None:
    embedded = EmbeddedPKI(tmp_path / "embedded")
    embedded.ensure()
    dev = pki.create(tmp_path / "dev", ["localhost"])
    for made in (embedded, dev):
        sent = load_chain(made.chain)
        assert made.chain.read_bytes() == made.leaf.read_bytes() + made.intermediate.read_bytes()
        root = x509.load_pem_x509_certificate(made.root.read_bytes())
        assert root not in sent  # a chain never holds the root
        san = sent[0].extensions.get_extension_for_class(x509.SubjectAlternativeName)
        assert not san.critical
        # sslyze's verifier (cryptography's, RFC 5280) takes what both write.
        store = verification.Store([root])
        verifier = (
            verification.PolicyBuilder()
            .store(store)
            .build_server_verifier(x509.DNSName("localhost"))
        )
        assert len(verifier.verify(sent[0], sent[1:])) == 3


def test_the_leaf_lives_at_most_90_days():
    now = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)
    leaf = pki.issue(now=now).leaf
    assert leaf.not_valid_after_utc - now == dt.timedelta(days=90)
    with pytest.raises(pki.PKIError, match="between 1 and 90"):
        pki.issue(days=91)


@pytest.mark.parametrize(
    ("names", "why"),
    [([], "at least one host"), (["not a name"], "not a DNS name"), (["ré.example"], "not a DNS")],
)
def test_an_unusable_host_is_refused_with_a_clear_error(names: list[str], why: str):
    with pytest.raises(pki.PKIError, match=why):
        pki.issue(names)


def test_written_files_use_certbots_names_and_the_key_is_private(tmp_path: Path):
    made = pki.create(tmp_path / "pki")
    assert sorted(path.name for path in made.directory.iterdir()) == CERTBOT_NAMES
    assert stat.S_IMODE(made.key.stat().st_mode) == 0o600
    assert stat.S_IMODE(made.chain.stat().st_mode) == 0o644
    assert isinstance(made, DevPKI)


def test_existing_files_are_kept_unless_forced(tmp_path: Path):
    made = pki.create(tmp_path)
    before = {path.name: path.read_bytes() for path in tmp_path.iterdir()}
    with pytest.raises(pki.PKIError, match="--force"):
        pki.create(tmp_path)
    assert {path.name: path.read_bytes() for path in tmp_path.iterdir()} == before
    pki.create(tmp_path, force=True)
    assert made.key.read_bytes() != before["privkey.pem"]


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
