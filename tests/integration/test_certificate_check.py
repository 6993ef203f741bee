"""A certificate LINE would refuse is caught by the relay at start and on reload (issue 13
item 5), by the certificate rules `linerelay tls check` applies (tls/rules.py)."""

from __future__ import annotations

import datetime as dt
import signal
import socket
import ssl
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import trustme
from cryptography import x509

from tests.integration.helpers import TIMEOUT, Harness, running_relay, wait_for
from tests.support import certs
from tests.support.relay import LINERELAY, RelayProcess, free_port
from tls import pki

pytestmark = pytest.mark.integration

EXPIRY_METRIC = "linerelay_tls_certificate_expiry_timestamp_seconds"


@dataclass(frozen=True)
class Pair:
    """A chain and key on disk, and the leaf in them."""

    chain: Path
    key: Path
    leaf: x509.Certificate
    root: Path


def pair(directory: Path, *, lone_aia: bool = False, **leaf_options: object) -> Pair:
    """A chain from the relay's builder's CA for localhost and 127.0.0.1: the leaf with
    ``leaf_options`` (tests/support/certs.py), sent alone if ``lone_aia`` (with the AIA
    address a public CA's leaf carries), else with its intermediate."""
    issued = pki.issue()
    leaf, key = certs.leaf(
        issued.intermediate,
        issued.intermediate_key,
        "localhost",
        "127.0.0.1",
        aia=lone_aia,
        **leaf_options,  # type: ignore[arg-type]
    )
    sent = [leaf] if lone_aia else [leaf, issued.intermediate]
    chain, key_file = certs.write_pair(directory, sent, key)
    root = directory / "root.pem"
    root.write_bytes(pki.pem(issued.root))
    return Pair(chain, key_file, leaf, root)


def serve(
    tmp_path: Path, chain: Path, key: Path, extra: str = ""
) -> subprocess.CompletedProcess[str] | None:
    """Run `linerelay serve` on ``chain``/``key``; the finished process if it exited
    within a few seconds (a refusal), None if it started serving (then stopped)."""
    config = tmp_path / "relay.toml"
    config.write_text(f'tls_cert_file = "{chain}"\ntls_key_file = "{key}"\n{extra}')
    args = [LINERELAY, "serve", "--config", str(config), "--state-dir", str(tmp_path / "state")]
    args += ["--listen", f"127.0.0.1:{free_port()}", "--admin-listen", f"127.0.0.1:{free_port()}"]
    with subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        try:
            out, err = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGTERM)
            proc.communicate(timeout=TIMEOUT)
            return None
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


def refused(tmp_path: Path, chain: Path, key: Path, extra: str = "") -> str:
    """Assert the relay refuses to start on this pair; its message."""
    done = serve(tmp_path, chain, key, extra)
    assert done is not None, "the relay started on a certificate LINE would refuse"
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert "LINE would refuse this certificate" in done.stderr
    assert "tls_allow_refused_chain" in done.stderr
    return done.stderr


def test_a_lone_leaf_whose_ca_publishes_its_intermediate_stops_the_start(tmp_path: Path):
    # cert.pem served instead of fullchain.pem: the README's first warning.
    lone = pair(tmp_path, lone_aia=True)
    message = refused(tmp_path, lone.chain, lone.key)
    assert "chain-complete" in message
    assert "fullchain.pem" in message
    assert str(lone.chain) in message


def test_an_expired_certificate_stops_the_start(tmp_path: Path):
    now = certs.now()
    expired = pair(
        tmp_path, not_before=now - dt.timedelta(days=91), not_after=now - dt.timedelta(hours=1)
    )
    assert "expired on" in refused(tmp_path, expired.chain, expired.key)


def test_a_key_that_is_not_the_leafs_stops_the_start(tmp_path: Path):
    good, other = pair(tmp_path / "a"), pair(tmp_path / "b")
    message = refused(tmp_path, good.chain, other.key)
    assert "key-match" in message
    assert str(other.key) in message


def test_a_server_name_the_certificate_does_not_cover_stops_the_start(tmp_path: Path):
    chain = pair(tmp_path)
    message = refused(tmp_path, chain.chain, chain.key, 'server_name = "relay.example.com"\n')
    assert "does not cover relay.example.com" in message


def test_a_bad_server_name_is_a_config_error(tmp_path: Path):
    chain = pair(tmp_path)
    done = serve(tmp_path, chain.chain, chain.key, 'server_name = "https://relay.example.com"\n')
    assert done is not None
    assert done.returncode == 2
    assert "server_name" in done.stderr


def test_the_override_serves_it_and_says_so_at_error_level(tmp_path: Path):
    now = certs.now()
    expired = pair(
        tmp_path, not_before=now - dt.timedelta(days=91), not_after=now - dt.timedelta(hours=1)
    )
    config = f'tls_cert_file = "{expired.chain}"\ntls_key_file = "{expired.key}"\n'
    event = "certificate refused by the rules, served anyway (tls_allow_refused_chain)"
    relay = RelayProcess(
        tmp_path / "state",
        config=config + "tls_allow_refused_chain = true\n",
        expected_errors=(event,),
    ).start()
    try:
        harness = Harness(relay)
        (line,) = harness.log_events(event)
        assert line["rule"] == "expiry"
        assert handshake_leaf(relay, expired.root) == expired.leaf
    finally:
        relay.stop()


