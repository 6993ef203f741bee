"""The one TLS policy every listener uses.

``modern`` (the default) is Mozilla's modern profile: TLS 1.3 only.
``intermediate`` also accepts TLS 1.2 for clients that need it, with ECDHE key
exchange and AEAD ciphers only (no CBC, no 3DES, no RSA key exchange). Both
serve the full chain from the certificate file, offer ALPN ``h2`` and
``http/1.1``, and disable compression and renegotiation. Key-exchange groups
and TLS 1.3 suites come from ``tls/openssl.cnf`` (see :func:`exec_with_openssl_conf`).
"""

from __future__ import annotations

import os
import ssl
import sys
from collections.abc import Sequence
from pathlib import Path

#: Groups and suites pinned by openssl.cnf; listed here for checks and docs.
GROUPS = ("X25519", "prime256v1", "secp384r1")
TLS13_SUITES = ("TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256")

#: Mozilla intermediate's TLS 1.2 list without the DHE suites: ECDHE + AEAD only.
TLS12_CIPHERS = ":".join(
    (
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
    )
)

ALPN_PROTOCOLS = ("h2", "http/1.1")
POLICIES = ("modern", "intermediate")

OPENSSL_CONF = Path(__file__).with_name("openssl.cnf")


class CertificateError(Exception):
    """A certificate chain or key that cannot be served; the message says why."""


def server_context(policy: str, cert_file: Path, key_file: Path) -> ssl.SSLContext:
    """A server context for ``policy`` serving the chain in ``cert_file``."""
    if policy not in POLICIES:
        raise ValueError(f"unknown TLS policy {policy!r}; expected one of {POLICIES}")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = (
        ssl.TLSVersion.TLSv1_3 if policy == "modern" else ssl.TLSVersion.TLSv1_2
    )
    context.maximum_version = ssl.TLSVersion.TLSv1_3
    context.set_ciphers(TLS12_CIPHERS)
    # Add to Python's defaults (no SSLv2/3, single DH/ECDH use) rather than
    # assigning, which is how Hypercorn's stock context loses them.
    context.options |= (
        ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_NO_RENEGOTIATION
    )
    context.set_alpn_protocols(list(ALPN_PROTOCOLS))
    load_chain(context, cert_file, key_file)
    return context


def load_chain(context: ssl.SSLContext, cert_file: Path, key_file: Path) -> None:
    """Load a chain and key into ``context``, or raise :class:`CertificateError` and leave it.

    The pair is first tried on a scratch context, so a bad file (unreadable,
    not PEM, key not matching the leaf) never reaches a context that serves.
    """
    for path in (cert_file, key_file):
        # ssl names neither file in its errors, so look first.
        if not os.access(path, os.R_OK):
            why = "permission denied" if Path(path).exists() else "no such file"
            raise CertificateError(f"{path}: {why}")
    scratch = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        scratch.load_cert_chain(cert_file, key_file)
    except ssl.SSLError as exc:
        raise CertificateError(
            f"{cert_file} / {key_file}: cannot be served ({exc.reason or exc}); "
            "check the chain is PEM, leaf first, and the key is the leaf's"
        ) from exc
    except OSError as exc:
        raise CertificateError(f"{cert_file} / {key_file}: cannot be read ({exc})") from exc
    context.load_cert_chain(cert_file, key_file)


def exec_with_openssl_conf(argv: Sequence[str]) -> None:
    """Re-run this process with ``OPENSSL_CONF`` naming the policy file, unless it does.

    OpenSSL reads its configuration once, when it initialises, which happens
    on ``import ssl``: setting the variable later has no effect, so the
    process starts again with it set. Returns only when it is already set.
    """
    if os.environ.get("OPENSSL_CONF") == str(OPENSSL_CONF):
        return
    os.environ["OPENSSL_CONF"] = str(OPENSSL_CONF)
    os.execv(sys.executable, [sys.executable, "-m", "appliance", *argv])  # noqa: S606
