"""The certificate rules: each classic deployment mistake is named, with what to do,
at one severity whoever asks (tls check, conformance, the relay at start)."""

from __future__ import annotations

import datetime as dt
import shutil
import subprocess
from pathlib import Path

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from tests.support import certs
from tests.support.certs import AIA_URL, Deep, deep
from tls import pki, rules
from tls.rules import Level

HOST = "relay.example"


def by_code(findings: list[rules.Finding], code: str) -> list[rules.Finding]:
    found = [finding for finding in findings if finding.code == code]
    assert found, f"no {code} finding in {findings}"
    return found


def level(findings: list[rules.Finding], code: str) -> Level:
    return rules.worst(by_code(findings, code))


@pytest.fixture
def chain() -> Deep:
    return deep(HOST)


def test_a_complete_chain_in_order_is_all_ok(chain: Deep):
    findings = rules.judge(chain.full, [chain.root], host=HOST, key=chain.key)
    assert rules.worst(findings) is Level.OK, findings
    assert {f.code for f in findings} == {
        "chain-trusted",
        "chain-complete",
        "chain-order",
        "root-sent",
        "key-match",
        "expiry",
        "lifetime",
        "hostname",
        "key-type",
        "signature",
    }


def test_the_builders_chain_is_all_ok():
    issued = pki.issue([HOST, "127.0.0.1"])
    findings = rules.judge(
        [issued.leaf, issued.intermediate], [issued.root], host="127.0.0.1", key=issued.leaf_key
    )
    assert rules.worst(findings) is Level.OK, findings


def test_trustmes_critical_san_is_not_reported_as_a_broken_chain():
    # What outside harnesses provision (PROTOCOL.md §5): judged by OpenSSL, not by
    # cryptography's verifier, which refuses it (DESIGN.md).
    ca = trustme.CA()
    issued = ca.issue_cert(HOST)
    made = x509.load_pem_x509_certificate(issued.cert_chain_pems[0].bytes())
    assert made.extensions.get_extension_for_class(x509.SubjectAlternativeName).critical
    root = x509.load_pem_x509_certificate(ca.cert_pem.bytes())
    findings = rules.judge([made], [root], host=HOST)
    assert level(findings, "chain-trusted") is Level.OK
    assert level(findings, "chain-complete") is Level.OK
    # trustme's leaf lives 1,000 years: worth a note, no more.
    assert [f.code for f in findings if f.level is not Level.OK] == ["lifetime"]


def test_a_missing_intermediate_says_use_fullchain_pem(chain: Deep):
    findings = rules.judge([chain.leaf], [chain.root], host=HOST)
    complete = by_code(findings, "chain-complete")[0]
    assert complete.level is Level.ERROR
    assert "fullchain.pem, not cert.pem" in complete.advice
    assert level(findings, "chain-trusted") is Level.ERROR


def test_a_missing_upper_intermediate_is_caught_too(chain: Deep):
    findings = rules.judge([chain.leaf, chain.lower], [chain.root], host=HOST)
    assert level(findings, "chain-trusted") is Level.ERROR
    assert level(findings, "chain-complete") is Level.WARNING


def test_intermediates_in_the_wrong_order_are_an_error(chain: Deep):
    findings = rules.judge([chain.leaf, chain.upper, chain.lower], [chain.root], host=HOST)
    order = by_code(findings, "chain-order")[0]
    assert order.level is Level.ERROR
    assert "wrong order" in order.message
    # OpenSSL still builds it, so trust is fine: the fault is only the order.
    assert level(findings, "chain-trusted") is Level.OK


def test_the_leaf_not_first_is_an_error(chain: Deep):
    findings = rules.judge([chain.lower, chain.leaf, chain.upper], [chain.root])
    order = by_code(findings, "chain-order")[0]
    assert order.level is Level.ERROR
    assert "put your certificate first" in order.advice


def test_a_root_sent_needlessly_is_a_warning_with_advice(chain: Deep):
    findings = rules.judge([*chain.full, chain.root], [chain.root], host=HOST)
    root_sent = by_code(findings, "root-sent")[0]
    assert root_sent.level is Level.WARNING
    assert "drop the last certificate" in root_sent.advice
    assert level(findings, "chain-order") is Level.OK


