"""The TLS and certificate judgement, on hand-made facts (no sockets, no scan)."""

from __future__ import annotations

import datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from conformance.catalogue import CATALOGUE, Group, Status
from conformance.profiles import PROFILES
from conformance.tlsscan import (
    VERSIONS,
    AcceptedSuite,
    TlsFacts,
    evaluate_certificate,
    evaluate_groups,
    evaluate_protocols,
    evaluate_vulnerabilities,
)
from tls import pki

MODERN, INTERMEDIATE, LINE = PROFILES["modern"], PROFILES["intermediate"], PROFILES["line"]
TLS13 = [AcceptedSuite("TLSv1.3", "TLS_AES_128_GCM_SHA256")]
GOOD12 = [AcceptedSuite("TLSv1.2", "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256")]


def facts(versions: set[str], suites: list[AcceptedSuite], **extra: object) -> TlsFacts:
    made = TlsFacts(
        versions={version: version in versions for version, _, _ in VERSIONS},
        suites=suites,
        groups=["X25519", "secp256r1", "secp384r1"],
        compression=False,
        secure_renegotiation=True,
        client_renegotiation=False,
        heartbleed=False,
        ccs_injection=False,
        robot="NOT_VULNERABLE_RSA_NOT_SUPPORTED",
        resumption="tickets",
        ocsp_stapled=False,
    )
    for key, value in extra.items():
        setattr(made, key, value)
    return made


def statuses(results: list) -> dict[str, Status]:
    return {item.id: item.status for item in results}


def test_tls12_fails_modern_but_passes_intermediate_and_line():
    scanned = facts({"TLSv1.2", "TLSv1.3"}, TLS13 + GOOD12)
    assert statuses(evaluate_protocols(scanned, MODERN))["tls-protocols"] is Status.FAIL
    assert statuses(evaluate_protocols(scanned, INTERMEDIATE))["tls-protocols"] is Status.PASS
    assert statuses(evaluate_protocols(scanned, LINE))["tls-protocols"] is Status.PASS


def test_tls10_fails_every_profile():
    scanned = facts({"TLSv1", "TLSv1.2"}, GOOD12)
    for profile in PROFILES.values():
        assert statuses(evaluate_protocols(scanned, profile))["tls-protocols"] is Status.FAIL


def test_each_weak_suite_is_caught_by_its_own_check():
    cases = {
        "tls-cipher-3des": "TLS_ECDHE_RSA_WITH_3DES_EDE_CBC_SHA",
        "tls-cipher-rc4": "TLS_ECDHE_RSA_WITH_RC4_128_SHA",
        "tls-cipher-cbc": "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA",
        "tls-cipher-pfs": "TLS_RSA_WITH_AES_128_GCM_SHA256",
        "tls-cipher-weak": "TLS_ECDH_anon_WITH_AES_128_CBC_SHA",
    }
    for check_id, suite in cases.items():
        scanned = facts({"TLSv1.2"}, [AcceptedSuite("TLSv1.2", suite)])
        result = statuses(evaluate_protocols(scanned, INTERMEDIATE))
        assert result[check_id] is Status.FAIL, (check_id, suite)
        assert result["tls-cipher-profile"] is Status.FAIL


def test_ecdhe_aead_suites_pass_every_cipher_check():
    scanned = facts({"TLSv1.2", "TLSv1.3"}, TLS13 + GOOD12)
    for profile in (INTERMEDIATE, LINE):
        result = statuses(evaluate_protocols(scanned, profile))
        assert all(
            status is Status.PASS for check, status in result.items() if check != "tls-protocols"
        ), result


def test_a_failed_version_scan_is_a_skip_not_a_pass():
    scanned = facts({"TLSv1.3"}, TLS13)
    del scanned.versions["TLSv1.1"]
    scanned.errors["tls_1_1_cipher_suites"] = "CONNECTIVITY_ISSUE"
    result = evaluate_protocols(scanned, MODERN)
    protocols = next(item for item in result if item.id == "tls-protocols")
    assert protocols.status is Status.SKIP
    assert "CONNECTIVITY_ISSUE" in protocols.detail


def test_extra_groups_fail_mozilla_profiles_and_are_info_for_line():
    scanned = facts({"TLSv1.3"}, TLS13, groups=["X25519", "secp256r1", "secp521r1", "X448"])
    assert evaluate_groups(scanned, MODERN).status is Status.FAIL
    assert evaluate_groups(scanned, LINE).status is Status.INFO
    good = facts({"TLSv1.3"}, TLS13)
    assert evaluate_groups(good, MODERN).status is Status.PASS


