"""The bridge connection (PROTOCOL.md §2) against a real relay, with python-websockets
(HTTP/1.1 upgrades, which the relay serves with python-websockets) and, where
said, over HTTP/2 extended CONNECT (which Hypercorn serves)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import ssl
import time
from collections.abc import Iterator

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from appliance.hub import CLOSE_SHUTDOWN
from tests.integration.helpers import (
    TIMEOUT,
    Bridge,
    H2Bridge,
    Harness,
    post_tags,
    running_relay,
    tag_of,
)
from tests.support.relay import RelayProcess

pytestmark = pytest.mark.integration

WINDOW = 4
IDLE_TIMEOUT = 3.0
#: What a shared, loaded machine may add to a deadline the relay keeps.
SLACK = 2.0
CONFIG = f"""
bridge_window = {WINDOW}
ping_interval = 1.0
bridge_idle_timeout = {IDLE_TIMEOUT}
"""


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    with running_relay(tmp_path_factory, "bridge", config=CONFIG) as h:
        yield h


@pytest.mark.parametrize(
    "how", ["missing", "wrong-bearer", "wrong-in-url", "basic-scheme", "empty-bearer"]
)
async def test_bad_or_missing_token_is_refused_401_before_the_upgrade(
    harness: Harness, how: str
) -> None:
    tenant = harness.tenant()
    wrong = harness.remember("lrb_" + "A" * 43)
    url, headers = harness.relay.bridge_url, {}
    match how:
        case "wrong-bearer":
            headers = {"Authorization": f"Bearer {wrong}"}
        case "wrong-in-url":
            url = f"{url}/{wrong}"
        case "basic-scheme":
            headers = {"Authorization": f"Basic {tenant.token}"}
        case "empty-bearer":
            headers = {"Authorization": "Bearer "}
    with pytest.raises(InvalidStatus) as refused:
        await connect(url, ssl=harness.ssl, additional_headers=headers, open_timeout=TIMEOUT)
    assert refused.value.response.status_code == 401
    body = refused.value.response.body or b""
    assert tenant.token.encode() not in body
    assert wrong.encode() not in body


async def test_token_in_the_url_authenticates_and_never_appears_in_the_log(
    harness: Harness,
) -> None:
    tenant = harness.tenant()
    (body,) = await post_tags(harness, tenant, "via-url")
    async with await Bridge.open(harness, tenant.token, in_url=True) as bridge:
        assert bridge.hello["tenant"] == tenant.id
        frame = await bridge.webhook()
        assert frame["body"].encode() == body
        await bridge.ack(frame)
    # A refused URL token is not logged either.
    wrong = harness.remember("lrb_" + "B" * 43)
    with pytest.raises(InvalidStatus):
        await connect(f"{harness.relay.bridge_url}/{wrong}", ssl=harness.ssl)
    output = harness.relay.output()
    assert "bridge connected" in output
    assert tenant.token not in output
    assert wrong not in output


async def test_hello_is_the_first_frame_and_names_protocol_tenant_and_window(
    harness: Harness,
) -> None:
    tenant = harness.tenant()
    await post_tags(harness, tenant, "queued-before-connect")
    async with await Bridge.open(harness, tenant.token) as bridge:
        assert bridge.hello == {
            "type": "hello",
            "protocol": 1,
            "tenant": tenant.id,
            "window": WINDOW,
        }
        frame = await bridge.webhook()
        assert tag_of(frame) == "queued-before-connect"
        await bridge.ack(frame)


async def test_webhooks_posted_while_no_bridge_is_connected_arrive_in_order_of_receipt(
    harness: Harness,
) -> None:
    tenant = harness.tenant()
    tags = [f"offline-{i}" for i in range(WINDOW * 2 + 1)]
    bodies = await post_tags(harness, tenant, *tags)
    received = []
    async with await Bridge.open(harness, tenant.token) as bridge:
        for _ in tags:
            frame = await bridge.webhook()
            received.append(frame)
            await bridge.ack(frame)
    assert [f["body"].encode() for f in received] == bodies
    assert all(f["attempt"] == 1 and f["tenant"] == tenant.id for f in received)
    ids = [f["id"] for f in received]
    assert len(set(ids)) == len(ids)
    stamps = [f["received_at"] for f in received]
    assert stamps == sorted(stamps)


async def test_at_most_window_webhooks_are_in_flight_unacked(harness: Harness) -> None:
    tenant = harness.tenant()
    tags = [f"w-{i}" for i in range(WINDOW + 2)]
    await post_tags(harness, tenant, *tags)
    async with await Bridge.open(harness, tenant.token) as bridge:
        first = await bridge.webhooks(WINDOW)
        assert [tag_of(f) for f in first] == tags[:WINDOW]
        assert await bridge.silent_for(1.5)
        await bridge.ack(first[0])
        fifth = await bridge.webhook()
        assert tag_of(fifth) == tags[WINDOW]
        assert await bridge.silent_for(1.0)
        for frame in [*first[1:], fifth]:
            await bridge.ack(frame)
        last = await bridge.webhook()
        assert tag_of(last) == tags[WINDOW + 1]
        await bridge.ack(last)


async def test_nacked_webhook_is_redelivered_after_a_backoff_with_attempt_raised(
    harness: Harness,
) -> None:
    tenant = harness.tenant()
    async with await Bridge.open(harness, tenant.token) as bridge:
        await post_tags(harness, tenant, "refused-once")
        frame = await bridge.webhook()
        assert frame["attempt"] == 1
        await bridge.nack(frame, "model is down")
        nacked_at = time.monotonic()
        again = await bridge.webhook()
        waited = time.monotonic() - nacked_at
        assert again["id"] == frame["id"]
        assert again["body"] == frame["body"]
        assert again["attempt"] == 2
        # nack_backoff is 1 s by default: the redelivery is not immediate.
        assert waited >= 0.5, f"redelivered {waited:.3f}s after the nack"
        await bridge.ack(again)
        # Once acked it is gone: the next frame is a later webhook.
        await post_tags(harness, tenant, "after-ack")
        assert tag_of(await bridge.webhook()) == "after-ack"


async def test_unacked_webhooks_are_redelivered_after_reconnect_with_attempt_2(
    harness: Harness,
) -> None:
    tenant = harness.tenant()
    bodies = await post_tags(harness, tenant, "unacked-1", "unacked-2")
    async with await Bridge.open(harness, tenant.token) as bridge:
        first = await bridge.webhooks(2)
    assert [f["attempt"] for f in first] == [1, 1]
    async with await Bridge.open(harness, tenant.token) as bridge:
        again = await bridge.webhooks(2)
        for frame in again:
            await bridge.ack(frame)
    assert [f["id"] for f in again] == [f["id"] for f in first]
    assert [f["body"].encode() for f in again] == bodies
    assert [f["attempt"] for f in again] == [2, 2]


async def test_ack_for_an_unknown_id_is_ignored_even_another_tenants_id(
    harness: Harness,
) -> None:
    alice, bob = harness.tenant(), harness.tenant()
    await post_tags(harness, bob, "bobs")
    async with await Bridge.open(harness, bob.token) as bob_bridge:
        bobs = await bob_bridge.webhook()
    async with await Bridge.open(harness, alice.token) as bridge:
        for frame_id in ("d-999999999999", "nope", "", "d-", "d-" + "9" * 30, bobs["id"]):
            await bridge.ws.send(json.dumps({"type": "ack", "id": frame_id}))
        await post_tags(harness, alice, "alices")
        frame = await bridge.webhook()
        assert tag_of(frame) == "alices"
        await bridge.ack(frame)
    # Alice's ack of Bob's id did not ack Bob's webhook.
    async with await Bridge.open(harness, bob.token) as bob_bridge:
        again = await bob_bridge.webhook()
        assert again["id"] == bobs["id"]
        assert again["attempt"] == 2
        await bob_bridge.ack(again)


MALFORMED = [
    "not json at all",
    "{",
    "[1, 2]",
    '"ack"',
    "null",
    '{"no": "type"}',
    '{"type": 42}',
    '{"type": "mystery", "id": "d-000000000001"}',
    '{"type": "ack"}',
    '{"type": "ack", "id": 1}',
    '{"type": "nack", "id": "d-000000000001", "reason": 7}',
    '{"type": "hello", "protocol": 1, "tenant": "someone-else", "window": 1000}',
    '{"type": "webhook", "id": "d-1"}',
    "[" * 5000 + "]" * 5000,
]


async def test_malformed_frames_never_crash_the_relay_nor_disturb_another_tenant(
    harness: Harness,
) -> None:
    noisy, quiet = harness.tenant(), harness.tenant()
    async with (
        await Bridge.open(harness, noisy.token) as noisy_bridge,
        await Bridge.open(harness, quiet.token) as quiet_bridge,
    ):
        for text in MALFORMED:
            await noisy_bridge.ws.send(text)
        await noisy_bridge.ws.send(b"\x00\x01 binary frame")
        await noisy_bridge.ws.send(b'{"type": "ack", "id": "d-000000000001"}')
        # Both connections still work: the noisy one included.
        for bridge, tenant in ((noisy_bridge, noisy), (quiet_bridge, quiet)):
            await post_tags(harness, tenant, f"still-{tenant.id}")
            frame = await bridge.webhook()
            assert tag_of(frame) == f"still-{tenant.id}"
            await bridge.ack(frame)
        # A frame over the 16 KiB limit: the relay may drop that connection, nothing more.
        await noisy_bridge.ws.send(json.dumps({"type": "nack", "id": "x", "reason": "y" * 20000}))
        await post_tags(harness, quiet, "after-huge")
        frame = await quiet_bridge.webhook()
        assert tag_of(frame) == "after-huge"
        await quiet_bridge.ack(frame)
    async with httpx.AsyncClient(timeout=TIMEOUT) as admin:
        assert (await admin.get(harness.relay.admin_url + "/healthz")).status_code == 200
    async with await Bridge.open(harness, noisy.token) as noisy_bridge:
        await post_tags(harness, noisy, "noisy-again")
        frame = await noisy_bridge.webhook()
        assert tag_of(frame) == "noisy-again"
        await noisy_bridge.ack(frame)


async def test_a_bridge_never_gets_another_tenants_webhooks(harness: Harness) -> None:
    alice, bob = harness.tenant(), harness.tenant()
    async with (
        await Bridge.open(harness, alice.token) as alice_bridge,
        await Bridge.open(harness, bob.token) as bob_bridge,
    ):
        await post_tags(harness, bob, "bob-1", "bob-2")
        await post_tags(harness, alice, "alice-1")
        await post_tags(harness, bob, "bob-3")
        await post_tags(harness, alice, "alice-2")
        alices = await alice_bridge.webhooks(2)
        bobs = await bob_bridge.webhooks(3)
    assert [tag_of(f) for f in alices] == ["alice-1", "alice-2"]
    assert {f["tenant"] for f in alices} == {alice.id}
    assert [tag_of(f) for f in bobs] == ["bob-1", "bob-2", "bob-3"]
    assert {f["tenant"] for f in bobs} == {bob.id}


async def test_newest_bridge_is_active_and_the_older_takes_over_its_unacked_webhooks(
    harness: Harness,
) -> None:
    tenant = harness.tenant()
    async with await Bridge.open(harness, tenant.token) as older:
        newer = await Bridge.open(harness, tenant.token)
        await post_tags(harness, tenant, "one", "two")
        sent = await newer.webhooks(2)
        assert [(tag_of(f), f["attempt"]) for f in sent] == [("one", 1), ("two", 1)]
        await newer.close()
        # The older connection's first frames are the newer one's unacked webhooks,
        # sent again: it had received nothing while it stood by.
        taken_over = await older.webhooks(2)
        assert [f["id"] for f in taken_over] == [f["id"] for f in sent]
        assert [f["attempt"] for f in taken_over] == [2, 2]
        for frame in taken_over:
            await older.ack(frame)
        await post_tags(harness, tenant, "three")
        frame = await older.webhook()
        assert (tag_of(frame), frame["attempt"]) == ("three", 1)
        await older.ack(frame)


async def test_a_standby_bridge_going_away_does_not_disturb_the_active_one(
    harness: Harness,
) -> None:
    tenant = harness.tenant()
    standby = await Bridge.open(harness, tenant.token)
    async with await Bridge.open(harness, tenant.token) as active:
        await post_tags(harness, tenant, "before")
        before = await active.webhook()
        await standby.close()
        await post_tags(harness, tenant, "after")
        # Nothing is redelivered: the unacked "before" stays in flight, "after" follows.
        after = await active.webhook()
        assert (tag_of(after), after["attempt"]) == ("after", 1)
        for frame in (before, after):
            await active.ack(frame)


def open_silent_bridge(harness: Harness, token: str) -> ssl.SSLSocket:
    """A bridge that upgrades, then never reads nor answers a ping: a dead peer."""
    raw = socket.create_connection(("127.0.0.1", harness.relay.port), timeout=TIMEOUT)
    tls = harness.ssl.wrap_socket(raw, server_hostname="127.0.0.1")
    key = base64.b64encode(os.urandom(16)).decode()
    tls.sendall(
        (
            "GET /bridge HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            f"Sec-WebSocket-Version: 13\r\nAuthorization: Bearer {token}\r\n\r\n"
        ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += tls.recv(1)
    assert head.startswith(b"HTTP/1.1 101"), head
    return tls


async def test_a_bridge_that_stops_answering_pings_is_dropped_and_its_webhooks_move_on(
    harness: Harness,
) -> None:
    tenant = harness.tenant()
    await post_tags(harness, tenant, "to-the-dead")
    dead = open_silent_bridge(harness, tenant.token)
    started = time.monotonic()
    ended = False
    try:
        # Reading sends nothing back, no pong: the relay must end the connection.
        while not ended and time.monotonic() < started + TIMEOUT:
            ended = not dead.recv(65536)
    except OSError:
        ended = True
    finally:
        dead.close()
    assert ended, "the relay kept a bridge that answers no ping"
    # python-websockets' keepalive (ping_interval, ping_timeout) ends it: no sooner
    # than a missed pong, and within bridge_idle_timeout (plus a loaded machine's slack).
    assert IDLE_TIMEOUT / 2 <= time.monotonic() - started <= IDLE_TIMEOUT + SLACK
    async with await Bridge.open(harness, tenant.token) as bridge:
        frame = await bridge.webhook()
        assert (tag_of(frame), frame["attempt"]) == ("to-the-dead", 2)
        await bridge.ack(frame)


async def test_shutdown_after_a_bridge_left_is_clean(relay: RelayProcess) -> None:
    harness = Harness(relay)
    tenant = harness.tenant()
    await post_tags(harness, tenant, "last")
    async with await Bridge.open(harness, tenant.token) as bridge:
        await bridge.ack(await bridge.webhook())
    assert relay.stop() == 0
    errors = [line for line in relay.output().splitlines() if '"level":"error"' in line]
    assert harness.leaks() == []
    assert errors == []


async def test_a_bridge_offering_compression_is_answered_without_it(harness: Harness) -> None:
    tenant = harness.tenant()
    async with connect(  # python-websockets offers permessage-deflate by default
        harness.relay.bridge_url,
        ssl=harness.ssl,
        additional_headers={"Authorization": f"Bearer {tenant.token}"},
    ) as ws:
        assert ws.response is not None
        assert "Sec-WebSocket-Extensions" not in ws.response.headers
        assert ws.protocol.extensions == []
        assert json.loads(await ws.recv())["type"] == "hello"


async def test_an_http2_bridge_that_sends_nothing_is_dropped_within_the_idle_timeout(
    harness: Harness,
) -> None:
    tenant = harness.tenant()
    bridge = await H2Bridge.open(harness, tenant.token, silent=True)
    started = time.monotonic()
    try:
        assert (await bridge.frame())["type"] == "hello"
        # Hypercorn's read_timeout: no pong, no frame, nothing read for bridge_idle_timeout.
        await asyncio.wait_for(bridge.ended.wait(), TIMEOUT)
    finally:
        await bridge.close()
    assert IDLE_TIMEOUT / 2 <= time.monotonic() - started <= IDLE_TIMEOUT + SLACK


def warnings_or_worse(relay: RelayProcess) -> list[str]:
    """The relay's log lines above info level, and any that are not JSON."""
    found = []
    for line in relay.output().splitlines():
        try:
            level = json.loads(line).get("level")
        except (ValueError, AttributeError):
            level = None
        if level not in ("debug", "info"):
            found.append(line)
    return found