def test_an_unrelated_certificate_in_the_chain_is_an_error(chain: Deep):
    other = deep(HOST)
    findings = rules.judge([*chain.full, other.upper], [chain.root])
    assert level(findings, "chain-order") is Level.ERROR


def test_a_key_that_does_not_match_is_an_error(chain: Deep):
    other = deep(HOST)
    findings = rules.judge(chain.full, [chain.root], key=other.key)
    match = by_code(findings, "key-match")[0]
    assert match.level is Level.ERROR
    assert "privkey.pem" in match.advice


def expiring(chain: Deep, lifetime_days: float, left_days: float) -> list[x509.Certificate]:
    start = certs.now() - dt.timedelta(days=lifetime_days - left_days)
    made, _ = certs.leaf(
        chain.lower,
        chain.lower_key,
        HOST,
        not_before=start,
        not_after=start + dt.timedelta(days=lifetime_days),
    )
    return [made, chain.lower, chain.upper]


@pytest.mark.parametrize(
    ("lifetime_days", "left_days", "expected"),
    [
        (90, 31, Level.OK),
        (90, 29, Level.WARNING),  # certbot renews 30 days before expiry
        (90, 3, Level.WARNING),  # still served by LINE: a warning, not an error
        (6, 2.5, Level.OK),  # a short-lived certificate: a third of its life is 2 days
        (6, 1.5, Level.WARNING),
        (398, 40, Level.OK),
        (90, -0.01, Level.ERROR),  # expired
    ],
)
def test_expiry_warns_once_renewal_is_overdue_and_fails_only_when_expired(
    chain: Deep, lifetime_days: float, left_days: float, expected: Level
):
    findings = rules.judge(expiring(chain, lifetime_days, left_days), [chain.root])
    found = by_code(findings, "expiry")[0]
    assert found.level is expected, found
    if expected is Level.WARNING:
        assert "renew" in found.advice


def test_not_yet_valid_is_an_error(chain: Deep):
    later = certs.now() + dt.timedelta(days=2)
    made, _ = certs.leaf(chain.lower, chain.lower_key, HOST, not_before=later)
    findings = rules.judge([made, chain.lower, chain.upper], [chain.root])
    assert "not valid before" in by_code(findings, "expiry")[0].message
    assert level(findings, "expiry") is Level.ERROR


def test_renewal_due_is_the_one_threshold_the_embedded_pki_renews_at(chain: Deep):
    leaf = chain.leaf  # 90 days from now
    end = leaf.not_valid_after_utc
    assert rules.renewal_threshold(leaf) == dt.timedelta(days=30)
    assert not rules.renewal_due(leaf, end - dt.timedelta(days=30, seconds=1))
    assert rules.renewal_due(leaf, end - dt.timedelta(days=29))


def test_a_san_not_covering_the_host_is_an_error(chain: Deep):
    findings = rules.judge(chain.full, [chain.root], host="webhook.example")
    hostname = by_code(findings, "hostname")[0]
    assert hostname.level is Level.ERROR
    assert HOST in hostname.message


def test_wildcards_cover_exactly_one_label(chain: Deep):
    made, _ = certs.leaf(chain.lower, chain.lower_key, "*.example.com")
    assert rules.covers_host(made, "relay.example.com")
    assert not rules.covers_host(made, "a.relay.example.com")
    assert not rules.covers_host(made, "example.com")


def test_an_untrusted_root_says_how_to_trust_a_private_ca(chain: Deep):
    findings = rules.judge(chain.full, [deep(HOST).root], anchors_name="the system trust store")
    trusted = by_code(findings, "chain-trusted")[0]
    assert trusted.level is Level.ERROR
    assert "--ca" in trusted.advice


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        (ec.SECP256R1(), Level.OK),
        (ec.SECP384R1(), Level.OK),
        (ec.SECP521R1(), Level.WARNING),  # one verdict: some clients refuse it, LINE's may not
        (ec.SECP256K1(), Level.ERROR),  # no TLS 1.3 signature scheme for it
    ],
    ids=["P-256", "P-384", "P-521", "secp256k1"],
)
def test_ecdsa_curves(chain: Deep, key: ec.EllipticCurve, expected: Level):
    made, _ = certs.leaf(chain.lower, chain.lower_key, HOST, key=ec.generate_private_key(key))
    assert level(rules.judge([made, chain.lower], [chain.root]), "key-type") is expected


