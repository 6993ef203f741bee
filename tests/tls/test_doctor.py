"""The certificate doctor: each classic deployment mistake is named, with what to do."""

from __future__ import annotations

import datetime
import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from tls import devpki, doctor
from tls.cli import TargetError, parse_host_port

LINERELAY = str(Path(sys.executable).parent / "linerelay")
TARGET = Path(__file__).parents[1] / "conformance" / "target.py"
HOST = "relay.example"


def cert(blob: trustme.Blob) -> x509.Certificate:
    return x509.load_pem_x509_certificate(blob.bytes())


class PKI:
    """root -> upper intermediate -> lower intermediate -> leaf."""

    def __init__(self, **leaf_options: object) -> None:
        self.root_ca = trustme.CA()
        self.upper_ca = self.root_ca.create_child_ca()
        self.lower_ca = self.upper_ca.create_child_ca()
        issued = self.lower_ca.issue_cert(HOST, **leaf_options)  # type: ignore[arg-type]
        self.key = serialization.load_pem_private_key(issued.private_key_pem.bytes(), None)
        self.leaf = cert(issued.cert_chain_pems[0])
        self.lower = cert(self.lower_ca.cert_pem)
        self.upper = cert(self.upper_ca.cert_pem)
        self.root = cert(self.root_ca.cert_pem)

    @property
    def full(self) -> list[x509.Certificate]:
        return [self.leaf, self.lower, self.upper]


def by_code(findings: list[doctor.Finding], code: str) -> list[doctor.Finding]:
    found = [finding for finding in findings if finding.code == code]
    assert found, f"no {code} finding in {findings}"
    return found


def level(findings: list[doctor.Finding], code: str) -> doctor.Level:
    return doctor.worst(by_code(findings, code))


def test_a_complete_chain_in_order_is_all_ok():
    pki = PKI()
    findings = doctor.diagnose(pki.full, [pki.root], host=HOST, key=pki.key)
    # trustme's default leaf lives 1,000 years: only that is worth a note.
    assert [f.code for f in findings if f.level is not doctor.Level.OK] == ["lifetime"]
    assert {f.code for f in findings} >= {
        "chain-trusted",
        "chain-complete",
        "chain-order",
        "root-sent",
        "key-match",
        "expiry",
        "hostname",
        "key-type",
        "signature",
    }


def test_trustmes_critical_san_is_not_reported_as_a_broken_chain():
    pki = PKI()
    san = pki.leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.critical  # what cryptography's strict verifier rejects (DESIGN.md)
    findings = doctor.diagnose(pki.full, [pki.root], host=HOST)
    assert level(findings, "chain-trusted") is doctor.Level.OK


def test_a_missing_intermediate_says_use_fullchain_pem():
    pki = PKI()
    findings = doctor.diagnose([pki.leaf], [pki.root], host=HOST)
    complete = by_code(findings, "chain-complete")[0]
    assert complete.level is doctor.Level.ERROR
    assert "fullchain.pem, not cert.pem" in complete.advice
    assert level(findings, "chain-trusted") is doctor.Level.ERROR


def test_a_missing_upper_intermediate_is_caught_too():
    pki = PKI()
    findings = doctor.diagnose([pki.leaf, pki.lower], [pki.root], host=HOST)
    assert level(findings, "chain-trusted") is doctor.Level.ERROR
    assert level(findings, "chain-complete") is doctor.Level.WARNING


def test_intermediates_in_the_wrong_order_are_an_error():
    pki = PKI()
    findings = doctor.diagnose([pki.leaf, pki.upper, pki.lower], [pki.root], host=HOST)
    order = by_code(findings, "chain-order")[0]
    assert order.level is doctor.Level.ERROR
    assert "wrong order" in order.message
    # OpenSSL still builds it, so trust is fine: the fault is only the order.
    assert level(findings, "chain-trusted") is doctor.Level.OK