def handshake_leaf(relay: RelayProcess, root: Path) -> x509.Certificate:
    """The leaf a new handshake with the relay is shown (the time not checked)."""
    context = ssl.create_default_context(cafile=str(root))
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # an expired leaf is what some tests serve
    with (
        socket.create_connection(("127.0.0.1", relay.port), timeout=TIMEOUT) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def test_a_trustme_chain_as_outside_checks_provision_it_is_served_with_warnings(
    tmp_path: Path,
):
    """PROTOCOL.md §5: the appliance serves the chain it is given; outside checks give
    trustme's (the leaf alone, signed by the root, its subjectAltName critical)."""
    ca = trustme.CA()
    issued = ca.issue_cert("localhost", "127.0.0.1")
    chain, key, root = tmp_path / "chain.pem", tmp_path / "key.pem", tmp_path / "root.pem"
    issued.cert_chain_pems[0].write_to_path(str(chain))
    issued.private_key_pem.write_to_path(str(key))
    ca.cert_pem.write_to_path(str(root))
    relay = RelayProcess(
        tmp_path / "state", config=f'tls_cert_file = "{chain}"\ntls_key_file = "{key}"\n'
    ).start()
    try:
        warned = {line["rule"] for line in Harness(relay).log_events("certificate warning")}
        assert warned == {"chain-trusted", "chain-complete"}
        context = ssl.create_default_context(cafile=str(root))
        response = httpx.get(f"{relay.base_url}/webhook/nobody", verify=context, timeout=TIMEOUT)
        assert response.status_code == 405
    finally:
        relay.stop()


# One relay for the rest: the embedded default first, then reloads.


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    with running_relay(
        tmp_path_factory,
        "certcheck",
        config='server_name = "localhost"\n',
        expected_errors=("reload: certificate kept",),
    ) as h:
        yield h


def served_not_after(harness: Harness) -> dt.datetime:
    leaf = x509.load_pem_x509_certificate(
        pki.EmbeddedPKI(harness.relay.state.pki).leaf.read_bytes()
    )
    return leaf.not_valid_after_utc


def test_the_embedded_dev_pki_passes_for_localhost_and_its_expiry_is_exported(harness: Harness):
    assert harness.log_events("certificate warning") == []
    assert harness.metric(EXPIRY_METRIC) == served_not_after(harness).timestamp()


@pytest.fixture
def swap(harness: Harness, tmp_path: Path) -> Iterator[Path]:
    """Point the relay's config at ``tmp_path``'s chain and key (written by the test);
    afterwards back to the embedded PKI."""
    config_file = harness.relay.config_file
    assert config_file is not None
    original = config_file.read_text()
    chain, key = tmp_path / "chain.pem", tmp_path / "key.pem"
    config_file.write_text(original + f'tls_cert_file = "{chain}"\ntls_key_file = "{key}"\n')
    yield tmp_path
    config_file.write_text(original)
    loaded = len(harness.log_events("reload: certificate loaded"))
    harness.relay.signal(signal.SIGHUP)
    wait_for(lambda: len(harness.log_events("reload: certificate loaded")) > loaded, "reload")


def install(made: Pair, directory: Path) -> None:
    (directory / "chain.pem").write_bytes(made.chain.read_bytes())
    (directory / "key.pem").write_bytes(made.key.read_bytes())


def test_a_reload_to_a_chain_line_would_refuse_keeps_the_one_serving(harness: Harness, swap: Path):
    serving = handshake_leaf(harness.relay, harness.relay.ca_file)
    kept = len(harness.log_events("reload: certificate kept"))
    failed = harness.metric("linerelay_tls_reloads_total", result="failed")
    install(pair(swap / "lone", lone_aia=True), swap)
    harness.relay.signal(signal.SIGHUP)
    wait_for(lambda: len(harness.log_events("reload: certificate kept")) > kept, "the refusal")
    why = harness.log_events("reload: certificate kept")[-1]["why"]
    assert "LINE would refuse this certificate" in why
    assert "chain-complete" in why
    assert handshake_leaf(harness.relay, harness.relay.ca_file) == serving
    assert harness.metric("linerelay_tls_reloads_total", result="failed") == failed + 1
    assert harness.metric(EXPIRY_METRIC) == served_not_after(harness).timestamp()


def test_a_reload_to_a_chain_due_for_renewal_serves_it_and_warns_once(harness: Harness, swap: Path):
    now = certs.now()
    soon = pair(
        swap / "soon",
        not_before=now - dt.timedelta(days=80),
        not_after=now + dt.timedelta(days=10),
    )
    install(soon, swap)
    before = len(harness.log_events("certificate warning"))
    harness.relay.signal(signal.SIGHUP)
    wait_for(lambda: handshake_leaf(harness.relay, soon.root) == soon.leaf, "the new leaf")
    context = ssl.create_default_context(cafile=str(soon.root))
    for _ in range(3):  # requests do not repeat the warning
        httpx.get(f"{harness.relay.base_url}/webhook/nobody", verify=context, timeout=TIMEOUT)
    warnings = harness.log_events("certificate warning")[before:]
    assert {line["rule"] for line in warnings} == {"expiry", "chain-trusted", "chain-complete"}
    assert len(warnings) == 3
    expiry = next(line for line in warnings if line["rule"] == "expiry")
    assert "expires in" in expiry["why"]
    assert "renew" in expiry["fix"]
    assert harness.metric(EXPIRY_METRIC) == soon.leaf.not_valid_after_utc.timestamp()
