"""The embedded development PKI: root → intermediate → leaf, made once per state dir.

``linerelay serve`` with no certificate configured serves a chain from here, so
a fresh machine speaks real TLS with a full chain at once. Clients trust
``STATE/pki/root.pem``. Certificates follow the CA/Browser Forum's shape
(non-critical subjectAltName, serverAuth EKU, key identifiers), so strict RFC
5280 verifiers such as ``cryptography``'s accept them. The leaf lives 90 days
(Mozilla's modern profile) and is reissued from the intermediate when fewer
than 30 days remain.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

LEAF_DAYS = 90
RENEW_BEFORE_DAYS = 30
CA_DAYS = 3650
DEFAULT_NAMES = ("localhost", "127.0.0.1", "::1")

_PrivateKey = ec.EllipticCurvePrivateKey


@dataclass(frozen=True)
class EmbeddedPKI:
    """The relay's own dev PKI under ``STATE/pki``: where its files live, and
    making them. (``tls dev-pki``, for trying other setups, is tls/devpki.py.)"""

    directory: Path

    @property
    def root(self) -> Path:
        """The root CA certificate clients should trust."""
        return self.directory / "root.pem"

    @property
    def chain(self) -> Path:
        """Leaf then intermediate: what the listener serves."""
        return self.directory / "fullchain.pem"

    @property
    def key(self) -> Path:
        """The leaf's private key."""
        return self.directory / "leaf.key"

    @property
    def leaf(self) -> Path:
        """The leaf certificate alone."""
        return self.directory / "leaf.pem"

    def ensure(
        self, names: tuple[str, ...] = DEFAULT_NAMES, now: dt.datetime | None = None
    ) -> bool:
        """Create the PKI if missing and renew a leaf near expiry; True if anything was written."""
        now = now or dt.datetime.now(dt.UTC)
        self.directory.mkdir(parents=True, exist_ok=True)
        os.chmod(self.directory, 0o700)
        if not self.root.exists():
            self._create(names, now)
            return True
        issuer = (self.directory / "intermediate.pem", self.directory / "intermediate.key")
        if not all(path.exists() for path in issuer):
            raise FileNotFoundError(
                f"incomplete dev PKI in {self.directory} (no intermediate CA); "
                "remove the folder to make a new one"
            )
        if not (self.leaf.exists() and self.key.exists() and self.chain.exists()):
            self._issue_leaf(names, now)  # a crash between writes left no leaf
            return True
        leaf = x509.load_pem_x509_certificate(self.leaf.read_bytes())
        if leaf.not_valid_after_utc - now < dt.timedelta(days=RENEW_BEFORE_DAYS):
            self._issue_leaf(names, now)
            return True
        return False

    def _create(self, names: tuple[str, ...], now: dt.datetime) -> None:
        root_key = ec.generate_private_key(ec.SECP384R1())
        root_name = _name("linerelay development root CA")
        root = _ca_builder(root_name, root_name, root_key, root_key, now, path_length=1).sign(
            root_key, hashes.SHA384()
        )
        inter_key = ec.generate_private_key(ec.SECP384R1())
        inter = _ca_builder(
            _name("linerelay development intermediate CA"),
            root_name,
            inter_key,
            root_key,
            now,
            path_length=0,
            issuer_cert=root,
        ).sign(root_key, hashes.SHA384())
        _write_key(self.directory / "root.key", root_key)
        _write_key(self.directory / "intermediate.key", inter_key)
        _write(self.directory / "intermediate.pem", _pem(inter))
        self._issue_leaf(names, now)
        # Last: the root's presence is what says the PKI exists.
        _write(self.root, _pem(root))

    def _issue_leaf(self, names: tuple[str, ...], now: dt.datetime) -> None:
        inter = x509.load_pem_x509_certificate((self.directory / "intermediate.pem").read_bytes())
        inter_key = serialization.load_pem_private_key(
            (self.directory / "intermediate.key").read_bytes(), password=None
        )
        assert isinstance(inter_key, _PrivateKey)
        leaf_key = ec.generate_private_key(ec.SECP256R1())
        alt_names: list[x509.GeneralName] = []
        for name in names:
            try:
                alt_names.append(x509.IPAddress(ipaddress.ip_address(name)))
            except ValueError:
                alt_names.append(x509.DNSName(name))
        leaf = (
            x509.CertificateBuilder()
            .subject_name(_name(names[0]))
            .issuer_name(inter.subject)
            .public_key(leaf_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=LEAF_DAYS))
            .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(leaf_key.public_key()), critical=False
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(inter_key.public_key()),
                critical=False,
            )
            .sign(inter_key, hashes.SHA384())
        )
        # Key first, then the certificates that name it: a crash in between
        # leaves a key with the old chain, which load_chain refuses loudly.
        _write_key(self.key, leaf_key)
        _write(self.leaf, _pem(leaf))
        _write(self.chain, _pem(leaf) + _pem(inter))


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "linerelay development"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _ca_builder(
    subject: x509.Name,
    issuer: x509.Name,
    key: _PrivateKey,
    issuer_key: _PrivateKey,
    now: dt.datetime,
    path_length: int,
    issuer_cert: x509.Certificate | None = None,
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
    )


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _write_key(path: Path, key: _PrivateKey) -> None:
    data = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write(path, data)


def _write(path: Path, data: bytes) -> None:
    """Write ``path`` whole or not at all, and durably (0600): a power cut at first
    boot must not leave an empty certificate the relay then refuses at every start."""
    scratch = path.with_name(path.name + ".new")
    fd = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(scratch, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
