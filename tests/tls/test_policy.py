from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from tls import policy
from tls.pki import EmbeddedPKI


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> EmbeddedPKI:
    dev = EmbeddedPKI(tmp_path_factory.mktemp("pki"))
    dev.ensure()
    return dev


def test_modern_is_tls13_only(pki: EmbeddedPKI) -> None:
    context = policy.server_context("modern", pki.chain, pki.key)
    assert context.minimum_version == ssl.TLSVersion.TLSv1_3
    assert context.maximum_version == ssl.TLSVersion.TLSv1_3


def test_intermediate_allows_tls12_with_ecdhe_aead_only(pki: EmbeddedPKI) -> None:
    context = policy.server_context("intermediate", pki.chain, pki.key)
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    tls12 = [c["name"] for c in context.get_ciphers() if c["protocol"] == "TLSv1.2"]
    assert tls12
    assert all(name.startswith("ECDHE-") for name in tls12)
    assert all("GCM" in name or "CHACHA20" in name for name in tls12)
    assert not any("CBC" in n or "3DES" in n or n[-4:] == "-SHA" for n in tls12)


def test_compression_and_renegotiation_are_off(pki: EmbeddedPKI) -> None:
    context = policy.server_context("modern", pki.chain, pki.key)
    assert context.options & ssl.OP_NO_COMPRESSION
    assert context.options & ssl.OP_NO_RENEGOTIATION
    # Python's defaults survive (Hypercorn's stock context drops them).
    assert context.options & ssl.OP_NO_SSLv3


def test_unknown_policy_is_refused(pki: EmbeddedPKI) -> None:
    with pytest.raises(ValueError, match="unknown TLS policy"):
        policy.server_context("legacy", pki.chain, pki.key)


def test_a_mismatched_key_is_refused_and_the_live_context_keeps_its_chain(
    pki: EmbeddedPKI, tmp_path: Path
) -> None:
    other = EmbeddedPKI(tmp_path / "other")
    other.ensure()
    context = policy.server_context("modern", pki.chain, pki.key)
    with pytest.raises(policy.CertificateError, match="cannot be served"):
        policy.load_chain(context, other.chain, pki.key)
    with pytest.raises(policy.CertificateError, match=r"absent\.pem: no such file"):
        policy.load_chain(context, tmp_path / "absent.pem", pki.key)
    with pytest.raises(policy.CertificateError, match=r"absent\.key: no such file"):
        policy.load_chain(context, pki.chain, tmp_path / "absent.key")


def test_openssl_conf_pins_exactly_the_documented_groups_and_suites() -> None:
    text = policy.OPENSSL_CONF.read_text()
    settings = dict(
        line.split("=", 1) for line in text.splitlines() if "=" in line and not line.startswith("#")
    )
    assert settings["Groups "].strip().split(":") == list(policy.GROUPS)
    assert settings["Ciphersuites "].strip().split(":") == list(policy.TLS13_SUITES)
