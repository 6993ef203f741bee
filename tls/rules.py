"""The certificate rules: would a client (LINE's, a browser) refuse this chain, and why?

One set of rules, used by ``linerelay tls check``, by the conformance suite's
certificate checks and by the relay itself on every start and reload (on
the chain it is about to serve). :func:`judge` is pure: given the
certificates as a server sends them (or as a file lists them), the trust
anchors, and optionally the private key and the public host name, it returns
:class:`Finding` objects, each saying what is right or wrong and, when
wrong, what to do. Each rule has one severity, whoever asks:

- **error**: a client such as LINE's refuses the chain (expired or not yet
  valid, an intermediate missing, the name not covered, the key not the
  leaf's, a key or signature no TLS 1.3 client takes, a chain out of order);
- **warning**: it works today but should be fixed (renewal overdue, a root
  sent for nothing, a P-521 or EdDSA key many clients refuse);
- **info**: worth knowing (a lifetime only a private CA issues).

The thresholds, and why: docs/conformance.md, "Certificate rules".

The chain is built and verified with OpenSSL (pyOpenSSL's
``X509StoreContext``), not with ``cryptography``'s RFC 5280 verifier: the
latter rejects leaves whose subjectAltName is marked critical while the
subject is non-empty, which trustme makes and OpenSSL, browsers and LINE
accept. Time is checked separately (OpenSSL's ``NO_CHECK_TIME``) so that an
expired certificate is reported as expired, not as an unbuildable chain.
"""

from __future__ import annotations

import datetime
import enum
import ipaddress
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.x509.oid import AuthorityInformationAccessOID
from OpenSSL import crypto

# X509_V_FLAG_NO_CHECK_TIME; pyOpenSSL does not name it.
_NO_CHECK_TIME = 0x200000
# OpenSSL verify error codes we explain in words.
_ERR_UNABLE_TO_GET_ISSUER = (2, 20)
_ERR_SELF_SIGNED_LEAF = 18
_ERR_SELF_SIGNED_IN_CHAIN = 19

#: CA/Browser Forum baseline requirements: publicly trusted leaves live at most 398 days.
PUBLIC_MAX_LIFETIME_DAYS = 398
#: Renewal is due this long before expiry at the latest (certbot's default)...
RENEWAL_WINDOW = datetime.timedelta(days=30)
#: ...or when this share of the lifetime is left, if that is sooner (Let's Encrypt's
#: advice for short-lived certificates: renew at two thirds of the lifetime).
RENEWAL_SHARE = 1 / 3
#: The ECDSA curves every TLS client takes (Mozilla's profiles, public CAs' issuance).
GOOD_CURVES = ("secp256r1", "secp384r1")

FULLCHAIN_ADVICE = (
    "serve the full chain: your certificate first, then the intermediate(s) that issued it "
    "(with certbot use fullchain.pem, not cert.pem; with other CAs append their "
    "'CA bundle' or intermediate file after your certificate)"
)
PRIVATE_ROOT_OK = "nothing to do for tests or a private deployment"
PRIVATE_CA_NOTE = (
    "LINE accepts only publicly trusted certificates and will refuse this one; "
    "fine for tests and private deployments"
)


class Level(enum.StrEnum):
    """How bad a finding is (see the module's docstring)."""

    OK = "ok"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


@dataclass(frozen=True)
class Finding:
    """One thing the rules found: a code, a level, what they saw, and what to do."""

    code: str
    level: Level
    message: str
    advice: str = ""

    def as_dict(self) -> dict[str, str]:
        """JSON-ready form."""
        return {key: str(value) for key, value in asdict(self).items()}

    def __str__(self) -> str:
        return f"{self.code}: {self.message}" + (f" (fix: {self.advice})" if self.advice else "")


@dataclass(frozen=True)
class ChainShape:
    """How the certificates sent relate to each other."""

    path: list[x509.Certificate]
    """Leaf first, then each sent certificate that issued the one before it."""
    extras: list[x509.Certificate]
    """Sent certificates that are not on the path."""
    in_order: bool
    """The certificates were sent as ``path`` then nothing else."""


