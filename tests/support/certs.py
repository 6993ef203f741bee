"""Certificates the relay's own builder (tls/pki.py) never makes, for the rules' tests.

:func:`tls.pki.issue` makes well-formed chains only; the tests also need the
mistakes and oddities operators bring: deeper chains, leaves that expire
soon or have expired, other key types, a critical subjectAltName, the AIA
extension public CAs add.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import AuthorityInformationAccessOID, NameOID

from tls import pki

#: Where a public CA would publish the intermediate (Let's Encrypt's shape).
AIA_URL = "http://r11.i.lencr.example/"


def now() -> dt.datetime:
    """The current time, UTC."""
    return dt.datetime.now(dt.UTC)


def leaf(
    issuer: x509.Certificate,
    issuer_key: pki.PrivateKey,
    *names: str,
    key: CertificateIssuerPrivateKeyTypes | None = None,
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
    aia: bool = False,
    san_critical: bool = False,
) -> tuple[x509.Certificate, CertificateIssuerPrivateKeyTypes]:
    """A leaf for ``names`` signed by ``issuer``, with the oddity asked for."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    start = not_before or now() - dt.timedelta(days=1)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(issuer.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(not_after or start + dt.timedelta(days=90))
        .add_extension(x509.SubjectAlternativeName(pki.subject_alt_names(names)), san_critical)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
    )
    if aia:
        builder = builder.add_extension(
            x509.AuthorityInformationAccess(
                [
                    x509.AccessDescription(
                        AuthorityInformationAccessOID.CA_ISSUERS,
                        x509.UniformResourceIdentifier(AIA_URL),
                    )
                ]
            ),
            critical=False,
        )
    return builder.sign(issuer_key, hashes.SHA256()), key


def rsa_key(bits: int) -> rsa.RSAPrivateKey:
    """An RSA key of ``bits`` bits."""
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


@dataclass(frozen=True)
class Deep:
    """root -> upper intermediate -> lower intermediate -> leaf, from the relay's builder."""

    root: x509.Certificate
    upper: x509.Certificate
    lower: x509.Certificate
    lower_key: pki.PrivateKey
    leaf: x509.Certificate
    key: pki.PrivateKey

    @property
    def full(self) -> list[x509.Certificate]:
        """What a server should send: leaf, lower, upper."""
        return [self.leaf, self.lower, self.upper]


def deep(host: str) -> Deep:
    """A chain with two intermediates, for the order and completeness rules."""
    start = now()
    root_key = ec.generate_private_key(ec.SECP384R1())
    root = pki.issue_ca("test root", root_key, None, root_key, start, path_length=2)
    upper_key = ec.generate_private_key(ec.SECP384R1())
    upper = pki.issue_ca("test upper CA", upper_key, root, root_key, start, path_length=1)
    lower_key = ec.generate_private_key(ec.SECP384R1())
    lower = pki.issue_ca("test lower CA", lower_key, upper, upper_key, start, path_length=0)
    made, key = pki.issue_leaf(lower, lower_key, [host])
    return Deep(root, upper, lower, lower_key, made, key)


def write_pair(
    directory: Path, chain: list[x509.Certificate], key: CertificateIssuerPrivateKeyTypes
) -> tuple[Path, Path]:
    """Write ``chain`` and ``key`` as PEM files in ``directory``; returns their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    chain_path, key_path = directory / "chain.pem", directory / "key.pem"
    chain_path.write_bytes(b"".join(pki.pem(cert) for cert in chain))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return chain_path, key_path
