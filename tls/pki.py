"""Development PKIs: root → intermediate → leaf, from one builder.

Two users, one set of certificates:

- the relay's **embedded** dev PKI (:class:`EmbeddedPKI`, ``STATE/pki``), made
  once per state dir and served when no certificate is configured; its leaf
  is reissued from the kept intermediate when renewal is due;
- ``linerelay tls dev-pki DIR`` (:func:`create`), a throwaway PKI for trials
  and tests under certbot's file names (:class:`DevPKI`).

The certificates follow the CA/Browser Forum's shape, so strict verifiers
accept them: a **non-critical** subjectAltName (``cryptography``'s RFC 5280
verifier, and so sslyze, refuses a critical one beside a non-empty subject),
the serverAuth EKU, key identifiers, basic constraints with path lengths.
CAs are ECDSA P-384 signing with SHA-384; the leaf is ECDSA P-256 (Mozilla's
modern profile) and lives at most 90 days.

**chain** means one thing everywhere: the leaf followed by the intermediate,
never the root; what a server sends (certbot's ``fullchain.pem``). The
intermediate alone is ``intermediate`` (certbot calls its file ``chain.pem``).

Files are written whole or not at all, and durably (fsync of each file and
of the directory): a power cut at first boot must not leave an empty
certificate the relay then refuses at every start.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tls import hostnames
from tls.rules import renewal_due

#: Mozilla's modern profile: a leaf lives at most 90 days.
MAX_LEAF_DAYS = 90
CA_DAYS = 3650
DEFAULT_NAMES = ("localhost", "127.0.0.1", "::1")
ORGANIZATION = "linerelay development"
#: Clock skew a client may have and still accept a brand-new certificate.
BACKDATE = dt.timedelta(minutes=5)

PrivateKey = ec.EllipticCurvePrivateKey


class PKIError(Exception):
    """Bad input for a PKI (no name, a name that is not one, a lifetime out of range),
    or files that cannot be written; nothing was changed."""


@dataclass(frozen=True)
class Issued:
    """A freshly made root → intermediate → leaf, keys included, before any file."""

    root: x509.Certificate
    root_key: PrivateKey
    intermediate: x509.Certificate
    intermediate_key: PrivateKey
    leaf: x509.Certificate
    leaf_key: PrivateKey

    @property
    def chain_pem(self) -> bytes:
        """What a server sends: the leaf, then the intermediate (never the root)."""
        return pem(self.leaf) + pem(self.intermediate)


def issue(
    names: Sequence[str] = DEFAULT_NAMES,
    days: int = MAX_LEAF_DAYS,
    now: dt.datetime | None = None,
) -> Issued:
    """Make a root, an intermediate under it and a leaf for ``names`` valid ``days`` days.

    Raises :class:`PKIError` for no names, a name that is neither a DNS name
    nor an IP address, or ``days`` outside 1..90.
    """
    if not 1 <= days <= MAX_LEAF_DAYS:
        raise PKIError(f"--days must be between 1 and {MAX_LEAF_DAYS} (got {days})")
    alt_names = subject_alt_names(names)  # first: bad input must cost no key generation
    now = now or dt.datetime.now(dt.UTC)
    root_key = ec.generate_private_key(ec.SECP384R1())
    root = issue_ca("linerelay development root CA", root_key, None, root_key, now, path_length=1)
    inter_key = ec.generate_private_key(ec.SECP384R1())
    inter = issue_ca(
        "linerelay development intermediate CA", inter_key, root, root_key, now, path_length=0
    )
    leaf, leaf_key = _issue_leaf(inter, inter_key, alt_names, names[0], days, now)
    return Issued(root, root_key, inter, inter_key, leaf, leaf_key)


def issue_ca(
    common_name: str,
    key: PrivateKey,
    issuer: x509.Certificate | None,
    issuer_key: PrivateKey,
    now: dt.datetime,
    path_length: int,
) -> x509.Certificate:
    """A CA certificate for ``key``: a root when ``issuer`` is None, else signed by it."""
    subject = _name(common_name)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.subject if issuer is not None else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
        .sign(issuer_key, hashes.SHA384())
    )


def issue_leaf(
    issuer: x509.Certificate,
    issuer_key: PrivateKey,
    names: Sequence[str],
    days: int = MAX_LEAF_DAYS,
    now: dt.datetime | None = None,
) -> tuple[x509.Certificate, PrivateKey]:
    """A leaf for ``names`` signed by ``issuer``, valid from ``now`` for ``days`` days."""
    return _issue_leaf(
        issuer, issuer_key, subject_alt_names(names), names[0], days, now or dt.datetime.now(dt.UTC)
    )


def _issue_leaf(
    issuer: x509.Certificate,
    issuer_key: PrivateKey,
    alt_names: list[x509.GeneralName],
    first_name: str,
    days: int,
    now: dt.datetime,
) -> tuple[x509.Certificate, PrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        # RFC 5280 caps a common name at 64 characters; clients read the SAN anyway.
        .subject_name(_name(first_name) if len(first_name) <= 64 else _name(None))
        .issuer_name(issuer.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
        .sign(issuer_key, hashes.SHA384())
    )
    return leaf, key


def subject_alt_names(names: Sequence[str]) -> list[x509.GeneralName]:
    """``names`` as subjectAltName entries (IP addresses as such); raises :class:`PKIError`."""
    if not names:
        raise PKIError("give at least one host name or IP address for the leaf")
    alt_names: list[x509.GeneralName] = []
    for name in names:
        try:
            alt_names.append(x509.IPAddress(ipaddress.ip_address(name)))
            continue
        except ValueError:
            pass
        if not hostnames.is_dns_name(name, wildcard=True):
            raise PKIError(f"cannot put {name!r} in a certificate: not a DNS name or an IP address")
        alt_names.append(x509.DNSName(name.lower()))
    return alt_names


def _name(common_name: str | None) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION)]
    if common_name is not None:
        attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return x509.Name(attributes)


def _key_usage(ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def pem(cert: x509.Certificate) -> bytes:
    """A certificate as PEM."""
    return cert.public_bytes(serialization.Encoding.PEM)


def key_pem(key: PrivateKey) -> bytes:
    """An unencrypted PKCS #8 PEM private key."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


