"""Every check the suite knows: its id, title, group, severity, reference and meaning.

Results (:class:`CheckResult`) pair a catalogue entry with a status and the
evidence (``detail``). The report formats and docs/conformance.md are built
from this one table, so a check is described in exactly one place.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

MOZILLA = "https://wiki.mozilla.org/Security/Server_Side_TLS"
LINE_WEBHOOKS = "https://developers.line.biz/en/reference/messaging-api/#webhooks"
LINE_SIGNATURE = "https://developers.line.biz/en/docs/messaging-api/verify-webhook-signature/"
PROTOCOL = "linerelay PROTOCOL.md §1 (webhook ingress)"


def _cve(cve_id: str) -> str:
    return f"https://nvd.nist.gov/vuln/detail/{cve_id}"


class Status(enum.StrEnum):
    """A check's outcome (PROTOCOL.md §4)."""

    PASS = "pass"  # noqa: S105  (a status, not a password)
    FAIL = "fail"
    SKIP = "skip"
    INFO = "info"


class Severity(enum.StrEnum):
    """How much a failure of the check matters."""

    CRITICAL = "critical"
    HIGH = "high"
    MEDIUM = "medium"
    LOW = "low"
    INFO = "info"


class Group(enum.StrEnum):
    """Which part of the suite runs a check; ``--only`` selects groups."""

    TLS = "tls"
    CERTIFICATE = "certificate"
    WEBHOOK = "webhook"


@dataclass(frozen=True)
class CheckSpec:
    """A check as the catalogue describes it."""

    id: str
    title: str
    group: Group
    severity: Severity
    reference: str
    meaning: str
    """What the check proves and why it matters, for people who are not TLS experts."""


@dataclass(frozen=True)
class CheckResult:
    """A check's outcome with its evidence."""

    spec: CheckSpec
    status: Status
    detail: str

    @property
    def id(self) -> str:
        """The check's id."""
        return self.spec.id

    def as_dict(self) -> dict[str, str]:
        """The JSON report's row: exactly the keys PROTOCOL.md §4 names."""
        return {
            "id": self.spec.id,
            "title": self.spec.title,
            "status": self.status.value,
            "severity": self.spec.severity.value,
            "detail": self.detail,
            "reference": self.spec.reference,
        }