def test_the_leaf_not_first_is_an_error():
    pki = PKI()
    findings = doctor.diagnose([pki.lower, pki.leaf, pki.upper], [pki.root])
    order = by_code(findings, "chain-order")[0]
    assert order.level is doctor.Level.ERROR
    assert "put your certificate first" in order.advice


def test_a_root_sent_needlessly_is_a_warning_with_advice():
    pki = PKI()
    findings = doctor.diagnose([*pki.full, pki.root], [pki.root], host=HOST)
    root_sent = by_code(findings, "root-sent")[0]
    assert root_sent.level is doctor.Level.WARNING
    assert "drop the last certificate" in root_sent.advice
    assert level(findings, "chain-order") is doctor.Level.OK


def test_an_unrelated_certificate_in_the_chain_is_an_error():
    pki, other = PKI(), PKI()
    findings = doctor.diagnose([*pki.full, other.upper], [pki.root])
    assert level(findings, "chain-order") is doctor.Level.ERROR


def test_a_key_that_does_not_match_is_an_error():
    pki, other = PKI(), PKI()
    findings = doctor.diagnose(pki.full, [pki.root], key=other.key)
    match = by_code(findings, "key-match")[0]
    assert match.level is doctor.Level.ERROR
    assert "privkey.pem" in match.advice


def test_expiry_within_30_days_warns_and_past_expiry_is_an_error():
    now = datetime.datetime.now(datetime.UTC)
    pki = PKI(
        not_before=now - datetime.timedelta(days=60), not_after=now + datetime.timedelta(days=12)
    )
    soon = by_code(doctor.diagnose(pki.full, [pki.root], now=now), "expiry")[0]
    assert soon.level is doctor.Level.WARNING
    assert "expires in 11 days" in soon.message or "expires in 12 days" in soon.message
    assert "renew" in soon.advice
    later = now + datetime.timedelta(days=13)
    assert level(doctor.diagnose(pki.full, [pki.root], now=later), "expiry") is doctor.Level.ERROR


def test_a_san_not_covering_the_host_is_an_error():
    pki = PKI()
    findings = doctor.diagnose(pki.full, [pki.root], host="webhook.example")
    hostname = by_code(findings, "hostname")[0]
    assert hostname.level is doctor.Level.ERROR
    assert HOST in hostname.message


def test_wildcards_cover_exactly_one_label():
    root = trustme.CA()
    leaf = cert(root.issue_cert("*.example.com").cert_chain_pems[0])
    assert doctor.covers_host(leaf, "relay.example.com")
    assert not doctor.covers_host(leaf, "a.relay.example.com")
    assert not doctor.covers_host(leaf, "example.com")


def test_an_untrusted_root_says_how_to_trust_a_private_ca():
    pki = PKI()
    findings = doctor.diagnose(pki.full, [PKI().root], anchors_name="the system trust store")
    trusted = by_code(findings, "chain-trusted")[0]
    assert trusted.level is doctor.Level.ERROR
    assert "--ca" in trusted.advice


def self_signed_rsa(bits: int) -> x509.Certificate:
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, HOST)])
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(HOST)]), critical=False)
        .sign(key, hashes.SHA256())
    )


def test_a_1024_bit_rsa_key_is_an_error_and_2048_is_fine():
    weak = self_signed_rsa(1024)
    finding = by_code(doctor.diagnose([weak], [weak]), "key-type")[0]
    assert finding.level is doctor.Level.ERROR
    assert "2048" in finding.message
    strong = self_signed_rsa(2048)
    assert level(doctor.diagnose([strong], [strong]), "key-type") is doctor.Level.OK


def test_a_self_signed_leaf_is_untrusted_with_advice():
    leaf = self_signed_rsa(2048)
    trusted = by_code(doctor.diagnose([leaf], [PKI().root]), "chain-trusted")[0]
    assert trusted.level is doctor.Level.ERROR
    assert "self-signed" in trusted.message


# The command, on files and on a live server.


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [LINERELAY, "tls", "check", *args], capture_output=True, text=True, timeout=60, check=False
    )


