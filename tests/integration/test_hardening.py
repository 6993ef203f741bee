"""Issue 9's findings, each against a real relay attacked on loopback.

Attackers bind to 127.0.0.2 and up, so per-address limits can tell them from
the legitimate traffic on 127.0.0.1. The attacks that need many connections or
raw HTTP/2 (zero window, rapid reset, descriptor floods, bridges that never
read or reconnect in a loop, log amplification) are in test_attacks.py, on the
abuse harness's attack primitives.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import socket
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from appliance.signature import sign
from tests.integration.helpers import (
    TIMEOUT,
    Bridge,
    Harness,
    async_client,
    post,
    running_relay,
    webhook_body,
)
from tests.support.relay import RelayProcess, linerelay

pytestmark = pytest.mark.integration

CONFIG = "bridge_window = 1\nbridge_auth_burst = 5\nbridge_auth_interval = 30.0\n"


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    with running_relay(tmp_path_factory, "hardening", CONFIG) as h:
        yield h


# -- finding 5: acks for ids never sent; ids that count other tenants' traffic ----------


async def test_acks_for_ids_not_yet_sent_do_not_make_webhooks_vanish(harness: Harness) -> None:
    tenant = harness.tenant()
    async with async_client(harness) as client:
        for tag in ("first", "second", "third"):
            assert (await post(client, harness, tenant, webhook_body(tag))).status_code == 200
    async with await Bridge.open(harness, tenant.token) as bridge:
        first = await bridge.webhook()
        # What the ids of the next two would have been as a global sequence, and ids
        # of the relay's own shape: a bridge acking ahead of delivery.
        number = re.fullmatch(r"d-0*(\d+)", first["id"])
        guesses = [f"d-{int(number.group(1)) + n:012d}" for n in (1, 2)] if number else []
        guesses += [f"d-{secrets.token_hex(12)}" for _ in range(5)]
        for guess in guesses:
            await bridge.ws.send(json.dumps({"type": "ack", "id": guess}))
        await bridge.ack(first)
        rest = [*await bridge.take(1), *await bridge.take(1)]  # a window of one
    assert [json.loads(f["body"])["events"][0]["message"]["text"] for f in rest] == [
        "second",
        "third",
    ]


async def test_delivery_ids_reveal_nothing_of_other_tenants_traffic(harness: Harness) -> None:
    mine, theirs = harness.tenant(), harness.tenant()
    async with async_client(harness) as client:
        await post(client, harness, mine, webhook_body("a"))
        for n in range(5):
            await post(client, harness, theirs, webhook_body(f"b{n}"))
        await post(client, harness, mine, webhook_body("c"))
    async with await Bridge.open(harness, mine.token) as bridge:
        ids = [f["id"] for f in [*await bridge.take(1), *await bridge.take(1)]]
    for wire_id in ids:
        assert re.fullmatch(r"d-[0-9a-f]{24}", wire_id), wire_id
    assert ids[0] != ids[1]


# -- finding 7: Content-Length with Transfer-Encoding ------------------------------------


def test_content_length_with_transfer_encoding_is_refused_and_the_connection_closed(
    harness: Harness,
) -> None:
    tenant = harness.tenant()
    smuggled = b"GET /webhook/" + tenant.id.encode() + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    request = (
        b"POST /webhook/" + tenant.id.encode() + b" HTTP/1.1\r\nHost: x\r\n"
        b"Content-Length: " + str(5 + len(smuggled)).encode() + b"\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + smuggled
    )
    with (
        socket.create_connection(("127.0.0.1", harness.relay.port), timeout=TIMEOUT) as raw,
        harness.ssl.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        tls.sendall(request)
        answer = b""
        with contextlib.suppress(OSError):
            while chunk := tls.recv(65536):
                answer += chunk
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert b'{"error": "malformed_request"}' in answer
    assert b"connection: close" in answer.lower()
    # The smuggled request was never answered: one response, then the close.
    assert answer.count(b"HTTP/1.1 ") == 1


# -- finding 8: four spellings of one signature --------------------------------------


async def test_the_spellings_of_one_signature_queue_one_webhook(harness: Harness) -> None:
    tenant = harness.tenant()
    body = webhook_body("spelled")
    signature = harness.sign(tenant.secret, body)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    base = alphabet.index(signature[-2]) & ~0b11
    spellings = [signature[:-2] + alphabet[base + low] + "=" for low in range(4)]
    async with async_client(harness) as client:
        for spelling in spellings:
            harness.remember(spelling)
            response = await client.post(
                tenant.url, content=body, headers={"x-line-signature": spelling}
            )
            assert response.status_code == 200
    async with await Bridge.open(harness, tenant.token) as bridge:
        await bridge.take(1)
        assert await bridge.silent_for(1.0)


# -- finding 9: bridge token guessing -------------------------------------------------


async def guess(harness: Harness, source: str, token: str) -> tuple[int, str | None]:
    """One bridge upgrade from ``source``: the HTTP status and Retry-After of its refusal."""
    try:
        ws = await connect(
            harness.relay.bridge_url,
            ssl=harness.ssl,
            additional_headers={"Authorization": f"Bearer {token}"},
            local_addr=(source, 0),
            open_timeout=TIMEOUT,
        )
    except InvalidStatus as exc:
        return exc.response.status_code, exc.response.headers.get("Retry-After")
    await ws.close()
    return 101, None


async def test_repeated_bad_tokens_lock_the_address_out_with_429_but_no_other(
    harness: Harness,
) -> None:
    tenant = harness.tenant()
    answers = [
        await guess(harness, "127.0.0.7", harness.remember("lrb_" + "x" * 43)) for _ in range(8)
    ]
    assert [status for status, _ in answers] == [401] * 5 + [429] * 3
    assert all(int(retry or 0) >= 1 for _, retry in answers[5:])
    # Locked out, the right token is not even checked...
    assert (await guess(harness, "127.0.0.7", tenant.token))[0] == 429
    # ...and another address is not affected.
    assert (await guess(harness, "127.0.0.8", tenant.token))[0] == 101
    assert len(harness.log_events("bridge authentication failures")) == 1


# -- finding 10: private state; a typo in --state-dir -----------------------------------


def test_state_is_private_whatever_the_umask(tmp_path: Path) -> None:
    previous = os.umask(0o022)
    try:
        relay = RelayProcess(tmp_path / "state").start()
        token = relay.add_tenant("acme", "s3cr3t")
        body = webhook_body("private")
        response = httpx.post(
            relay.webhook_url("acme"),
            content=body,
            headers={"x-line-signature": sign(b"s3cr3t", body)},
            verify=ssl.create_default_context(cafile=str(relay.ca_file)),
        )
        assert response.status_code == 200
        assert token
    finally:
        os.umask(previous)
    try:
        assert (tmp_path / "state").stat().st_mode & 0o777 == 0o700
        loose = [
            str(path)
            for path in (tmp_path / "state").rglob("*")
            if path.is_file() and path.stat().st_mode & 0o077
        ]
        assert loose == []
    finally:
        relay.stop()


@pytest.mark.parametrize("command", [["tenant", "list"], ["tenant", "remove", "acme"]])
def test_a_state_dir_that_does_not_exist_is_refused_not_created(
    tmp_path: Path, command: list[str]
) -> None:
    typo = tmp_path / "typo"
    result = linerelay(*command, state_dir=typo, check=False)
    assert result.returncode == 2
    assert "does not exist" in result.stderr
    assert not typo.exists()


# -- finding 11: shutdown with the disk full ----------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


async def test_a_relay_on_a_full_disk_answers_503_and_stops_cleanly(
    small_disk: Path, tmp_path: Path
) -> None:
    relay = RelayProcess(
        small_disk / "state",
        expected_errors=("store commit failed", "store fsync failed"),
        log_file=tmp_path / "relay.log",  # not on the full disk
    ).start()
    try:
        relay.add_tenant("acme", "s3cr3t")
        filler = small_disk / "filler"
        with contextlib.suppress(OSError), filler.open("wb") as fh:
            while True:
                fh.write(b"\0" * 65536)
        statuses = []
        verify = ssl.create_default_context(cafile=str(relay.ca_file))
        async with httpx.AsyncClient(verify=verify, timeout=TIMEOUT) as client:
            for n in range(20):
                body = webhook_body(f"full-{n}") + b" " * 4096
                response = await client.post(
                    relay.webhook_url("acme"),
                    content=body,
                    headers={"x-line-signature": sign(b"s3cr3t", body)},
                )
                statuses.append(response.status_code)
        assert 503 in statuses
        assert set(statuses) <= {200, 503}
    finally:
        status = relay.stop()
    assert status == 0, relay.output()[-2000:]
    assert '"event":"relay stopped"' in relay.output()