def describe(cert: x509.Certificate) -> str:
    """A short human name for a certificate: its subject, RFC 4514."""
    return cert.subject.rfc4514_string() or "(empty subject)"


def is_self_issued(cert: x509.Certificate) -> bool:
    """The certificate names itself as issuer and its signature verifies with its own key."""
    if cert.issuer != cert.subject:
        return False
    return _signed_by(cert, cert)


def _signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    if cert.issuer != issuer.subject:
        return False
    try:
        cert.verify_directly_issued_by(issuer)
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


def find_leaf(certs: Sequence[x509.Certificate]) -> x509.Certificate:
    """The end-entity certificate: the first non-CA one, else the first one."""
    for cert in certs:
        if not _is_ca(cert):
            return cert
    return certs[0]


def chain_shape(certs: Sequence[x509.Certificate]) -> ChainShape:
    """Work out the issuing path from the leaf through the sent certificates."""
    leaf = find_leaf(certs)
    path = [leaf]
    remaining = [cert for cert in certs if cert is not leaf]
    while True:
        current = path[-1]
        if is_self_issued(current):
            break
        issuer = next((cert for cert in remaining if _signed_by(current, cert)), None)
        if issuer is None:
            break
        path.append(issuer)
        remaining.remove(issuer)
    in_order = list(certs) == path
    return ChainShape(path=path, extras=remaining, in_order=in_order)


def ca_issuers(cert: x509.Certificate) -> list[str]:
    """The URLs where the certificate's CA publishes the issuing certificate (AIA caIssuers)."""
    try:
        access = cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    except x509.ExtensionNotFound:
        return []
    return [
        description.access_location.value
        for description in access
        if description.access_method == AuthorityInformationAccessOID.CA_ISSUERS
        and isinstance(description.access_location, x509.UniformResourceIdentifier)
    ]


def _verify(
    path: Sequence[x509.Certificate],
    extras: Sequence[x509.Certificate],
    anchors: Sequence[x509.Certificate],
) -> tuple[list[x509.Certificate] | None, crypto.X509StoreContextError | None]:
    store = crypto.X509Store()
    for anchor in anchors:
        store.add_cert(crypto.X509.from_cryptography(anchor))
    store.set_flags(_NO_CHECK_TIME)
    untrusted = [crypto.X509.from_cryptography(cert) for cert in [*path[1:], *extras]]
    context = crypto.X509StoreContext(store, crypto.X509.from_cryptography(path[0]), untrusted)
    try:
        verified = context.get_verified_chain()
    except crypto.X509StoreContextError as exc:
        return None, exc
    return [cert.to_cryptography() for cert in verified], None


def _trust_findings(
    shape: ChainShape,
    anchors: Sequence[x509.Certificate],
    anchors_name: str,
    private_ca_ok: bool,
) -> list[Finding]:
    verified, error = _verify(shape.path, shape.extras, anchors)
    top = shape.path[-1]
    if verified is not None:
        return _trusted_findings(shape, verified, anchors_name)
    assert error is not None
    code = error.errors[0] if error.errors else -1
    reason = str(error.errors[2]) if len(error.errors) > 2 else str(error)
    # Whose root it is, only the anchors can say: a private CA's chain is no
    # mistake when the caller allows one, and LINE's refusal of it is a warning.
    untrusted = Level.WARNING if private_ca_ok else Level.ERROR
    note = f"; {PRIVATE_CA_NOTE}" if private_ca_ok else ""
    # Where the caller's anchors came from tells what to do about a private root.
    private = PRIVATE_ROOT_OK if private_ca_ok else "give it with --ca"
    if code == _ERR_SELF_SIGNED_LEAF:
        return [
            Finding(
                "chain-trusted",
                untrusted,
                f"the certificate '{describe(top)}' is self-signed; no client trusts it{note}",
                "get a certificate from a public CA (e.g. Let's Encrypt); LINE only accepts "
                "publicly trusted certificates",
            )
        ]
    if code == _ERR_SELF_SIGNED_IN_CHAIN:
        return [
            Finding(
                "chain-trusted",
                untrusted,
                f"the chain ends at the root '{describe(top)}', which {anchors_name} does not "
                f"trust{note}",
                f"use a certificate from a publicly trusted CA; for a private CA, {private}",
            )
        ]
    if code in _ERR_UNABLE_TO_GET_ISSUER:
        return _missing_issuer_findings(
            shape, anchors_name, private_ca_ok, untrusted, note, private
        )
    return [
        Finding(
            "chain-trusted",
            Level.ERROR,
            f"OpenSSL cannot verify the chain: {reason} (at depth {error.errors[1]})"
            if len(error.errors) > 1
            else f"OpenSSL cannot verify the chain: {reason}",
            "check the certificates with your CA; reissue if they are damaged",
        )
    ]