@pytest.fixture(scope="module")
def pki_files(tmp_path_factory: pytest.TempPathFactory) -> devpki.DevPKI:
    return devpki.create(tmp_path_factory.mktemp("pki"), ["localhost", "127.0.0.1"])


@pytest.mark.integration
def test_check_on_files_exits_0_for_fullchain_and_1_for_cert_pem(pki_files: devpki.DevPKI):
    good = run(
        "--cert",
        str(pki_files.fullchain),
        "--key",
        str(pki_files.key),
        "--ca",
        str(pki_files.root),
        "--host",
        "localhost",
    )
    assert good.returncode == 0, good.stdout + good.stderr
    bad = run("--cert", str(pki_files.cert), "--ca", str(pki_files.root), "--json")
    assert bad.returncode == 1
    report = json.loads(bad.stdout)
    assert report["worst"] == "error"
    missing = [f for f in report["findings"] if f["code"] == "chain-complete"]
    assert "fullchain.pem, not cert.pem" in missing[0]["advice"]


@pytest.mark.integration
def test_check_on_an_unreadable_file_exits_2(tmp_path: Path):
    done = run("--cert", str(tmp_path / "nope.pem"))
    assert done.returncode == 2
    assert "nope.pem" in done.stderr


def serve(certfile: Path, keyfile: Path) -> Iterator[int]:
    """A real Hypercorn TLS server (tests/conformance/target.py) serving ``certfile``."""
    proc = subprocess.Popen(
        [
            sys.executable,
            str(TARGET),
            "--certfile",
            str(certfile),
            "--keyfile",
            str(keyfile),
            "--secret",
            "s",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    try:
        assert line.startswith("PORT "), line
        yield int(line.split()[1])
    finally:
        proc.terminate()
        proc.wait(timeout=20)


@pytest.fixture(scope="module")
def leaf_only_server(pki_files: devpki.DevPKI) -> Iterator[int]:
    """Sends its leaf without the intermediate."""
    yield from serve(pki_files.cert, pki_files.key)


@pytest.fixture(scope="module")
def fullchain_server(pki_files: devpki.DevPKI) -> Iterator[int]:
    """Sends leaf and intermediate."""
    yield from serve(pki_files.fullchain, pki_files.key)


@pytest.mark.integration
def test_check_on_a_well_deployed_live_server_exits_0(
    fullchain_server: int, pki_files: devpki.DevPKI
):
    done = run("--connect", f"localhost:{fullchain_server}", "--ca", str(pki_files.root))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "ERROR" not in done.stdout
    assert "localhost is covered" in done.stdout


@pytest.mark.integration
def test_check_on_a_live_server_finds_the_missing_intermediate(
    leaf_only_server: int, pki_files: devpki.DevPKI
):
    done = run("--connect", f"127.0.0.1:{leaf_only_server}", "--ca", str(pki_files.root), "--json")
    assert done.returncode == 1, done.stderr
    report = json.loads(done.stdout)
    codes = {f["code"]: f["level"] for f in report["findings"]}
    assert codes["chain-complete"] == "error"
    assert codes["hostname"] == "ok"  # the host of --connect, 127.0.0.1, is in the SAN


@pytest.mark.integration
def test_check_on_a_closed_port_exits_2():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    done = run("--connect", f"127.0.0.1:{port}")
    assert done.returncode == 2
    assert "cannot connect" in done.stderr


def test_connect_targets_accept_host_port_ipv6_and_default_to_443():
    assert parse_host_port("relay.example:8443") == ("relay.example", 8443)
    assert parse_host_port("relay.example") == ("relay.example", 443)
    assert parse_host_port("[::1]:9443") == ("::1", 9443)
    for bad in ("relay.example:http", ":443", "relay.example:70000"):
        with pytest.raises(TargetError):
            parse_host_port(bad)


def test_without_ca_the_system_trust_store_is_used():
    anchors, name = doctor.load_anchors(None)
    assert name == "the system trust store"
    assert len(anchors) > 50
    # Let's Encrypt's root, which most relays' certificates chain to.
    assert any("ISRG Root X1" in doctor.describe(anchor) for anchor in anchors)
