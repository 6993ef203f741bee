"""The TLS half of the suite: an sslyze scan, reduced to facts, judged against a profile.

:func:`scan` is the only I/O: it runs the scan commands the checks need
(nothing more: sslyze scans are slow) and reduces sslyze's result objects to
a plain :class:`TlsFacts`. :func:`evaluate` is pure and turns facts into
:class:`~conformance.catalogue.CheckResult` objects.

The certificate checks do not use sslyze's own path validation: it runs
``cryptography``'s RFC 5280 verifier, which rejects trustme-style leaves (a
critical subjectAltName) that OpenSSL and LINE accept. The chain sslyze
received is judged by the certificate rules (:mod:`tls.rules`) instead, the
ones ``linerelay tls check`` and the relay's start-up check apply.
"""

from __future__ import annotations

import datetime
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.utils import CryptographyDeprecationWarning
from sslyze.plugins.openssl_cipher_suites.implementation import CipherSuitesScanResult
from sslyze.plugins.robot._robot_tester import RobotScanResultEnum
from sslyze.plugins.scan_commands import ScanCommand
from sslyze.plugins.session_resumption._resumption_with_id import TlsResumptionSupportEnum
from sslyze.plugins.session_resumption.implementation import SessionResumptionSupportScanResult
from sslyze.scanner.models import (
    AllScanCommandsAttempts,
    ServerScanRequest,
    ServerScanStatusEnum,
)
from sslyze.scanner.scan_command_attempt import ScanCommandAttempt, ScanCommandAttemptStatusEnum
from sslyze.scanner.scanner import Scanner
from sslyze.server_setting import ServerNetworkConfiguration, ServerNetworkLocation

from conformance.catalogue import CheckResult, Status, result
from conformance.profiles import Profile
from tls import rules

# Mozilla's spelling of each version, and the sslyze result field holding its suites.
VERSIONS = (
    ("SSLv2", "ssl_2_0_cipher_suites", ScanCommand.SSL_2_0_CIPHER_SUITES),
    ("SSLv3", "ssl_3_0_cipher_suites", ScanCommand.SSL_3_0_CIPHER_SUITES),
    ("TLSv1", "tls_1_0_cipher_suites", ScanCommand.TLS_1_0_CIPHER_SUITES),
    ("TLSv1.1", "tls_1_1_cipher_suites", ScanCommand.TLS_1_1_CIPHER_SUITES),
    ("TLSv1.2", "tls_1_2_cipher_suites", ScanCommand.TLS_1_2_CIPHER_SUITES),
    ("TLSv1.3", "tls_1_3_cipher_suites", ScanCommand.TLS_1_3_CIPHER_SUITES),
)
# What the checks need and nothing more (sslyze scans are slow): the certificate checks
# need only the chain; the TLS checks need the rest, and the chain for OCSP stapling.
CERTIFICATE_COMMANDS = frozenset({ScanCommand.CERTIFICATE_INFO})
TLS_COMMANDS = frozenset(
    {command for _, _, command in VERSIONS}
    | {
        ScanCommand.CERTIFICATE_INFO,
        ScanCommand.ELLIPTIC_CURVES,
        ScanCommand.TLS_COMPRESSION,
        ScanCommand.SESSION_RENEGOTIATION,
        ScanCommand.HEARTBLEED,
        ScanCommand.ROBOT,
        ScanCommand.OPENSSL_CCS_INJECTION,
        ScanCommand.SESSION_RESUMPTION,
    }
)


class ScanError(Exception):
    """sslyze could not talk TLS to the server at all."""


@dataclass(frozen=True)
class AcceptedSuite:
    """A cipher suite the server accepted, under one protocol version."""

    version: str
    name: str


@dataclass
class TlsFacts:
    """What the scan found; ``None`` means the scan command could not tell."""

    versions: dict[str, bool] = field(default_factory=dict)
    suites: list[AcceptedSuite] = field(default_factory=list)
    groups: list[str] | None = None
    chain: list[x509.Certificate] = field(default_factory=list)
    ocsp_stapled: bool | None = None
    compression: bool | None = None
    secure_renegotiation: bool | None = None
    client_renegotiation: bool | None = None
    heartbleed: bool | None = None
    ccs_injection: bool | None = None
    robot: str | None = None
    resumption: str | None = None
    errors: dict[str, str] = field(default_factory=dict)
    """Scan command -> why it could not complete."""


