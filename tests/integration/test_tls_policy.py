"""The relay's TLS as ``openssl s_client`` sees it (PROTOCOL.md §3, tls/policy.py)."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from cryptography import x509

from tests.integration.helpers import Harness, running_relay
from tls.pki import EmbeddedPKI

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command"),
]

_NEGOTIATED = re.compile(r"^New, (\S+), Cipher is (\S+)$", re.MULTILINE)
_ALPN = re.compile(r"^ALPN protocol: (\S+)$", re.MULTILINE)
_PEM = re.compile(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL)


@dataclass(frozen=True)
class Handshake:
    """What one ``openssl s_client`` run negotiated (``protocol`` is None if it failed)."""

    protocol: str | None
    cipher: str | None
    alpn: str | None
    output: str

    @property
    def ok(self) -> bool:
        return self.protocol is not None


def s_client(harness: Harness, *args: str) -> Handshake:
    """Run ``openssl s_client`` against the relay's public listener."""
    result = subprocess.run(
        [
            "openssl",
            "s_client",
            "-connect",
            f"127.0.0.1:{harness.relay.port}",
            "-servername",
            "localhost",
            *args,
        ],
        stdin=subprocess.DEVNULL,
        check=False,
        capture_output=True,
        text=True,
        errors="replace",  # an h2 server writes binary frames after the handshake
        timeout=60,
    )
    output = result.stdout + result.stderr
    negotiated = _NEGOTIATED.search(output)
    alpn = _ALPN.search(output)
    if result.returncode != 0 or negotiated is None or negotiated.group(2) == "(NONE)":
        return Handshake(None, None, None, output)
    return Handshake(negotiated.group(1), negotiated.group(2), alpn and alpn.group(1), output)


@pytest.fixture(scope="module")
def modern(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    """A relay on its embedded default: the modern policy."""
    with running_relay(tmp_path_factory, "modern") as h:
        yield h


@pytest.fixture(scope="module")
def intermediate(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    with running_relay(
        tmp_path_factory, "intermediate", config='tls_policy = "intermediate"\n'
    ) as h:
        yield h


# -- modern (the default) ------------------------------------------------------


def test_modern_policy_refuses_tls_1_2_with_a_protocol_version_alert(modern: Harness) -> None:
    handshake = s_client(modern, "-tls1_2")
    assert not handshake.ok, handshake.output
    # Not a bare EOF: the client (or a proxy in front) is told why.
    assert "alert protocol version" in handshake.output, handshake.output


@pytest.mark.parametrize("alpn", ["h2", "http/1.1"])
def test_modern_policy_accepts_tls_1_3_and_negotiates_alpn(modern: Harness, alpn: str) -> None:
    handshake = s_client(modern, "-tls1_3", "-alpn", alpn)
    assert handshake.protocol == "TLSv1.3", handshake.output
    assert handshake.alpn == alpn


def test_full_chain_is_served_leaf_then_intermediate_and_verifies_against_the_root(
    modern: Harness,
) -> None:
    handshake = s_client(
        modern,
        "-showcerts",
        "-CAfile",
        str(modern.relay.ca_file),
        "-verify_return_error",
        "-verify_ip",
        "127.0.0.1",
    )
    assert handshake.ok, handshake.output
    assert "Verify return code: 0 (ok)" in handshake.output
    served = [
        x509.load_pem_x509_certificate(pem.encode()) for pem in _PEM.findall(handshake.output)
    ]
    dev = EmbeddedPKI(modern.relay.state.pki)
    expected = [
        x509.load_pem_x509_certificate(pem.read_bytes()) for pem in (dev.leaf, dev.intermediate)
    ]
    assert served == expected
    root = x509.load_pem_x509_certificate(modern.relay.ca_file.read_bytes())
    assert served[1].issuer == root.subject
    assert root not in served


@pytest.mark.parametrize("group", ["X25519", "P-256", "P-384"])
def test_x25519_p256_and_p384_key_exchange_are_accepted(modern: Harness, group: str) -> None:
    handshake = s_client(modern, "-tls1_3", "-groups", group)
    assert handshake.ok, handshake.output


@pytest.mark.parametrize("group", ["secp521r1", "ffdhe2048", "ffdhe3072", "X448"])
def test_other_key_exchange_groups_are_refused(modern: Harness, group: str) -> None:
    handshake = s_client(modern, "-tls1_3", "-groups", group)
    assert not handshake.ok, handshake.output


# -- intermediate ---------------------------------------------------------------


@pytest.mark.parametrize(
    "cipher",
    [
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
    ],
)
def test_intermediate_policy_accepts_tls_1_2_with_ecdhe_aead(
    intermediate: Harness, cipher: str
) -> None:
    handshake = s_client(intermediate, "-tls1_2", "-cipher", cipher)
    assert (handshake.protocol, handshake.cipher) == ("TLSv1.2", cipher), handshake.output
    assert "Compression: NONE" in handshake.output
    assert re.search(
        r"^Server Temp Key: (X25519|ECDH, (prime256v1|secp384r1))", handshake.output, re.M
    )


@pytest.mark.parametrize(
    "cipher",
    [
        "ECDHE-ECDSA-AES128-SHA",
        "ECDHE-ECDSA-AES256-SHA384",
        "ECDHE-RSA-AES128-SHA",
        "AES128-GCM-SHA256",  # RSA key exchange: no forward secrecy
        "AES128-SHA",
    ],
)
def test_intermediate_policy_refuses_cbc_and_static_rsa_ciphers(
    intermediate: Harness, cipher: str
) -> None:
    handshake = s_client(intermediate, "-tls1_2", "-cipher", cipher)
    assert not handshake.ok, handshake.output


def test_intermediate_policy_still_prefers_tls_1_3(intermediate: Harness) -> None:
    handshake = s_client(intermediate, "-alpn", "h2")
    assert handshake.protocol == "TLSv1.3", handshake.output
    assert handshake.alpn == "h2"