def _trusted_findings(
    shape: ChainShape, verified: list[x509.Certificate], anchors_name: str
) -> list[Finding]:
    root = verified[-1]
    findings = [
        Finding(
            "chain-trusted",
            Level.OK,
            f"the chain builds to the trusted root '{describe(root)}' ({anchors_name})",
        ),
        Finding(
            "chain-complete",
            Level.OK,
            f"every intermediate is present ({len(verified) - 2} sent)"
            if len(verified) > 2
            else "no intermediate is needed: the leaf is issued by the root",
        ),
    ]
    root_der = root.public_bytes(serialization.Encoding.DER)
    sent_der = {cert.public_bytes(serialization.Encoding.DER) for cert in shape.path}
    if root_der in sent_der:
        findings.append(
            Finding(
                "root-sent",
                Level.WARNING,
                f"the root '{describe(root)}' is sent too; clients already have it and "
                "ignore the copy, so it only costs bytes in every handshake",
                "drop the last certificate (the root) from the file the server uses; "
                "certbot's fullchain.pem already leaves it out",
            )
        )
    else:
        findings.append(Finding("root-sent", Level.OK, "the root is not sent (as it should)"))
    return findings


def _missing_issuer_findings(
    shape: ChainShape,
    anchors_name: str,
    private_ca_ok: bool,
    untrusted: Level,
    note: str,
    private: str,
) -> list[Finding]:
    top = shape.path[-1]
    issuer = top.issuer.rfc4514_string()
    if top is not shape.path[0]:
        return [
            Finding(
                "chain-trusted",
                untrusted,
                f"the chain stops at '{describe(top)}', whose issuer '{issuer}' is neither sent "
                f"nor in {anchors_name}{note}",
                f"if that issuer is a public CA's intermediate, add it to the chain; if it is "
                f"your private root, {private}",
            ),
            Finding(
                "chain-complete",
                Level.WARNING,
                f"an intermediate may be missing above '{describe(top)}'",
                FULLCHAIN_ADVICE,
            ),
        ]
    # Only the leaf is sent. Public CAs never sign leaves with a root (CA/Browser
    # Forum BR §6.1.7), and a CA that publishes the issuer's address (AIA
    # caIssuers) says it is an intermediate: either way it is missing. A leaf
    # without that address may be a private root's (trustme makes those).
    published = ca_issuers(top)
    missing = Level.ERROR if published or not private_ca_ok else Level.WARNING
    where = f" (its CA publishes it at {published[0]})" if published else ""
    return [
        Finding(
            "chain-trusted",
            untrusted,
            f"the chain does not build: '{issuer}', the issuer of the leaf, is neither "
            f"sent nor in {anchors_name}{note}",
            f"if that issuer is your own private root, {private}",
        ),
        Finding(
            "chain-complete",
            missing,
            f"only the leaf is sent: the intermediate certificate that issued it "
            f"('{issuer}') is missing{where}"
            if missing is Level.ERROR
            else f"only the leaf is sent: unless its issuer '{issuer}' is a root, the "
            "intermediate that issued it is missing",
            FULLCHAIN_ADVICE,
        ),
    ]


