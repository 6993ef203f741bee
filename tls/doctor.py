"""The certificate doctor: why would a client (LINE's, a browser) reject this chain?

:func:`diagnose` is pure: given the certificates as a server sends them (or
as a file lists them), the trust anchors, and optionally the private key and
the public host name, it returns :class:`Finding` objects, each saying what
is right or wrong and, when wrong, what to do. The I/O helpers around it read
PEM files, the system trust store, or the chain a live server sends.

The chain is built and verified with OpenSSL (pyOpenSSL's
``X509StoreContext``), not with ``cryptography``'s RFC 5280 verifier: the
latter rejects leaves whose subjectAltName is marked critical while the
subject is non-empty, which trustme does and OpenSSL, browsers and LINE
accept. Time is checked separately (OpenSSL's ``NO_CHECK_TIME``) so that an
expired certificate is reported as expired, not as an unbuildable chain.
"""

from __future__ import annotations

import datetime
import enum
import ipaddress
import socket
import ssl
import struct
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.utils import CryptographyDeprecationWarning
from OpenSSL import SSL, crypto

# X509_V_FLAG_NO_CHECK_TIME; pyOpenSSL does not name it.
_NO_CHECK_TIME = 0x200000
# OpenSSL verify error codes we explain in words.
_ERR_UNABLE_TO_GET_ISSUER = (2, 20)
_ERR_SELF_SIGNED_LEAF = 18
_ERR_SELF_SIGNED_IN_CHAIN = 19

# CA/Browser Forum baseline requirements: publicly trusted leaves live at most 398 days.
PUBLIC_MAX_LIFETIME_DAYS = 398
DEFAULT_WARN_DAYS = 30

FULLCHAIN_ADVICE = (
    "serve the full chain: your certificate first, then the intermediate(s) that issued it "
    "(with certbot use fullchain.pem, not cert.pem; with other CAs append their "
    "'CA bundle' or intermediate file after your certificate)"
)


class Level(enum.StrEnum):
    """How bad a finding is."""

    OK = "ok"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


@dataclass(frozen=True)
class Finding:
    """One thing the doctor found: a code, a level, what it saw, and what to do."""

    code: str
    level: Level
    message: str
    advice: str = ""

    def as_dict(self) -> dict[str, str]:
        """JSON-ready form."""
        return {key: str(value) for key, value in asdict(self).items()}


class DoctorError(Exception):
    """Input the doctor cannot work with (unreadable file, no certificate, no connection)."""


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
) -> list[Finding]:
    verified, error = _verify(shape.path, shape.extras, anchors)
    top = shape.path[-1]
    if verified is not None:
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
    assert error is not None
    code = error.errors[0] if error.errors else -1
    reason = str(error.errors[2]) if len(error.errors) > 2 else str(error)
    if code == _ERR_SELF_SIGNED_LEAF:
        return [
            Finding(
                "chain-trusted",
                Level.ERROR,
                f"the certificate '{describe(top)}' is self-signed; no client trusts it",
                "get a certificate from a public CA (e.g. Let's Encrypt); LINE only accepts "
                "publicly trusted certificates",
            )
        ]
    if code == _ERR_SELF_SIGNED_IN_CHAIN:
        return [
            Finding(
                "chain-trusted",
                Level.ERROR,
                f"the chain ends at the root '{describe(top)}', which {anchors_name} does not "
                "trust",
                "use a certificate from a publicly trusted CA, or (for a private CA) give its "
                "root with --ca",
            )
        ]
    if code in _ERR_UNABLE_TO_GET_ISSUER:
        issuer = top.issuer.rfc4514_string()
        if top is shape.path[0]:
            return [
                Finding(
                    "chain-trusted",
                    Level.ERROR,
                    f"the chain does not build: '{issuer}', the issuer of the leaf, is neither "
                    f"sent nor in {anchors_name}",
                    "if that issuer is your own private root, give it with --ca",
                ),
                Finding(
                    "chain-complete",
                    Level.ERROR,
                    "only the leaf is sent: the intermediate certificate that issued it "
                    f"('{issuer}') is missing",
                    FULLCHAIN_ADVICE,
                ),
            ]
        return [
            Finding(
                "chain-trusted",
                Level.ERROR,
                f"the chain stops at '{describe(top)}', whose issuer '{issuer}' is neither sent "
                f"nor in {anchors_name}",
                "if that issuer is your private root, give it with --ca; if it is a public "
                "CA's intermediate, add it to the chain",
            ),
            Finding(
                "chain-complete",
                Level.WARNING,
                f"an intermediate may be missing above '{describe(top)}'",
                FULLCHAIN_ADVICE,
            ),
        ]
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