def version_label(version: str) -> str:
    """``TLSv1.2`` -> ``TLS 1.2``; ``TLSv1`` -> ``TLS 1.0``."""
    if version == "TLSv1":
        return "TLS 1.0"
    return version.replace("v", " ", 1)


def scan(
    host: str,
    port: int,
    ip_address: str,
    commands: frozenset[ScanCommand] = TLS_COMMANDS,
    server_name: str | None = None,
    timeout: int = 10,
) -> TlsFacts:
    """Run ``commands`` against ``ip_address:port`` (as ``host``, SNI ``server_name`` or
    ``host``) with sslyze."""
    location = ServerNetworkLocation(hostname=host, port=port, ip_address=ip_address)
    network = ServerNetworkConfiguration(
        tls_server_name_indication=server_name or host,
        network_timeout=timeout,
        network_max_retries=2,
    )
    request = ServerScanRequest(
        server_location=location, network_configuration=network, scan_commands=set(commands)
    )
    scanner = Scanner()
    with warnings.catch_warnings():
        # sslyze loads its bundled trust stores; some roots there have negative serials.
        warnings.simplefilter("ignore", CryptographyDeprecationWarning)
        scanner.queue_scans([request])
        results = list(scanner.get_results())
    server = results[0]
    if server.scan_status != ServerScanStatusEnum.COMPLETED or server.scan_result is None:
        trace = server.connectivity_error_trace
        reason = "".join(trace.format_exception_only()).strip() if trace else "unknown error"
        raise ScanError(f"no TLS connection to {host}:{port}: {reason}")
    return _facts(server.scan_result)


_T = TypeVar("_T")


def _completed(attempt: ScanCommandAttempt[_T], name: str, facts: TlsFacts) -> _T | None:
    if attempt.status != ScanCommandAttemptStatusEnum.COMPLETED or attempt.result is None:
        reason = str(attempt.error_reason.value if attempt.error_reason else attempt.status.value)
        if attempt.error_trace is not None:
            reason += ": " + "".join(attempt.error_trace.format_exception_only()).strip()
        facts.errors[name] = reason
        return None
    return attempt.result


def _facts(scanned: AllScanCommandsAttempts) -> TlsFacts:
    facts = TlsFacts()
    for version, name, _ in VERSIONS:
        suites: CipherSuitesScanResult | None = _completed(getattr(scanned, name), name, facts)
        if suites is None:
            continue
        facts.versions[version] = suites.is_tls_version_supported
        facts.suites += [
            AcceptedSuite(version, accepted.cipher_suite.name)
            for accepted in suites.accepted_cipher_suites
        ]
    curves = _completed(scanned.elliptic_curves, "elliptic_curves", facts)
    if curves is not None:
        facts.groups = [curve.name for curve in curves.supported_curves or []]
    info = _completed(scanned.certificate_info, "certificate_info", facts)
    if info is not None and info.certificate_deployments:
        deployment = info.certificate_deployments[0]
        facts.chain = list(deployment.received_certificate_chain)
        facts.ocsp_stapled = deployment.ocsp_response is not None
    compression = _completed(scanned.tls_compression, "tls_compression", facts)
    if compression is not None:
        facts.compression = compression.supports_compression
    reneg = _completed(scanned.session_renegotiation, "session_renegotiation", facts)
    if reneg is not None:
        facts.secure_renegotiation = reneg.supports_secure_renegotiation
        facts.client_renegotiation = reneg.is_vulnerable_to_client_renegotiation_dos
    heartbleed = _completed(scanned.heartbleed, "heartbleed", facts)
    if heartbleed is not None:
        facts.heartbleed = heartbleed.is_vulnerable_to_heartbleed
    ccs = _completed(scanned.openssl_ccs_injection, "openssl_ccs_injection", facts)
    if ccs is not None:
        facts.ccs_injection = ccs.is_vulnerable_to_ccs_injection
    robot = _completed(scanned.robot, "robot", facts)
    if robot is not None:
        facts.robot = str(robot.robot_result.value)
    resumption = _completed(scanned.session_resumption, "session_resumption", facts)
    if resumption is not None:
        facts.resumption = _resumption_text(resumption)
    return facts


def _resumption_text(resumption: SessionResumptionSupportScanResult) -> str:
    ids = resumption.session_id_resumption_result
    tickets = resumption.tls_ticket_resumption_result
    if ids == TlsResumptionSupportEnum.SERVER_IS_TLS_1_3_ONLY:
        return "TLS 1.3 only: sslyze tests resumption over TLS 1.2, so it was not measured"
    return (
        f"session IDs: {ids.value.lower().replace('_', ' ')}; "
        f"session tickets: {tickets.value.lower().replace('_', ' ')}"
    )