_SPECS = (
    # TLS, from sslyze's scan.
    CheckSpec(
        "tls-protocols",
        "Protocol versions",
        Group.TLS,
        Severity.HIGH,
        f"{MOZILLA}; RFC 8996",
        "Which TLS versions the server accepts. The modern profile allows TLS 1.3 only; "
        "intermediate and line allow TLS 1.2 and 1.3 (LINE's client speaks both). SSL 3.0, "
        "TLS 1.0 and 1.1 always fail (RFC 8996 deprecates them).",
    ),
    CheckSpec(
        "tls-cipher-3des",
        "No 3DES cipher suites (SWEET32)",
        Group.TLS,
        Severity.HIGH,
        _cve("CVE-2016-2183"),
        "3DES has a 64-bit block: after about 32 GB on one connection an attacker can recover "
        "plaintext (SWEET32).",
    ),
    CheckSpec(
        "tls-cipher-rc4",
        "No RC4 cipher suites",
        Group.TLS,
        Severity.HIGH,
        "RFC 7465; " + _cve("CVE-2015-2808"),
        "RC4's keystream is biased; RFC 7465 forbids it in TLS.",
    ),
    CheckSpec(
        "tls-cipher-cbc",
        "No CBC-mode cipher suites",
        Group.TLS,
        Severity.MEDIUM,
        f"{MOZILLA}; " + _cve("CVE-2013-0169"),
        "CBC suites in TLS 1.2 are prone to padding-oracle and timing attacks (Lucky 13); "
        "LINE deprecates the CBC-SHA suites and Mozilla's profiles leave CBC out.",
    ),
    CheckSpec(
        "tls-cipher-pfs",
        "Forward secrecy on every cipher suite",
        Group.TLS,
        Severity.HIGH,
        MOZILLA,
        "Suites with RSA key exchange let anyone who later steals the server key decrypt "
        "recorded traffic; (EC)DHE suites do not.",
    ),
    CheckSpec(
        "tls-cipher-weak",
        "No NULL, anonymous, export, DES or MD5 suites",
        Group.TLS,
        Severity.CRITICAL,
        MOZILLA,
        "These suites give no confidentiality or no authentication at all.",
    ),
    CheckSpec(
        "tls-cipher-profile",
        "Cipher suites within the profile",
        Group.TLS,
        Severity.MEDIUM,
        "https://ssl-config.mozilla.org/guidelines/5.7.json",
        "Every accepted suite is on the profile's list: Mozilla's modern or intermediate list, "
        "or for the line profile any AEAD suite with forward secrecy.",
    ),
    CheckSpec(
        "tls-groups",
        "Key-exchange groups",
        Group.TLS,
        Severity.MEDIUM,
        MOZILLA,
        "The elliptic-curve groups offered for key exchange: X25519, P-256 and P-384 are "
        "expected; others (P-521, X448, brainpool, binary curves) widen the attack surface "
        "for no client's benefit.",
    ),
    CheckSpec(
        "tls-compression",
        "TLS compression disabled (CRIME)",
        Group.TLS,
        Severity.HIGH,
        _cve("CVE-2012-4929"),
        "TLS-level compression leaks secrets through the compressed length (CRIME).",
    ),
    CheckSpec(
        "tls-renegotiation",
        "No insecure renegotiation",
        Group.TLS,
        Severity.HIGH,
        _cve("CVE-2009-3555") + "; RFC 5746",
        "Without secure renegotiation (RFC 5746) an attacker can splice data into the start of "
        "a victim's connection; client-initiated renegotiation also lets one client burn the "
        "server's CPU.",
    ),
    CheckSpec(
        "tls-heartbleed",
        "Not vulnerable to Heartbleed",
        Group.TLS,
        Severity.CRITICAL,
        _cve("CVE-2014-0160"),
        "Heartbleed lets anyone read the server's memory, including its private key.",
    ),
    CheckSpec(
        "tls-robot",
        "Not vulnerable to ROBOT",
        Group.TLS,
        Severity.HIGH,
        _cve("CVE-2017-13099"),
        "ROBOT is a Bleichenbacher oracle on RSA key exchange that can decrypt traffic or "
        "sign with the server's key.",
    ),
    CheckSpec(
        "tls-ccs-injection",
        "Not vulnerable to CCS injection",
        Group.TLS,
        Severity.HIGH,
        _cve("CVE-2014-0224"),
        "An early ChangeCipherSpec lets a man in the middle force weak keys (OpenSSL bug).",
    ),
    CheckSpec(
        "tls-session-resumption",
        "Session resumption",
        Group.TLS,
        Severity.INFO,
        "RFC 8446 §2.2",
        "Informational: whether clients can resume sessions (saves a full handshake for each "
        "of LINE's new connections).",
    ),
    CheckSpec(
        "tls-ocsp-stapling",
        "OCSP stapling",
        Group.TLS,
        Severity.INFO,
        "RFC 6066 §8",
        "Informational: whether the server staples an OCSP response; without it clients may "
        "have to ask the CA themselves.",
    ),
    # The certificate chain, from the certificates sslyze received, checked with OpenSSL.
    CheckSpec(
        "cert-trusted",
        "Chain builds to a trusted root",
        Group.CERTIFICATE,
        Severity.CRITICAL,
        LINE_WEBHOOKS,
        "The chain the server sends verifies up to a root in the trust store (--ca, else the "
        "system store; the line profile always uses the public system store, as LINE does).",
    ),
    CheckSpec(
        "cert-chain-complete",
        "Full chain sent (intermediates present)",
        Group.CERTIFICATE,
        Severity.CRITICAL,
        LINE_WEBHOOKS,
        "The server sends the intermediate certificate(s) between its own and the root. A "
        "missing intermediate is the most common reason LINE rejects a webhook URL: browsers "
        "often hide it, LINE does not.",
    ),
    CheckSpec(
        "cert-chain-order",
        "Chain order",
        Group.CERTIFICATE,
        Severity.MEDIUM,
        "RFC 8446 §4.4.2",
        "The server's certificate comes first and each following certificate issued the one "
        "before it, with nothing unrelated in between.",
    ),
    CheckSpec(
        "cert-root-sent",
        "Root not sent",
        Group.CERTIFICATE,
        Severity.LOW,
        "RFC 8446 §4.4.2",
        "Sending the root is harmless but useless: clients use their own copy. Reported as "
        "info when it happens.",
    ),
    CheckSpec(
        "cert-validity-period",
        "Leaf validity period within the profile",
        Group.CERTIFICATE,
        Severity.MEDIUM,
        MOZILLA,
        "The leaf's total lifetime (not_after - not_before): at most 90 days for modern, 366 "
        "for intermediate, 398 for line (the CA/Browser Forum limit for public certificates).",
    ),
    CheckSpec(
        "cert-expiry",
        "Leaf valid now and not about to expire",
        Group.CERTIFICATE,
        Severity.HIGH,
        "RFC 5280 §4.1.2.5",
        "Fails when the leaf is expired or not yet valid (LINE refuses it then); info when "
        "renewal is overdue: fewer than 30 days left, or a third of the lifetime for "
        "shorter-lived certificates (an ACME client should have renewed by then).",
    ),
    CheckSpec(
        "cert-hostname",
        "Certificate covers the host name",
        Group.CERTIFICATE,
        Severity.CRITICAL,
        "RFC 6125",
        "The leaf's subjectAltName names the host of the webhook URL.",
    ),
    CheckSpec(
        "cert-key",
        "Certificate key type and size",
        Group.CERTIFICATE,
        Severity.MEDIUM,
        MOZILLA,
        "ECDSA P-256 or P-384, or (intermediate and line profiles) RSA of at least 2048 "
        "bits. Fails for what clients refuse (RSA under 2048 bits, DSA, curves TLS 1.3 "
        "cannot sign with, RSA under modern); info for P-521 and EdDSA, which some "
        "clients refuse.",
    ),
    CheckSpec(
        "cert-signature",
        "Certificate signature algorithm",
        Group.CERTIFICATE,
        Severity.HIGH,
        MOZILLA,
        "The leaf and intermediates are signed with SHA-256 or stronger, never SHA-1 or MD5.",
    ),
    # Webhook behaviour, probed from outside.
    CheckSpec(
        "webhook-verify-http1",
        "Signed Verify answered 200 in budget (HTTP/1.1)",
        Group.WEBHOOK,
        Severity.CRITICAL,
        f"{LINE_WEBHOOKS}; {PROTOCOL}",
        "A correctly signed Verify request (events: [], so nothing reaches a bridge) over "
        "HTTP/1.1 gets 200 within the one-second budget.",
    ),
    CheckSpec(
        "webhook-verify-http2",
        "Signed Verify answered 200 in budget (HTTP/2)",
        Group.WEBHOOK,
        Severity.HIGH,
        f"{LINE_WEBHOOKS}; {PROTOCOL}",
        "The same over HTTP/2 (negotiated with ALPN h2), which LINE's client also speaks.",
    ),
    CheckSpec(
        "webhook-signature-missing",
        "Missing signature refused (401)",
        Group.WEBHOOK,
        Severity.CRITICAL,
        f"{LINE_SIGNATURE}; {PROTOCOL}",
        'A request without x-line-signature gets 401 {"error": "invalid_signature"}: '
        "LINE publishes no source addresses, so the signature is the only proof of origin.",
    ),
    CheckSpec(
        "webhook-signature-wrong",
        "Wrong signature refused (401)",
        Group.WEBHOOK,
        Severity.CRITICAL,
        f"{LINE_SIGNATURE}; {PROTOCOL}",
        "A well-formed signature made with another secret gets 401.",
    ),
    CheckSpec(
        "webhook-signature-header-case",
        "Signature header name is case-insensitive",
        Group.WEBHOOK,
        Severity.HIGH,
        f"{LINE_SIGNATURE}; RFC 9110 §5.1",
        "A valid signature sent as X-LINE-SIGNATURE (HTTP/1.1, case changed) is accepted: "
        "LINE may change the header's case without notice.",
    ),
    CheckSpec(
        "webhook-body-tampered",
        "Tampered body refused (401)",
        Group.WEBHOOK,
        Severity.CRITICAL,
        f"{LINE_SIGNATURE}; {PROTOCOL}",
        "A body changed after signing (one character) gets 401.",
    ),
    CheckSpec(
        "webhook-reserialised-json",
        "Signature checked over raw bytes, not re-serialised JSON",
        Group.WEBHOOK,
        Severity.HIGH,
        f"{LINE_SIGNATURE}; {PROTOCOL}",
        "A signature computed over the JSON re-serialised (as smee.io does) rather than over "
        "the bytes sent gets 401: the relay must verify and relay the exact bytes.",
    ),
    CheckSpec(
        "webhook-malformed-body",
        "Malformed signed body refused (400)",
        Group.WEBHOOK,
        Severity.MEDIUM,
        PROTOCOL,
        "Correctly signed bodies that are not JSON, or whose events is not an array, get 400 "
        '{"error": "malformed_body"}.',
    ),
    CheckSpec(
        "webhook-oversized-body",
        "Oversized body refused (413)",
        Group.WEBHOOK,
        Severity.MEDIUM,
        PROTOCOL,
        "A signed body one byte over the limit (default 1 MiB, --body-limit) gets 413.",
    ),
    CheckSpec(
        "webhook-method-get",
        "GET refused (405)",
        Group.WEBHOOK,
        Severity.LOW,
        PROTOCOL,
        "The webhook URL answers only POST.",
    ),
    CheckSpec(
        "webhook-error-no-echo",
        "Error bodies never echo the signature",
        Group.WEBHOOK,
        Severity.HIGH,
        PROTOCOL,
        "No error response repeats the signature it was sent or the channel secret.",
    ),
    CheckSpec(
        "webhook-latency",
        "Latency of signed requests within the one-second budget",
        Group.WEBHOOK,
        Severity.HIGH,
        LINE_WEBHOOKS,
        "N signed Verify requests in a row (--requests): each must get 200 within one second. "
        "The detail gives p50, p99 and max.",
    ),
)

CATALOGUE: dict[str, CheckSpec] = {spec.id: spec for spec in _SPECS}


def result(check_id: str, status: Status, detail: str) -> CheckResult:
    """A result for the catalogue entry ``check_id``."""
    return CheckResult(CATALOGUE[check_id], status, detail)


def ids_in(group: Group) -> list[str]:
    """Catalogue order ids of the checks of ``group``."""
    return [spec.id for spec in _SPECS if spec.group is group]
