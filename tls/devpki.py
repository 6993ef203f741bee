"""A throwaway PKI for tests and trials: root -> intermediate -> leaf, made with trustme.

The files use certbot's names so the relay (and any web server) can be pointed
at them exactly as at a real deployment:

- ``root.pem``: the root CA; give it to clients (``--ca root.pem``).
- ``chain.pem``: the intermediate CA alone.
- ``cert.pem``: the leaf alone (serving only this is the classic
  "intermediate missing" mistake).
- ``fullchain.pem``: leaf then intermediate; what a server should send.
- ``privkey.pem``: the leaf's private key (mode 0600).

The leaf lives at most 90 days (Mozilla's modern profile). trustme marks the
leaf's subjectAltName critical; OpenSSL accepts that, ``cryptography``'s
strict verifier does not (see docs/conformance.md).
"""

from __future__ import annotations

import datetime
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import trustme

MAX_LEAF_DAYS = 90
DEFAULT_HOSTS = ("localhost", "127.0.0.1", "::1")
FILE_NAMES = ("root.pem", "chain.pem", "cert.pem", "fullchain.pem", "privkey.pem")


class DevPKIError(Exception):
    """The PKI could not be written; nothing was changed."""


@dataclass(frozen=True)
class DevPKI:
    """Paths of a written dev PKI."""

    directory: Path

    @property
    def root(self) -> Path:
        """The root CA certificate (the trust anchor for clients)."""
        return self.directory / "root.pem"

    @property
    def chain(self) -> Path:
        """The intermediate CA certificate."""
        return self.directory / "chain.pem"

    @property
    def cert(self) -> Path:
        """The leaf certificate alone."""
        return self.directory / "cert.pem"

    @property
    def fullchain(self) -> Path:
        """Leaf followed by the intermediate."""
        return self.directory / "fullchain.pem"

    @property
    def key(self) -> Path:
        """The leaf's private key."""
        return self.directory / "privkey.pem"


@dataclass(frozen=True)
class IssuedPEMs:
    """The PEM bytes of a freshly made PKI, before anything touches the disk."""

    root: bytes
    intermediate: bytes
    leaf: bytes
    key: bytes

    def files(self) -> dict[str, bytes]:
        """File name -> content, in :data:`FILE_NAMES` order."""
        return {
            "root.pem": self.root,
            "chain.pem": self.intermediate,
            "cert.pem": self.leaf,
            "fullchain.pem": self.leaf + self.intermediate,
            "privkey.pem": self.key,
        }


def issue(
    hosts: Sequence[str] = DEFAULT_HOSTS,
    days: int = MAX_LEAF_DAYS,
    now: datetime.datetime | None = None,
) -> IssuedPEMs:
    """Make root -> intermediate -> leaf for ``hosts``; the leaf is valid ``days`` days.

    Raises :class:`DevPKIError` for no hosts, or ``days`` outside 1..90.
    """
    if not hosts:
        raise DevPKIError("give at least one host name or IP address for the leaf")
    if not 1 <= days <= MAX_LEAF_DAYS:
        raise DevPKIError(f"--days must be between 1 and {MAX_LEAF_DAYS} (got {days})")
    start = now or datetime.datetime.now(datetime.UTC)
    # A minute of slack so a client whose clock is slightly behind still accepts it.
    not_before = start - datetime.timedelta(minutes=1)
    root = trustme.CA(organization_name="linerelay dev PKI")
    intermediate = root.create_child_ca()
    try:
        leaf = intermediate.issue_cert(
            *hosts,
            common_name=hosts[0],
            organization_name="linerelay dev PKI",
            not_before=not_before,
            not_after=start + datetime.timedelta(days=days),
        )
    except ValueError as exc:
        raise DevPKIError(f"cannot put {list(hosts)} in a certificate: {exc}") from exc
    return IssuedPEMs(
        root=root.cert_pem.bytes(),
        intermediate=intermediate.cert_pem.bytes(),
        leaf=leaf.cert_chain_pems[0].bytes(),
        key=leaf.private_key_pem.bytes(),
    )


def write(directory: Path, pems: IssuedPEMs, *, force: bool = False) -> DevPKI:
    """Write ``pems`` into ``directory`` (created if missing) and return the paths.

    Existing files are kept unless ``force``: a real key is never overwritten
    by mistake. Each file is written beside its target and renamed into
    place, so a failure leaves no half-written file.
    """
    directory.mkdir(parents=True, exist_ok=True)
    existing = [name for name in FILE_NAMES if (directory / name).exists()]
    if existing and not force:
        raise DevPKIError(
            f"{directory} already holds {', '.join(existing)}; use --force to replace them"
        )
    staged: list[tuple[Path, Path]] = []
    try:
        for name, content in pems.files().items():
            fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name}.")
            staged.append((Path(tmp), directory / name))
            with os.fdopen(fd, "wb") as handle:
                handle.write(content)
            os.chmod(tmp, 0o600 if name == "privkey.pem" else 0o644)
        for tmp_path, final in staged:
            tmp_path.replace(final)
    except OSError as exc:
        for tmp_path, _ in staged:
            tmp_path.unlink(missing_ok=True)
        raise DevPKIError(f"cannot write the PKI into {directory}: {exc}") from exc
    return DevPKI(directory)


def create(
    directory: Path,
    hosts: Sequence[str] = DEFAULT_HOSTS,
    days: int = MAX_LEAF_DAYS,
    *,
    force: bool = False,
) -> DevPKI:
    """Issue a dev PKI for ``hosts`` and write it into ``directory``."""
    return write(directory, issue(hosts, days), force=force)