# Pure judgement from here on.

_WEAK_MARKERS = ("_NULL_", "_anon_", "EXPORT", "_DES_", "_MD5", "DES40")
_AEAD_MARKERS = ("_GCM_", "CHACHA20_POLY1305", "_CCM")


def is_3des(name: str) -> bool:
    """A triple-DES suite (SWEET32)."""
    return "3DES" in name or "DES_EDE" in name


def is_rc4(name: str) -> bool:
    """An RC4 suite."""
    return "_RC4_" in name


def is_cbc(name: str) -> bool:
    """A CBC-mode suite."""
    return "_CBC" in name


def is_weak(name: str) -> bool:
    """NULL, anonymous, export, single-DES or MD5 suites."""
    return any(marker in name for marker in _WEAK_MARKERS) and not is_3des(name)


def has_forward_secrecy(suite: AcceptedSuite) -> bool:
    """TLS 1.3 suites always; TLS 1.2 and older only with ephemeral (EC)DH."""
    return suite.version == "TLSv1.3" or suite.name.startswith(("TLS_ECDHE_", "TLS_DHE_"))


def is_aead(suite: AcceptedSuite) -> bool:
    """An authenticated-encryption suite (GCM, ChaCha20-Poly1305, CCM)."""
    return suite.version == "TLSv1.3" or any(marker in suite.name for marker in _AEAD_MARKERS)


def _skip(check_id: str, facts: TlsFacts, *commands: str) -> CheckResult | None:
    missing = [
        f"{command}: {facts.errors[command]}" for command in commands if command in facts.errors
    ]
    if missing:
        return result(check_id, Status.SKIP, "sslyze could not tell (" + "; ".join(missing) + ")")
    return None


def _suite_check(
    check_id: str, facts: TlsFacts, bad: Sequence[AcceptedSuite], what: str
) -> CheckResult:
    skipped = _skip(check_id, facts, *(name for _, name, _ in VERSIONS))
    if bad:
        listed = ", ".join(f"{suite.name} ({version_label(suite.version)})" for suite in bad)
        return result(check_id, Status.FAIL, f"accepted {what}: {listed}")
    if skipped is not None:
        return skipped
    return result(check_id, Status.PASS, f"no {what} accepted")


def _protocols(facts: TlsFacts, profile: Profile) -> CheckResult:
    accepted = [version for version, _, _ in VERSIONS if facts.versions.get(version)]
    names = ", ".join(map(version_label, accepted)) or "none"
    not_allowed = [version for version in accepted if version not in profile.versions]
    if not_allowed:
        allowed = ", ".join(sorted(map(version_label, profile.versions)))
        return result(
            "tls-protocols",
            Status.FAIL,
            f"accepts {', '.join(map(version_label, not_allowed))}; the {profile.name} "
            f"profile allows only {allowed} (accepted: {names})",
        )
    if not accepted:
        return result("tls-protocols", Status.FAIL, "no protocol version accepted")
    # A version neither accepted nor refused is one whose scan errored.
    untested = _skip("tls-protocols", facts, *(name for _, name, _ in VERSIONS))
    return untested or result("tls-protocols", Status.PASS, f"accepts {names}; refuses the others")


# Check id, what makes a suite bad for it, how to name the bad ones.
_SUITE_RULES: tuple[tuple[str, Callable[[AcceptedSuite], bool], str], ...] = (
    ("tls-cipher-3des", lambda suite: is_3des(suite.name), "3DES suites"),
    ("tls-cipher-rc4", lambda suite: is_rc4(suite.name), "RC4 suites"),
    ("tls-cipher-cbc", lambda suite: is_cbc(suite.name), "CBC suites"),
    (
        "tls-cipher-pfs",
        lambda suite: not has_forward_secrecy(suite),
        "suites without forward secrecy",
    ),
    ("tls-cipher-weak", lambda suite: is_weak(suite.name), "NULL/anonymous/export/DES/MD5 suites"),
)