def _order_findings(shape: ChainShape, sent: Sequence[x509.Certificate]) -> list[Finding]:
    findings: list[Finding] = []
    if shape.in_order:
        findings.append(Finding("chain-order", Level.OK, "leaf first, then each issuer in turn"))
    elif sent[0] is not shape.path[0]:
        findings.append(
            Finding(
                "chain-order",
                Level.ERROR,
                f"the first certificate is '{describe(sent[0])}', not the server's own "
                f"certificate '{describe(shape.path[0])}'",
                "put your certificate first, then the intermediate(s); certbot's fullchain.pem "
                "is already in this order",
            )
        )
    elif not shape.extras:
        findings.append(
            Finding(
                "chain-order",
                Level.ERROR,
                "the intermediates are in the wrong order: each certificate must be "
                "followed by the one that issued it",
                "reorder the file: leaf, then its issuer, then that one's issuer; certbot's "
                "fullchain.pem is already in this order",
            )
        )
    if shape.extras:
        names = "; ".join(f"'{describe(cert)}'" for cert in shape.extras)
        findings.append(
            Finding(
                "chain-order",
                Level.ERROR,
                f"certificates that do not belong to this chain are sent: {names}",
                "remove them; send only the leaf and the intermediates that issued it",
            )
        )
    return findings


def lifetime(cert: x509.Certificate) -> datetime.timedelta:
    """How long the certificate is valid in all (not_after - not_before)."""
    return cert.not_valid_after_utc - cert.not_valid_before_utc


def renewal_threshold(cert: x509.Certificate) -> datetime.timedelta:
    """Time left before expiry at which renewal is due: 30 days, or a third of the
    lifetime if that is less. Past it an ACME client should already have renewed."""
    return min(RENEWAL_WINDOW, lifetime(cert) * RENEWAL_SHARE)


def renewal_due(cert: x509.Certificate, now: datetime.datetime) -> bool:
    """Whether less than :func:`renewal_threshold` is left (or the certificate expired)."""
    return cert.not_valid_after_utc - now < renewal_threshold(cert)


def _days(delta: datetime.timedelta) -> str:
    days = delta.days
    if days >= 1:
        return f"{days} day{'s' if days != 1 else ''}"
    return f"{max(1, round(delta.total_seconds() / 3600))} hour(s)"


def _lifetime_findings(chain: Sequence[x509.Certificate], now: datetime.datetime) -> list[Finding]:
    leaf = chain[0]
    findings: list[Finding] = []
    not_after = leaf.not_valid_after_utc
    not_before = leaf.not_valid_before_utc
    left = not_after - now
    if now < not_before:
        findings.append(
            Finding(
                "expiry",
                Level.ERROR,
                f"the certificate is not valid before {not_before:%Y-%m-%d %H:%M} UTC",
                "check the server's clock, or wait; reissue if the date is wrong",
            )
        )
    elif left.total_seconds() <= 0:
        findings.append(
            Finding(
                "expiry",
                Level.ERROR,
                f"the certificate expired on {not_after:%Y-%m-%d %H:%M} UTC",
                "renew it now (certbot renew) and reload the relay (SIGHUP)",
            )
        )
    elif renewal_due(leaf, now):
        findings.append(
            Finding(
                "expiry",
                Level.WARNING,
                f"the certificate expires in {_days(left)}, on {not_after:%Y-%m-%d %H:%M} UTC; "
                f"renewal was due {_days(renewal_threshold(leaf))} before",
                "renew it now (certbot renew) and check that automatic renewal works",
            )
        )
    else:
        findings.append(
            Finding("expiry", Level.OK, f"valid until {not_after:%Y-%m-%d} ({_days(left)})")
        )
    for cert in chain[1:]:
        if cert.not_valid_after_utc <= now:
            findings.append(
                Finding(
                    "expiry",
                    Level.ERROR,
                    f"the CA certificate '{describe(cert)}' expired on "
                    f"{cert.not_valid_after_utc:%Y-%m-%d}",
                    "download the current intermediate from your CA and rebuild the chain",
                )
            )
    days = lifetime(leaf).days
    if days > PUBLIC_MAX_LIFETIME_DAYS:
        findings.append(
            Finding(
                "lifetime",
                Level.INFO,
                f"the certificate is valid for {days} days; public CAs issue at most "
                f"{PUBLIC_MAX_LIFETIME_DAYS}, so this is a private or test certificate",
                "fine for tests; LINE needs a certificate from a public CA",
            )
        )
    else:
        findings.append(Finding("lifetime", Level.OK, f"valid for {days} days in all"))
    return findings


