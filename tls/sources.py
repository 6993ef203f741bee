"""Where certificates come from for the rules (:mod:`tls.rules`): PEM files, the
trust store, a live server.

``linerelay tls check``, the conformance suite and the relay's own check at
start and reload read what they judge through here.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
import struct
import warnings
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.utils import CryptographyDeprecationWarning
from OpenSSL import SSL


class SourceError(Exception):
    """Nothing to judge: an unreadable file, no certificate in it, no connection."""


def load_certificates(path: Path) -> list[x509.Certificate]:
    """Every PEM certificate in ``path``, in file order."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SourceError(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        with warnings.catch_warnings():
            # Some roots in system bundles have non-positive serials; they still work.
            warnings.simplefilter("ignore", CryptographyDeprecationWarning)
            certs = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise SourceError(f"{path} holds no PEM certificate ({exc})") from exc
    return certs


def load_private_key(path: Path) -> PrivateKeyTypes:
    """The unencrypted PEM private key in ``path``."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SourceError(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        return serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise SourceError(f"{path} is not an unencrypted PEM private key ({exc})") from exc


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

    Nothing is verified here (that is the rules' job), so a broken
    chain is still fetched.
    """
    context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    context.set_verify(SSL.VERIFY_NONE)
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as exc:
        raise SourceError(f"cannot connect to {host}:{port}: {exc.strerror or exc}") from exc
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
            raise SourceError(f"TLS handshake with {host}:{port} failed: {reason}") from exc
        chain = connection.get_peer_cert_chain(as_cryptography=True)
        connection.shutdown()
    if not chain:
        raise SourceError(f"{host}:{port} sent no certificate")
    return list(chain)