def evaluate_protocols(facts: TlsFacts, profile: Profile) -> list[CheckResult]:
    """Protocol versions and every cipher-suite check."""
    suites = facts.suites
    results = [_protocols(facts, profile)]
    for check_id, bad, what in _SUITE_RULES:
        results.append(_suite_check(check_id, facts, [s for s in suites if bad(s)], what))
    if profile.suites is None:
        outside = [s for s in suites if not (is_aead(s) and has_forward_secrecy(s))]
        what = "suites that are not AEAD with forward secrecy"
    else:
        allowed = profile.suites
        outside = [s for s in suites if s.name not in allowed]
        what = f"suites outside the {profile.name} profile"
    checked = _suite_check("tls-cipher-profile", facts, outside, what)
    if checked.status is Status.PASS:
        listed = ", ".join(sorted({s.name for s in suites}))
        checked = result("tls-cipher-profile", Status.PASS, f"all accepted suites fit: {listed}")
    results.append(checked)
    return results


def evaluate_groups(facts: TlsFacts, profile: Profile) -> CheckResult:
    """Key-exchange groups against the profile's X25519 / P-256 / P-384."""
    if facts.groups is None:
        return _skip("tls-groups", facts, "elliptic_curves") or result(
            "tls-groups", Status.SKIP, "not scanned"
        )
    expected = ", ".join(sorted(profile.groups))
    offered = ", ".join(facts.groups) or "none"
    extra = [group for group in facts.groups if group not in profile.groups]
    if not set(facts.groups) & profile.groups:
        return result(
            "tls-groups", Status.FAIL, f"offers {offered}; none of the expected {expected}"
        )
    if extra:
        status = Status.FAIL if profile.groups_strict else Status.INFO
        return result(
            "tls-groups",
            status,
            f"offers {offered}; only {expected} expected (extra: {', '.join(extra)})",
        )
    return result("tls-groups", Status.PASS, f"offers {offered}")


def evaluate_vulnerabilities(facts: TlsFacts) -> list[CheckResult]:
    """Compression, renegotiation, Heartbleed, ROBOT, CCS injection, and the two infos."""
    out: list[CheckResult] = []

    def flag(check_id: str, command: str, value: bool | None, bad: str, good: str) -> None:
        if value is None:
            out.append(
                _skip(check_id, facts, command) or result(check_id, Status.SKIP, "not scanned")
            )
        else:
            out.append(
                result(check_id, Status.FAIL if value else Status.PASS, bad if value else good)
            )

    flag(
        "tls-compression",
        "tls_compression",
        facts.compression,
        "the server accepts TLS compression",
        "TLS compression refused",
    )
    if facts.secure_renegotiation is None:
        out.append(
            _skip("tls-renegotiation", facts, "session_renegotiation")
            or result("tls-renegotiation", Status.SKIP, "not scanned")
        )
    elif not facts.secure_renegotiation:
        out.append(
            result(
                "tls-renegotiation", Status.FAIL, "secure renegotiation (RFC 5746) is not supported"
            )
        )
    elif facts.client_renegotiation:
        out.append(
            result(
                "tls-renegotiation",
                Status.FAIL,
                "clients may renegotiate again and again (denial of service)",
            )
        )
    else:
        out.append(
            result(
                "tls-renegotiation",
                Status.PASS,
                "secure renegotiation only; client-initiated renegotiation refused",
            )
        )
    flag(
        "tls-heartbleed",
        "heartbleed",
        facts.heartbleed,
        "VULNERABLE to Heartbleed",
        "not vulnerable",
    )
    if facts.robot is None:
        out.append(
            _skip("tls-robot", facts, "robot") or result("tls-robot", Status.SKIP, "not scanned")
        )
    else:
        vulnerable = facts.robot in (
            RobotScanResultEnum.VULNERABLE_STRONG_ORACLE.value,
            RobotScanResultEnum.VULNERABLE_WEAK_ORACLE.value,
        )
        out.append(
            result(
                "tls-robot",
                Status.FAIL if vulnerable else Status.PASS,
                facts.robot.lower().replace("_", " "),
            )
        )
    flag(
        "tls-ccs-injection",
        "openssl_ccs_injection",
        facts.ccs_injection,
        "VULNERABLE to CCS injection",
        "not vulnerable",
    )
    out.append(
        result("tls-session-resumption", Status.INFO, facts.resumption)
        if facts.resumption is not None
        else _skip("tls-session-resumption", facts, "session_resumption")
        or result("tls-session-resumption", Status.SKIP, "not scanned")
    )
    if facts.ocsp_stapled is None:
        out.append(
            _skip("tls-ocsp-stapling", facts, "certificate_info")
            or result("tls-ocsp-stapling", Status.SKIP, "not scanned")
        )
    else:
        out.append(
            result(
                "tls-ocsp-stapling",
                Status.INFO,
                "an OCSP response is stapled" if facts.ocsp_stapled else "no OCSP response stapled",
            )
        )
    return out