def san_names(cert: x509.Certificate) -> tuple[list[str], list[str]]:
    """The DNS names and IP addresses in the subjectAltName (empty lists if none)."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return [], []
    dns = san.get_values_for_type(x509.DNSName)
    ips = [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    return dns, ips


def _dns_matches(pattern: str, host: str) -> bool:
    # RFC 6125 §6.4.3: a wildcard stands for exactly one whole left-most label.
    pattern, host = pattern.lower().rstrip("."), host.lower().rstrip(".")
    if pattern.startswith("*."):
        head, _, rest = host.partition(".")
        return bool(head) and rest == pattern[2:]
    return pattern == host


def covers_host(cert: x509.Certificate, host: str) -> bool:
    """Whether the certificate's subjectAltName names ``host`` (a DNS name or an IP)."""
    dns, ips = san_names(cert)
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return any(_dns_matches(pattern, host) for pattern in dns)
    return any(ipaddress.ip_address(ip) == address for ip in ips)


def _host_findings(leaf: x509.Certificate, host: str) -> list[Finding]:
    dns, ips = san_names(leaf)
    names = ", ".join([*dns, *ips]) or "nothing"
    if not dns and not ips:
        return [
            Finding(
                "hostname",
                Level.ERROR,
                "the certificate has no subjectAltName; clients ignore the common name",
                f"reissue it with {host} as a subjectAltName",
            )
        ]
    if covers_host(leaf, host):
        return [Finding("hostname", Level.OK, f"{host} is covered (the certificate names {names})")]
    return [
        Finding(
            "hostname",
            Level.ERROR,
            f"the certificate does not cover {host}: it names {names}",
            f"get a certificate that names {host}, or point LINE at a name the certificate has",
        )
    ]


def _key_findings(leaf: x509.Certificate) -> list[Finding]:
    key = leaf.public_key()
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < 2048:
            return [
                Finding(
                    "key-type",
                    Level.ERROR,
                    f"RSA key of {key.key_size} bits; 2048 is the minimum (OpenSSL's default "
                    "security level refuses less, and no public CA issues it)",
                    "reissue with an ECDSA P-256 key (or RSA 2048+)",
                )
            ]
        return [Finding("key-type", Level.OK, f"RSA {key.key_size} bits")]
    if isinstance(key, ec.EllipticCurvePublicKey):
        curve = key.curve.name
        if curve in GOOD_CURVES:
            return [Finding("key-type", Level.OK, f"ECDSA {curve}")]
        if curve == "secp521r1":
            return [
                Finding(
                    "key-type",
                    Level.WARNING,
                    "ECDSA P-521: OpenSSL and Java take it, but Chrome does not and Mozilla's "
                    "profiles name only P-256 and P-384",
                    "reissue with an ECDSA P-256 key",
                )
            ]
        return [
            Finding(
                "key-type",
                Level.ERROR,
                f"ECDSA on {curve}; TLS 1.3 signs with ECDSA on P-256, P-384 and P-521 only "
                "(RFC 8446 §4.2.3), so clients cannot use this certificate",
                "reissue with an ECDSA P-256 key",
            )
        ]
    if isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        return [
            Finding(
                "key-type",
                Level.WARNING,
                "EdDSA key; public CAs do not issue these and most TLS clients reject them",
                "reissue with an ECDSA P-256 key",
            )
        ]
    if isinstance(key, dsa.DSAPublicKey):
        return [
            Finding(
                "key-type",
                Level.ERROR,
                "DSA key; TLS 1.3 has no DSA signatures and clients reject it",
                "reissue with ECDSA P-256",
            )
        ]
    return [Finding("key-type", Level.WARNING, f"unusual key type {type(key).__name__}")]