async def test_shutdown_with_an_http2_bridge_connected_is_prompt_and_quiet(
    relay: RelayProcess,
) -> None:
    harness = Harness(relay)
    tenant = harness.tenant()
    await post_tags(harness, tenant, "before-shutdown")
    bridge = await H2Bridge.open(harness, tenant.token)
    try:
        assert (await bridge.frame())["type"] == "hello"
        frame = await bridge.frame()
        assert tag_of(frame) == "before-shutdown"
        await bridge.send(json.dumps({"type": "ack", "id": frame["id"]}))
        started = time.monotonic()
        # In a thread: the bridge goes on reading (and answering) while the relay stops.
        assert await asyncio.to_thread(relay.stop) == 0
        stopped_in = time.monotonic() - started
        await asyncio.wait_for(bridge.ended.wait(), TIMEOUT)
    finally:
        await bridge.close()
    assert bridge.close_code == CLOSE_SHUTDOWN
    assert warnings_or_worse(relay) == []
    assert harness.leaks() == []
    # Hypercorn's ping task sleeps ping_interval (20 s) before it sees its stream
    # closed; the shutdown does not wait for it, nor for the graceful timeout (5 s).
    assert stopped_in < 3.0


async def test_shutdown_with_a_dead_http2_bridge_connected_is_quiet(relay: RelayProcess) -> None:
    harness = Harness(relay)
    tenant = harness.tenant()
    bridge = await H2Bridge.open(harness, tenant.token, silent=True)
    try:
        assert (await bridge.frame())["type"] == "hello"
        started = time.monotonic()
        assert await asyncio.to_thread(relay.stop) == 0
        stopped_in = time.monotonic() - started
    finally:
        await bridge.close()
    # It never answers the close: reset after the graceful timeout (5 s), not
    # cancelled inside Hypercorn, whose task group then logged a traceback.
    assert warnings_or_worse(relay) == []
    assert stopped_in < 5.0 + 1.0 + SLACK