PUBLIC_CA_ADVICE = (
    "LINE accepts only certificates from publicly trusted CAs: get one (e.g. Let's Encrypt)"
)

#: One mapping from the certificate rules' levels to the report's statuses: an
#: error (a client such as LINE's refuses the chain) fails the check; a warning
#: (works, should be fixed) is reported as info, as the report has no warning.
STATUS_OF_LEVEL = {
    rules.Level.OK: Status.PASS,
    rules.Level.INFO: Status.INFO,
    rules.Level.WARNING: Status.INFO,
    rules.Level.ERROR: Status.FAIL,
}


def _finding_result(
    check_id: str,
    findings: Sequence[rules.Finding],
    code: str,
    *,
    advice: str | None = None,
) -> CheckResult | None:
    """The worst of the rules' ``code`` findings as a check; ``advice`` replaces theirs."""
    matching = [finding for finding in findings if finding.code == code]
    if not matching:
        return None
    level = rules.worst(matching)
    text = "; ".join(
        finding.message + (f" (fix: {advice or finding.advice})" if finding.advice else "")
        for finding in matching
        if finding.level is level
    )
    return result(check_id, STATUS_OF_LEVEL[level], text)


def evaluate_certificate(
    chain: Sequence[x509.Certificate],
    profile: Profile,
    anchors: Sequence[x509.Certificate],
    anchors_name: str,
    host: str,
    now: datetime.datetime,
) -> list[CheckResult]:
    """The cert-* checks, from the chain as received, by the certificate rules
    (:mod:`tls.rules`) plus the profile's own limits (lifetime, key type)."""
    if not chain:
        reason = "no certificate chain was received"
        return [
            result(check_id, Status.SKIP, reason)
            for check_id in (
                "cert-trusted",
                "cert-chain-complete",
                "cert-chain-order",
                "cert-root-sent",
                "cert-validity-period",
                "cert-expiry",
                "cert-hostname",
                "cert-key",
                "cert-signature",
            )
        ]
    findings = rules.judge(chain, anchors, anchors_name=anchors_name, host=host, now=now)
    unknown = "unknown: the chain did not build (see cert-trusted)"
    out = [
        _finding_result(
            "cert-trusted",
            findings,
            "chain-trusted",
            advice=PUBLIC_CA_ADVICE if profile.public_trust else None,
        ),
        _finding_result("cert-chain-complete", findings, "chain-complete")
        or result("cert-chain-complete", Status.SKIP, unknown),
        _finding_result("cert-chain-order", findings, "chain-order"),
        _finding_result("cert-root-sent", findings, "root-sent")
        or result("cert-root-sent", Status.SKIP, unknown),
    ]
    leaf = rules.chain_shape(chain).path[0]
    out.append(_validity_period(leaf, profile))
    out.append(_finding_result("cert-expiry", findings, "expiry"))
    out.append(_finding_result("cert-hostname", findings, "hostname"))
    out.append(_key(leaf, profile, findings))
    out.append(_finding_result("cert-signature", findings, "signature"))
    return [item for item in out if item is not None]


def _validity_period(leaf: x509.Certificate, profile: Profile) -> CheckResult:
    days = rules.lifetime(leaf).days
    limit = profile.max_lifetime_days
    if days > limit:
        return result(
            "cert-validity-period",
            Status.FAIL,
            f"the leaf is valid for {days} days; the {profile.name} profile allows "
            f"at most {limit} (renew automatically, e.g. ACME every 60 days)",
        )
    return result("cert-validity-period", Status.PASS, f"valid for {days} days (at most {limit})")


def _key(
    leaf: x509.Certificate, profile: Profile, findings: Sequence[rules.Finding]
) -> CheckResult | None:
    """The rules' verdict on the key, and the profile's key type on top: Mozilla's
    modern profile takes ECDSA only."""
    key = leaf.public_key()
    if profile.ecdsa_only and not isinstance(key, ec.EllipticCurvePublicKey):
        return result(
            "cert-key",
            Status.FAIL,
            f"{_key_name(key)}; the {profile.name} profile wants ECDSA P-256 or P-384",
        )
    return _finding_result("cert-key", findings, "key-type")


def _key_name(key: object) -> str:
    if isinstance(key, rsa.RSAPublicKey):
        return f"RSA {key.key_size}"
    return type(key).__name__