def _signature_findings(chain: Sequence[x509.Certificate]) -> list[Finding]:
    findings = []
    for cert in chain:
        if is_self_issued(cert):
            continue  # a root's own signature is never checked by clients
        algorithm = cert.signature_hash_algorithm
        if isinstance(algorithm, hashes.SHA1 | hashes.MD5):
            findings.append(
                Finding(
                    "signature",
                    Level.ERROR,
                    f"'{describe(cert)}' is signed with {algorithm.name.upper()}, which clients "
                    "reject",
                    "reissue it; any CA signs with SHA-256 today",
                )
            )
    if not findings:
        names = {_signature_name(cert) for cert in chain if not is_self_issued(cert)}
        findings.append(
            Finding("signature", Level.OK, "signed with " + (", ".join(sorted(names)) or "-"))
        )
    return findings


def _signature_name(cert: x509.Certificate) -> str:
    algorithm = cert.signature_hash_algorithm
    return algorithm.name.upper() if algorithm is not None else "EdDSA"


def _match_findings(leaf: x509.Certificate, key: PrivateKeyTypes) -> list[Finding]:
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(*spki) == leaf.public_key().public_bytes(*spki):
        return [Finding("key-match", Level.OK, "the private key belongs to the certificate")]
    return [
        Finding(
            "key-match",
            Level.ERROR,
            "the private key does not belong to this certificate",
            "use the key issued with this certificate (certbot: privkey.pem from the same "
            "live/NAME/ directory as fullchain.pem)",
        )
    ]


class NoCertificateError(ValueError):
    """:func:`judge` was given no certificate."""


def judge(
    certs: Sequence[x509.Certificate],
    anchors: Sequence[x509.Certificate],
    *,
    anchors_name: str = "the trust store",
    host: str | None = None,
    key: PrivateKeyTypes | None = None,
    now: datetime.datetime | None = None,
    private_ca_ok: bool = False,
) -> list[Finding]:
    """Every finding about ``certs`` (as sent, or as a file lists them, in that order).

    ``host``: the public name the leaf must cover (None: not checked).
    ``key``: the private key that must be the leaf's (None: not checked).
    ``private_ca_ok``: a chain may end at a root ``anchors`` do not hold (the
    relay judging what it serves: tests and private deployments use such
    chains); that is then a warning, and only a provably missing intermediate
    an error. Otherwise (``tls check``, conformance) an untrusted chain is an error.
    """
    if not certs:
        raise NoCertificateError("no certificate to check")
    when = now or datetime.datetime.now(datetime.UTC)
    shape = chain_shape(certs)
    leaf = shape.path[0]
    findings = _trust_findings(shape, anchors, anchors_name, private_ca_ok)
    findings += _order_findings(shape, certs)
    if key is not None:
        findings += _match_findings(leaf, key)
    findings += _lifetime_findings(shape.path, when)
    if host:
        findings += _host_findings(leaf, host)
    findings += _key_findings(leaf)
    findings += _signature_findings(shape.path)
    return findings


def worst(findings: Sequence[Finding]) -> Level:
    """The most serious level among ``findings``."""
    order = list(Level)
    return max((finding.level for finding in findings), key=order.index, default=Level.OK)


def of_level(findings: Sequence[Finding], level: Level) -> list[Finding]:
    """The findings of exactly ``level``."""
    return [finding for finding in findings if finding.level is level]
