"""SIGHUP reloads the certificate chain (under traffic) and the config (PROTOCOL.md §3)."""

from __future__ import annotations

import http.client
import shutil
import signal
import socket
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.integration.helpers import (
    TIMEOUT,
    Bridge,
    Harness,
    Tenant,
    async_client,
    async_wait_for,
    post,
    running_relay,
    tag_of,
    wait_for,
    webhook_body,
)
from tls.pki import EmbeddedPKI

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class Certs:
    """Two independent dev PKIs and the two files the relay is configured to serve."""

    old: EmbeddedPKI
    new: EmbeddedPKI
    chain: Path
    key: Path

    def serve(self, pki: EmbeddedPKI) -> None:
        """Put ``pki``'s chain and key where the relay reads them."""
        shutil.copyfile(pki.key, self.key)
        shutil.copyfile(pki.chain, self.chain)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    base = tmp_path_factory.mktemp("certs")
    old, new = EmbeddedPKI(base / "old"), EmbeddedPKI(base / "new")
    old.ensure()
    new.ensure()
    serving = base / "serving"
    serving.mkdir()
    made = Certs(old, new, serving / "chain.pem", serving / "key.pem")
    made.serve(old)
    return made


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory, certs: Certs) -> Iterator[Harness]:
    with running_relay(
        tmp_path_factory,
        "reload",
        config=config_text(certs),
        # Broken reloads are what an operator must hear about: this module makes them.
        expected_errors=("reload: certificate kept", "reload: config kept"),
    ) as h:
        h.trust = (certs.old.root, certs.new.root)
        yield h


def config_text(certs: Certs, extra: str = "") -> str:
    """The relay's TOML config: the two certificate files, plus ``extra``."""
    return f'tls_cert_file = "{certs.chain}"\ntls_key_file = "{certs.key}"\n{extra}'


def leaf_der(pki: EmbeddedPKI) -> bytes:
    """The DER bytes of ``pki``'s leaf certificate."""
    cert = x509.load_pem_x509_certificate(pki.leaf.read_bytes())
    return cert.public_bytes(serialization.Encoding.DER)