def test_vulnerabilities_fail_their_checks_and_infos_never_fail():
    bad = facts(
        {"TLSv1.2"},
        GOOD12,
        compression=True,
        secure_renegotiation=False,
        heartbleed=True,
        ccs_injection=True,
        robot="VULNERABLE_STRONG_ORACLE",
    )
    result = statuses(evaluate_vulnerabilities(bad))
    for check_id in (
        "tls-compression",
        "tls-renegotiation",
        "tls-heartbleed",
        "tls-robot",
        "tls-ccs-injection",
    ):
        assert result[check_id] is Status.FAIL, check_id
    assert result["tls-session-resumption"] is Status.INFO
    assert result["tls-ocsp-stapling"] is Status.INFO
    dos = facts({"TLSv1.2"}, GOOD12, client_renegotiation=True)
    assert statuses(evaluate_vulnerabilities(dos))["tls-renegotiation"] is Status.FAIL


def _chain(days: int) -> tuple[list[x509.Certificate], list[x509.Certificate]]:
    issued = pki.issue(["relay.example"], days=days)
    return [issued.leaf, issued.intermediate], [issued.root]


def test_a_good_chain_passes_every_certificate_check():
    chain, anchors = _chain(90)
    now = datetime.datetime.now(datetime.UTC)
    result = evaluate_certificate(chain, MODERN, anchors, "test CA", "relay.example", now)
    assert {item.id for item in result} == {
        spec.id for spec in CATALOGUE.values() if spec.group is Group.CERTIFICATE
    }
    assert all(item.status is Status.PASS for item in result), result


def test_expiry_fails_only_once_expired_and_is_info_once_renewal_is_overdue():
    chain, anchors = _chain(90)
    not_after = chain[0].not_valid_after_utc

    def expiry_at(left: datetime.timedelta) -> Status:
        judged = evaluate_certificate(
            chain, MODERN, anchors, "CA", "relay.example", not_after - left
        )
        return statuses(judged)["cert-expiry"]

    assert expiry_at(datetime.timedelta(days=31)) is Status.PASS
    # The rules' one threshold (tls/rules.py): 30 days for a 90-day leaf.
    assert expiry_at(datetime.timedelta(days=20)) is Status.INFO
    # LINE still takes it three days before the end: a warning, not a failure.
    assert expiry_at(datetime.timedelta(days=3)) is Status.INFO
    assert expiry_at(-datetime.timedelta(days=1)) is Status.FAIL


def test_the_key_verdict_is_the_rules_and_the_profile_adds_ecdsa_only():
    issued = pki.issue(["relay.example"])
    key = ec.generate_private_key(ec.SECP521R1())
    p521 = (
        x509.CertificateBuilder()
        .subject_name(issued.leaf.subject)
        .issuer_name(issued.intermediate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(issued.leaf.not_valid_before_utc)
        .not_valid_after(issued.leaf.not_valid_after_utc)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("relay.example")]), False)
        .sign(issued.intermediate_key, hashes.SHA384())
    )
    now = datetime.datetime.now(datetime.UTC)
    for profile in (MODERN, INTERMEDIATE, LINE):
        judged = evaluate_certificate(
            [p521, issued.intermediate], profile, [issued.root], "CA", "relay.example", now
        )
        # One verdict for P-521 (the rules' warning), whatever the profile.
        assert statuses(judged)["cert-key"] is Status.INFO, profile.name


def test_wrong_host_and_missing_intermediate_fail_their_checks():
    chain, anchors = _chain(90)
    now = datetime.datetime.now(datetime.UTC)
    result = statuses(evaluate_certificate(chain[:1], MODERN, anchors, "CA", "other.example", now))
    assert result["cert-hostname"] is Status.FAIL
    assert result["cert-chain-complete"] is Status.FAIL
    assert result["cert-trusted"] is Status.FAIL
    assert result["cert-root-sent"] is Status.SKIP


def test_the_line_profile_allows_a_longer_leaf_than_modern():
    chain, anchors = _chain(90)
    now = datetime.datetime.now(datetime.UTC)
    # Mozilla's figures, from the copy sslyze ships.
    assert (MODERN.max_lifetime_days, INTERMEDIATE.max_lifetime_days) == (90, 366)
    assert LINE.max_lifetime_days == 398
    result = statuses(evaluate_certificate(chain, LINE, anchors, "CA", "relay.example", now))
    assert result["cert-validity-period"] is Status.PASS


def test_under_the_line_profile_an_untrusted_chain_says_to_get_a_public_certificate():
    chain, _ = _chain(90)
    now = datetime.datetime.now(datetime.UTC)
    system = [pki.issue().root]  # some other root
    trusted = next(
        item
        for item in evaluate_certificate(chain, LINE, system, "public", "relay.example", now)
        if item.id == "cert-trusted"
    )
    assert trusted.status is Status.FAIL
    assert "publicly trusted" in trusted.detail
    assert "--ca" not in trusted.detail