# -- where the files live --------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """The file names of one PKI folder."""

    root: str
    intermediate: str
    leaf: str
    chain: str
    key: str


@dataclass(frozen=True)
class PKIFiles:
    """A PKI folder: where its root, intermediate, leaf, chain and leaf key are."""

    directory: Path
    layout: ClassVar[Layout]

    @property
    def root(self) -> Path:
        """The root CA certificate: what clients trust (``--ca``)."""
        return self.directory / self.layout.root

    @property
    def intermediate(self) -> Path:
        """The intermediate CA certificate alone."""
        return self.directory / self.layout.intermediate

    @property
    def leaf(self) -> Path:
        """The leaf certificate alone (serving only this is the classic mistake)."""
        return self.directory / self.layout.leaf

    @property
    def chain(self) -> Path:
        """The leaf then the intermediate: what a server serves."""
        return self.directory / self.layout.chain

    @property
    def key(self) -> Path:
        """The leaf's private key (mode 0600)."""
        return self.directory / self.layout.key


class DevPKI(PKIFiles):
    """What ``linerelay tls dev-pki DIR`` writes, under certbot's file names."""

    layout = Layout(
        root="root.pem",
        intermediate="chain.pem",
        leaf="cert.pem",
        chain="fullchain.pem",
        key="privkey.pem",
    )

    def files(self, issued: Issued) -> dict[Path, bytes]:
        """Each file of this folder and its content for ``issued``."""
        return {
            self.root: pem(issued.root),
            self.intermediate: pem(issued.intermediate),
            self.leaf: pem(issued.leaf),
            self.chain: issued.chain_pem,
            self.key: key_pem(issued.leaf_key),
        }


def create(
    directory: Path,
    names: Sequence[str] = DEFAULT_NAMES,
    days: int = MAX_LEAF_DAYS,
    *,
    force: bool = False,
) -> DevPKI:
    """Issue a PKI for ``names`` and write it into ``directory`` (``tls dev-pki``).

    Existing files are kept unless ``force``: a real key is never overwritten
    by mistake. Bad input raises :class:`PKIError` before anything is written.
    """
    pki = DevPKI(directory)
    issued = issue(names, days)
    files = pki.files(issued)
    existing = [path.name for path in files if path.exists()]
    if existing and not force:
        raise PKIError(
            f"{directory} already holds {', '.join(existing)}; use --force to replace them"
        )
    try:
        directory.mkdir(parents=True, exist_ok=True)
        write_files(files, public={pki.root, pki.intermediate, pki.leaf, pki.chain})
    except OSError as exc:
        raise PKIError(f"cannot write the PKI into {directory}: {exc.strerror or exc}") from exc
    return pki