def test_a_1024_bit_rsa_key_is_an_error_and_2048_is_fine(chain: Deep):
    weak, _ = certs.leaf(chain.lower, chain.lower_key, HOST, key=certs.rsa_key(1024))
    finding = by_code(rules.judge([weak, chain.lower], [chain.root]), "key-type")[0]
    assert finding.level is Level.ERROR
    assert "2048" in finding.message
    strong, _ = certs.leaf(chain.lower, chain.lower_key, HOST, key=certs.rsa_key(2048))
    assert level(rules.judge([strong, chain.lower], [chain.root]), "key-type") is Level.OK


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_a_sha1_signature_below_the_root_is_an_error(chain: Deep, tmp_path: Path):
    # cryptography refuses to sign with SHA-1; the openssl command still does.
    lower, lower_key = certs.write_pair(tmp_path, [chain.lower], chain.lower_key)
    csr, leaf_pem = tmp_path / "leaf.csr", tmp_path / "leaf.pem"
    subject = ["-subj", f"/CN={HOST}"]
    newkey = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    for command in (
        ["req", "-new", *newkey, "-keyout", str(tmp_path / "leaf.key"), *subject, "-out", str(csr)],
        [
            *("x509", "-req", "-in", str(csr), "-CA", str(lower), "-CAkey", str(lower_key)),
            *("-sha1", "-days", "30", "-set_serial", "1", "-out", str(leaf_pem)),
        ],
    ):
        subprocess.run(["openssl", *command], capture_output=True, check=True)
    sha1 = x509.load_pem_x509_certificate(leaf_pem.read_bytes())
    finding = by_code(rules.judge([sha1, chain.lower, chain.upper], [chain.root]), "signature")[0]
    assert finding.level is Level.ERROR
    assert "SHA1" in finding.message


def test_a_self_signed_leaf_is_untrusted_with_advice(chain: Deep):
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, HOST)])
    start = certs.now()
    self_signed = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(HOST)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    trusted = by_code(rules.judge([self_signed], [chain.root]), "chain-trusted")[0]
    assert trusted.level is Level.ERROR
    assert "self-signed" in trusted.message
    served = rules.judge([self_signed], [chain.root], private_ca_ok=True)
    assert level(served, "chain-trusted") is Level.WARNING


# What the relay judges at start: its chain against the public store, a private CA allowed.


def test_a_private_cas_full_chain_is_a_warning_when_private_cas_are_allowed(chain: Deep):
    public = [deep("unrelated.example").root]  # stands for the system store
    findings = rules.judge(chain.full, public, private_ca_ok=True)
    trusted = by_code(findings, "chain-trusted")[0]
    assert trusted.level is Level.WARNING
    assert "LINE accepts only publicly trusted certificates" in trusted.message
    assert rules.worst(findings) is Level.WARNING


def test_a_lone_leaf_whose_ca_publishes_its_issuer_is_an_error_even_for_a_private_ca(
    chain: Deep,
):
    # Let's Encrypt's cert.pem served instead of fullchain.pem (the README's first warning).
    lone, _ = certs.leaf(chain.lower, chain.lower_key, HOST, aia=True)
    findings = rules.judge([lone], [chain.root], private_ca_ok=True)
    complete = by_code(findings, "chain-complete")[0]
    assert complete.level is Level.ERROR
    assert AIA_URL in complete.message
    assert "fullchain.pem" in complete.advice


def test_a_lone_leaf_without_that_address_may_be_a_private_roots_and_is_a_warning(chain: Deep):
    # trustme issues straight from its root: such a chain is the leaf alone.
    findings = rules.judge([chain.leaf], [deep(HOST).root], private_ca_ok=True)
    assert level(findings, "chain-complete") is Level.WARNING
    assert level(findings, "chain-trusted") is Level.WARNING


def test_private_cas_allowed_never_excuse_expiry(chain: Deep):
    findings = rules.judge(expiring(chain, 90, -1), [], private_ca_ok=True)
    assert level(findings, "expiry") is Level.ERROR


def test_no_certificate_is_a_clear_error():
    with pytest.raises(rules.NoCertificateError):
        rules.judge([], [])