def _lifetime_findings(
    chain: Sequence[x509.Certificate], now: datetime.datetime, warn_days: int
) -> list[Finding]:
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
    elif left < datetime.timedelta(days=warn_days):
        findings.append(
            Finding(
                "expiry",
                Level.WARNING,
                f"the certificate expires in {left.days} days, on {not_after:%Y-%m-%d} "
                f"(warning at {warn_days} days)",
                "renew it now (certbot renew) and check that automatic renewal works",
            )
        )
    else:
        findings.append(
            Finding("expiry", Level.OK, f"valid until {not_after:%Y-%m-%d} ({left.days} days)")
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
    lifetime = (not_after - not_before).days
    if lifetime > PUBLIC_MAX_LIFETIME_DAYS:
        findings.append(
            Finding(
                "lifetime",
                Level.INFO,
                f"the certificate is valid for {lifetime} days; public CAs issue at most "
                f"{PUBLIC_MAX_LIFETIME_DAYS}, so this is a private or test certificate",
                "fine for tests; LINE needs a certificate from a public CA",
            )
        )
    else:
        findings.append(Finding("lifetime", Level.OK, f"valid for {lifetime} days in all"))
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
                    f"RSA key of {key.key_size} bits; 2048 is the minimum",
                    "reissue with an ECDSA P-256 key (or RSA 2048+)",
                )
            ]
        return [Finding("key-type", Level.OK, f"RSA {key.key_size} bits")]
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name in ("secp256r1", "secp384r1"):
            return [Finding("key-type", Level.OK, f"ECDSA {key.curve.name}")]
        return [
            Finding(
                "key-type",
                Level.WARNING,
                f"ECDSA on {key.curve.name}; many clients only take P-256 or P-384",
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
                "DSA key; TLS clients reject it",
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


def diagnose(
    certs: Sequence[x509.Certificate],
    anchors: Sequence[x509.Certificate],
    *,
    anchors_name: str = "the trust store",
    host: str | None = None,
    key: PrivateKeyTypes | None = None,
    now: datetime.datetime | None = None,
    warn_days: int = DEFAULT_WARN_DAYS,
) -> list[Finding]:
    """Every finding about ``certs`` (as sent or as listed in a file, in that order)."""
    if not certs:
        raise DoctorError("no certificate to check")
    when = now or datetime.datetime.now(datetime.UTC)
    shape = chain_shape(certs)
    leaf = shape.path[0]
    findings = _trust_findings(shape, anchors, anchors_name)
    findings += _order_findings(shape, certs)
    if key is not None:
        findings += _match_findings(leaf, key)
    findings += _lifetime_findings(shape.path, when, warn_days)
    if host:
        findings += _host_findings(leaf, host)
    findings += _key_findings(leaf)
    findings += _signature_findings(shape.path)
    return findings


def worst(findings: Sequence[Finding]) -> Level:
    """The most serious level among ``findings``."""
    order = list(Level)
    return max((finding.level for finding in findings), key=order.index, default=Level.OK)


# I/O around the pure core.


def load_certificates(path: Path) -> list[x509.Certificate]:
    """Every PEM certificate in ``path``, in file order."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DoctorError(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        with warnings.catch_warnings():
            # Some roots in system bundles have non-positive serials; they still work.
            warnings.simplefilter("ignore", CryptographyDeprecationWarning)
            certs = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise DoctorError(f"{path} holds no PEM certificate ({exc})") from exc
    return certs


def load_private_key(path: Path) -> PrivateKeyTypes:
    """The unencrypted PEM private key in ``path``."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DoctorError(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        return serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise DoctorError(f"{path} is not an unencrypted PEM private key ({exc})") from exc


def system_trust_file() -> Path:
    """The system's CA bundle (OpenSSL's default), else certifi's."""
    paths = ssl.get_default_verify_paths()
    for candidate in (paths.cafile, paths.openssl_cafile):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    import certifi  # noqa: PLC0415  (httpx's dependency; only needed without a system bundle)

    return Path(certifi.where())


def load_anchors(ca_file: Path | None) -> tuple[list[x509.Certificate], str]:
    """The trust anchors and how to name them: ``ca_file`` if given, else the system store."""
    if ca_file is not None:
        return load_certificates(ca_file), f"the CA file {ca_file}"
    return load_certificates(system_trust_file()), "the system trust store"


def fetch_chain(
    host: str, port: int, server_name: str | None = None, timeout: float = 10.0
) -> list[x509.Certificate]:
    """The certificates a live TLS server sends, in the order it sends them.

    Nothing is verified here (that is :func:`diagnose`'s job), so a broken
    chain is still fetched.
    """
    context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    context.set_verify(SSL.VERIFY_NONE)
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as exc:
        raise DoctorError(f"cannot connect to {host}:{port}: {exc.strerror or exc}") from exc
    with sock:
        # pyOpenSSL cannot use Python's socket timeouts (it would see WantRead): go back to
        # blocking mode and let the kernel time out reads and writes instead.
        sock.settimeout(None)
        limit = struct.pack("ll", int(timeout), int(timeout % 1 * 1_000_000))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, limit)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, limit)
        connection = SSL.Connection(context, sock)
        name = server_name or host
        try:
            ipaddress.ip_address(name.strip("[]"))
        except ValueError:
            connection.set_tlsext_host_name(name.encode("idna"))
        connection.set_connect_state()
        try:
            connection.do_handshake()
        except (SSL.Error, OSError) as exc:
            reason = str(exc) or type(exc).__name__
            raise DoctorError(f"TLS handshake with {host}:{port} failed: {reason}") from exc
        chain = connection.get_peer_cert_chain(as_cryptography=True)
        connection.shutdown()
    if not chain:
        raise DoctorError(f"{host}:{port} sent no certificate")
    return list(chain)