class EmbeddedPKI(PKIFiles):
    """The relay's own dev PKI under ``STATE/pki``: made once, its leaf renewed when due.

    The CA keys stay beside the certificates, so a renewed leaf comes from the
    same intermediate and clients keep trusting the same ``root.pem``.
    """

    layout = Layout(
        root="root.pem",
        intermediate="intermediate.pem",
        leaf="leaf.pem",
        chain="fullchain.pem",
        key="leaf.key",
    )

    @property
    def intermediate_key(self) -> Path:
        """The intermediate CA's key, which issues renewed leaves."""
        return self.directory / "intermediate.key"

    def ensure(self, names: Sequence[str] = DEFAULT_NAMES, now: dt.datetime | None = None) -> bool:
        """Create the PKI if missing and renew a leaf whose renewal is due;
        True if anything was written."""
        now = now or dt.datetime.now(dt.UTC)
        self.directory.mkdir(parents=True, exist_ok=True)
        os.chmod(self.directory, 0o700)
        if not self.root.exists():
            self._create(names, now)
            return True
        if not (self.intermediate.exists() and self.intermediate_key.exists()):
            raise FileNotFoundError(
                f"incomplete dev PKI in {self.directory} (no intermediate CA); "
                "remove the folder to make a new one"
            )
        if not (self.leaf.exists() and self.key.exists() and self.chain.exists()):
            self._renew(names, now)  # a crash between writes left no leaf
            return True
        if renewal_due(x509.load_pem_x509_certificate(self.leaf.read_bytes()), now):
            self._renew(names, now)
            return True
        return False

    def _create(self, names: Sequence[str], now: dt.datetime) -> None:
        issued = issue(names, MAX_LEAF_DAYS, now)
        write_files({self.directory / "root.key": key_pem(issued.root_key)})
        write_files(
            {
                self.intermediate_key: key_pem(issued.intermediate_key),
                self.intermediate: pem(issued.intermediate),
            }
        )
        self._write_leaf(issued.leaf, issued.leaf_key, issued.intermediate)
        # Last: the root's presence is what says the PKI exists.
        write_files({self.root: pem(issued.root)})

    def _renew(self, names: Sequence[str], now: dt.datetime) -> None:
        inter = x509.load_pem_x509_certificate(self.intermediate.read_bytes())
        inter_key = serialization.load_pem_private_key(
            self.intermediate_key.read_bytes(), password=None
        )
        if not isinstance(inter_key, PrivateKey):
            raise PKIError(f"{self.intermediate_key} is not the EC key this PKI made")
        leaf, leaf_key = issue_leaf(inter, inter_key, names, MAX_LEAF_DAYS, now)
        self._write_leaf(leaf, leaf_key, inter)

    def _write_leaf(
        self, leaf: x509.Certificate, key: PrivateKey, intermediate: x509.Certificate
    ) -> None:
        # Key first, then the certificates that name it: a crash in between
        # leaves a key with the old chain, which the relay refuses loudly.
        write_files({self.key: key_pem(key)})
        write_files({self.leaf: pem(leaf), self.chain: pem(leaf) + pem(intermediate)})


def write_files(
    files: dict[Path, bytes], public: set[Path] | frozenset[Path] = frozenset()
) -> None:
    """Write every file whole or none of them, durably: each is written and fsynced
    beside its target, then all are renamed into place and the folders fsynced.

    Mode 0600, or 0644 for the paths in ``public`` (certificates anyone may read).
    """
    staged: list[tuple[Path, Path]] = []
    try:
        for path, data in files.items():
            fd, scratch = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
            staged.append((Path(scratch), path))
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fchmod(fh.fileno(), 0o644 if path in public else 0o600)
                os.fsync(fh.fileno())
    except OSError:
        for scratch_path, _ in staged:
            scratch_path.unlink(missing_ok=True)
        raise
    for scratch_path, path in staged:
        os.replace(scratch_path, path)
    for folder in {path.parent for path in files}:
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