def handshake_leaf(harness: Harness) -> bytes:
    """The leaf a brand-new TLS handshake with the relay is shown (verified)."""
    with (
        socket.create_connection(("127.0.0.1", harness.relay.port), timeout=TIMEOUT) as raw,
        harness.ssl.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return der


@dataclass
class Traffic:
    """Threads posting webhooks continuously: one keep-alive client, one new connection each."""

    harness: Harness
    tenant: Tenant
    statuses: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> None:
        for keep_alive in (True, False):
            thread = threading.Thread(target=self._run, args=(keep_alive,), daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(TIMEOUT)

    def _run(self, keep_alive: bool) -> None:
        shared = httpx.Client(verify=self.harness.ssl, timeout=TIMEOUT)
        try:
            n = 0
            while not self._stop.is_set():
                n += 1
                body = webhook_body(f"traffic-{keep_alive}-{n}")
                headers = self.harness.headers(self.tenant, body)
                try:
                    if keep_alive:
                        response = shared.post(self.tenant.url, content=body, headers=headers)
                    else:
                        with httpx.Client(verify=self.harness.ssl, timeout=TIMEOUT) as fresh:
                            response = fresh.post(self.tenant.url, content=body, headers=headers)
                    self.statuses.append(response.status_code)
                except httpx.HTTPError as exc:
                    self.errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            shared.close()


async def test_sighup_serves_a_new_chain_to_new_handshakes_without_failing_a_request(
    harness: Harness, certs: Certs
) -> None:
    assert handshake_leaf(harness) == leaf_der(certs.old)
    tenant = harness.tenant()
    # Connections opened before the reload: plain keep-alive HTTP/1.1, and a bridge.
    context = harness.ssl
    early = http.client.HTTPSConnection("127.0.0.1", harness.relay.port, context=context)
    body = webhook_body("early-1")
    early.request("POST", f"/webhook/{tenant.id}", body, harness.headers(tenant, body))
    assert early.getresponse().read() == b"{}"
    assert isinstance(early.sock, ssl.SSLSocket)
    early_socket = early.sock
    assert early_socket.getpeercert(binary_form=True) == leaf_der(certs.old)
    bridge = await Bridge.open(harness, tenant.token)
    assert tag_of(await bridge.webhook()) == "early-1"

    traffic = Traffic(harness, tenant)
    traffic.start()
    try:
        wait_for(lambda: len(traffic.statuses) >= 10, "traffic before the reload")
        certs.serve(certs.new)
        harness.relay.signal(signal.SIGHUP)
        wait_for(lambda: handshake_leaf(harness) == leaf_der(certs.new), "the new leaf")
        seen = len(traffic.statuses)
        wait_for(lambda: len(traffic.statuses) >= seen + 10, "traffic after the reload")
    finally:
        traffic.stop()
    assert traffic.errors == []
    assert set(traffic.statuses) == {200}

    # The connections opened before the reload still work, on the old certificate.
    body = webhook_body("early-2")
    early.request("POST", f"/webhook/{tenant.id}", body, harness.headers(tenant, body))
    assert early.getresponse().read() == b"{}"
    assert early.sock is early_socket
    assert early_socket.getpeercert(binary_form=True) == leaf_der(certs.old)
    early.close()
    delivered = []
    while "early-2" not in delivered:
        frame = await bridge.webhook()
        delivered.append(tag_of(frame))
        await bridge.ack(frame)
    await bridge.close()
    assert harness.log_events("reload: certificate loaded")


def mismatched_key(certs: Certs) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    certs.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def garbage_chain(certs: Certs) -> None:
    certs.chain.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")


def missing_key(certs: Certs) -> None:
    certs.key.unlink()


@pytest.mark.parametrize(
    "breakage",
    [
        mismatched_key,
        garbage_chain,
        missing_key,
    ],
    ids=["mismatched-key", "garbage-chain", "missing-key"],
)
async def test_failed_sighup_reload_keeps_the_serving_certificate_and_logs_why(
    harness: Harness, certs: Certs, breakage: object
) -> None:
    assert callable(breakage)
    certs.serve(certs.new)
    serving = handshake_leaf(harness)
    kept = len(harness.log_events("reload: certificate kept"))
    failed = harness.metric("linerelay_tls_reloads_total", result="failed")
    breakage(certs)
    try:
        harness.relay.signal(signal.SIGHUP)
        wait_for(
            lambda: len(harness.log_events("reload: certificate kept")) > kept,
            "the relay to log the failed reload",
        )
        assert harness.metric("linerelay_tls_reloads_total", result="failed") == failed + 1
        assert handshake_leaf(harness) == serving
        tenant = harness.tenant()
        async with async_client(harness) as client:
            assert (await post(client, harness, tenant, webhook_body("kept"))).status_code == 200
        # Last, as the one part that fails for a missing key: the log names the bad file.
        why = harness.log_events("reload: certificate kept")[-1]["why"]
        assert str(certs.chain if breakage is garbage_chain else certs.key) in why
    finally:
        certs.serve(certs.new)


async def test_sighup_rereads_the_config_file(harness: Harness, certs: Certs) -> None:
    config_file = harness.relay.config_file
    assert config_file is not None
    tenant = harness.tenant()

    async def status_of(tag: str) -> int:
        # A new connection each time: after a 413 the relay drops the connection.
        async with async_client(harness) as client:
            return (await post(client, harness, tenant, webhook_body(tag))).status_code

    assert await status_of("a" * 1500) == 200
    try:
        config_file.write_text(config_text(certs, "max_body_bytes = 1500\n"))
        harness.relay.signal(signal.SIGHUP)

        async def refused() -> bool:
            return await status_of("b" * 1500) == 413

        await async_wait_for(refused, "the reloaded body limit")
    finally:
        config_file.write_text(config_text(certs))
        harness.relay.signal(signal.SIGHUP)

    async def accepted() -> bool:
        return await status_of("c" * 1500) == 200

    await async_wait_for(accepted, "the default body limit again")


@pytest.mark.parametrize(
    "broken",
    ["max_body_bytes = [", "max_body_bytes = -1\n", "no_such_key = 1\n", 'log_level = "loud"\n'],
    ids=["not-toml", "negative-limit", "unknown-key", "bad-level"],
)
async def test_sighup_with_a_broken_config_keeps_the_running_one_and_says_why(
    harness: Harness, certs: Certs, broken: str
) -> None:
    config_file = harness.relay.config_file
    assert config_file is not None
    tenant = harness.tenant()
    kept = len(harness.log_events("reload: config kept"))
    serving = handshake_leaf(harness)
    try:
        config_file.write_text(config_text(certs, broken))
        harness.relay.signal(signal.SIGHUP)
        wait_for(
            lambda: len(harness.log_events("reload: config kept")) > kept,
            "the relay to log the refused config",
        )
        assert harness.log_events("reload: config kept")[-1]["why"]
    finally:
        config_file.write_text(config_text(certs))
    assert handshake_leaf(harness) == serving
    async with async_client(harness) as client:
        body = webhook_body("w" * 3000)
        assert (await post(client, harness, tenant, body)).status_code == 200


def reload_with(harness: Harness, certs: Certs, extra: str) -> None:
    """Write the config with ``extra``, SIGHUP, and wait until the reload was applied."""
    config_file = harness.relay.config_file
    assert config_file is not None
    loaded = len(harness.log_events("reload: certificate loaded"))
    config_file.write_text(config_text(certs, extra))
    harness.relay.signal(signal.SIGHUP)
    wait_for(
        lambda: len(harness.log_events("reload: certificate loaded")) > loaded,
        "the relay to apply the reload",
    )


async def test_sighup_changes_the_window_of_a_bridge_already_connected(
    harness: Harness, certs: Certs
) -> None:
    tenant = harness.tenant()
    reload_with(harness, certs, "bridge_window = 2\n")
    try:
        async with await Bridge.open(harness, tenant.token) as bridge:
            async with async_client(harness) as client:
                for n in range(5):
                    assert (
                        await post(client, harness, tenant, webhook_body(f"win-{n}"))
                    ).status_code == 200
            first = await bridge.webhooks(2)
            assert await bridge.silent_for(1.0)  # the window of 2 is full
            reload_with(harness, certs, "bridge_window = 4\n")
            # The same connection, nothing acked: the wider window is used at once.
            more = await bridge.webhooks(2)
            assert [tag_of(f) for f in first + more] == [f"win-{n}" for n in range(4)]
            assert await bridge.silent_for(1.0)
            for frame in first + more:
                await bridge.ack(frame)
            assert tag_of(await bridge.webhook()) == "win-4"
    finally:
        reload_with(harness, certs, "")


def test_sighup_names_the_keys_only_a_restart_changes(harness: Harness, certs: Certs) -> None:
    before = len(harness.log_events("reload: these keys need a restart"))
    reload_with(harness, certs, 'tls_policy = "intermediate"\nhypercorn_access_log = true\n')
    try:
        said = harness.log_events("reload: these keys need a restart")
        assert len(said) == before + 1
        assert sorted(said[-1]["keys"]) == ["hypercorn_access_log", "tls_policy"]
        # Still the modern policy: a TLS 1.2 client is refused as before.
        context = ssl.create_default_context(cafile=str(certs.old.root))
        context.maximum_version = ssl.TLSVersion.TLSv1_2
        with (
            pytest.raises(ssl.SSLError),
            socket.create_connection(("127.0.0.1", harness.relay.port), timeout=TIMEOUT) as sock,
            context.wrap_socket(sock, server_hostname="localhost"),
        ):
            pass
    finally:
        reload_with(harness, certs, "")
