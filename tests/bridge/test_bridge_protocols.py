"""``linerelay bridge`` negotiates protocol 2 and falls back to protocol 1.

A real bridge process against a relay from before protocol 2 (the fake of
tests/support/fake_relay.py, which selects no subprotocol), against the same
fake speaking protocol 2 (where every frame the bridge sends is seen), and
against the real relay. LINE and the chat model are tests/bridge/fakes.py.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from appliance.protocol import SUBPROTOCOL_V2
from tests.bridge.fakes import FakeChat, FakeLine
from tests.bridge.harness import (
    BridgeProcess,
    Tenant,
    assert_no_secrets,
    bridge_config,
    new_user,
    text_body,
    wait_for,
)
from tests.integration.helpers import Harness
from tests.support.fake_relay import FakeRelay
from tests.support.relay import RelayProcess

pytestmark = pytest.mark.integration


def config_for(relay: FakeRelay, secret: str, line: FakeLine, chat: FakeChat) -> dict[str, Any]:
    """A bridge config for the fake relay's tenant (plain ws://, no CA)."""
    return {
        "relay_token": relay.token,
        "channel_secret": secret,
        "channel_access_token": "acc-" + secrets.token_hex(8),
        "relay_url": relay.url,
        "openclaw_url": chat.url,
        "line_api_base": line.url,
        "backoff_min": 0.2,
        "backoff_max": 1.0,
        "shutdown_grace": 5,
    }


def replied(line: FakeLine, reply_tokens: list[str]) -> bool:
    """Whether every one of ``reply_tokens`` got its answer from the bridge."""
    answered = {r.body["replyToken"] for r in line.delivered() if r.path == FakeLine.REPLY}
    return answered >= set(reply_tokens)


def connected_logs(bridge: BridgeProcess) -> list[dict[str, Any]]:
    return [e for e in bridge.log_events() if e.get("event") == "connected to the relay"]


def bodies(count: int, tag: str) -> tuple[list[bytes], list[str]]:
    """``count`` one-event webhook bodies from different users, and their reply tokens."""
    tokens = [f"rt-{tag}-{i}-{secrets.token_hex(4)}" for i in range(count)]
    made = [text_body(f"{tag} {i}", reply_token=t, user=new_user()) for i, t in enumerate(tokens)]
    return made, tokens


def test_against_a_relay_speaking_only_protocol_1_the_bridge_acks_each_webhook_alone(
    fake_line: FakeLine, healthy_chat: FakeChat, tmp_path: Path
) -> None:
    secret, token = secrets.token_hex(16), "lrb_" + secrets.token_urlsafe(32)
    with FakeRelay("old-shop", token, protocol_2=False) as relay:
        made, reply_tokens = bodies(3, "old")
        ids = [relay.queue(body, secret) for body in made]
        bridge = BridgeProcess(
            tmp_path / "bridge", config_for(relay, secret, fake_line, healthy_chat)
        )
        bridge.start()
        try:
            bridge.wait_counter("acked", 3)
            wait_for(lambda: replied(fake_line, reply_tokens), what="the three replies")
            (session,) = relay.sessions
            assert session.offered == [SUBPROTOCOL_V2]
            assert session.selected is None
            # Protocol 1 exactly: one ack per webhook, by "id", in order of delivery.
            assert relay.received() == [{"type": "ack", "id": i} for i in ids]
            assert relay.unacked() == []
            assert bridge.status()["protocol"] == 1
            assert bridge.counter("ack_frames") == 3
            assert [e["protocol"] for e in connected_logs(bridge)] == [1]
        finally:
            assert bridge.stop() == 0
    assert_no_secrets(bridge, token, secret)


def test_when_the_relay_selects_protocol_2_a_batch_is_acked_in_one_frame_after_one_commit(
    fake_line: FakeLine, healthy_chat: FakeChat, tmp_path: Path
) -> None:
    secret, token = secrets.token_hex(16), "lrb_" + secrets.token_urlsafe(32)
    with FakeRelay("new-shop", token, protocol_2=True) as relay:
        made, reply_tokens = bodies(4, "new")
        ids = [relay.queue(body, secret) for body in made[:2]]
        # A forged webhook in the middle is acknowledged with the rest, never acted on.
        ids.append(relay.queue(text_body("forged"), "not-the-channel-secret"))
        ids += [relay.queue(body, secret) for body in made[2:]]
        bridge = BridgeProcess(
            tmp_path / "bridge", config_for(relay, secret, fake_line, healthy_chat)
        )
        bridge.start()
        try:
            bridge.wait_counter("acked", 5)
            wait_for(lambda: replied(fake_line, reply_tokens), what="the four replies")
            (session,) = relay.sessions
            assert (session.selected, session.protocol) == (SUBPROTOCOL_V2, 2)
            assert relay.received() == [{"type": "ack", "ids": ids}]
            assert bridge.status()["protocol"] == 2
            assert bridge.counter("ack_frames") == 1
            assert bridge.counter("signature_failures") == 1
            assert bridge.counter("events_queued") == 4
            assert [e["protocol"] for e in connected_logs(bridge)] == [2]
        finally:
            assert bridge.stop() == 0
    assert_no_secrets(bridge, token, secret)


def test_a_batch_its_inbox_cannot_commit_is_nacked_one_by_one_and_acked_whole_once_it_can(
    fake_line: FakeLine, healthy_chat: FakeChat, tmp_path: Path
) -> None:
    secret, token = secrets.token_hex(16), "lrb_" + secrets.token_urlsafe(32)
    with FakeRelay("busy-shop", token, protocol_2=True) as relay:
        bridge = BridgeProcess(
            tmp_path / "bridge", config_for(relay, secret, fake_line, healthy_chat)
        )
        bridge.start()
        try:
            bridge.wait_connected()
            made, reply_tokens = bodies(3, "locked")
            ids = [relay.queue(body, secret) for body in made]
            # Another writer holds the inbox: the bridge's commit fails after its busy timeout.
            holder = sqlite3.connect(bridge.state_dir / "inbox.sqlite3", isolation_level=None)
            try:
                holder.execute("BEGIN IMMEDIATE")
                relay.flush()
                bridge.wait_counter("nacked", 3)
            finally:
                holder.execute("ROLLBACK")
                holder.close()
            assert relay.received() == [
                {"type": "nack", "id": i, "reason": "bridge queue unavailable"} for i in ids
            ]
            assert bridge.counter("acked") == 0
            # Redelivered on the next connection, the batch commits and is acked in one frame.
            relay.drop()
            bridge.wait_counter("acked", 3)
            wait_for(lambda: replied(fake_line, reply_tokens), what="the three replies")
            assert relay.received()[3:] == [{"type": "ack", "ids": ids}]
            assert relay.unacked() == []
        finally:
            assert bridge.stop() == 0
    assert_no_secrets(bridge, token, secret)


def test_against_the_real_relay_the_bridge_negotiates_protocol_2_and_acks_in_batches(
    shared_relay: RelayProcess,
    fake_line: FakeLine,
    healthy_chat: FakeChat,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    tenant = Tenant(shared_relay)
    made, reply_tokens = bodies(6, "batched")
    # Queued while no bridge is connected: the relay sends them as one batch at the hello.
    for body in made:
        tenant.post(body)
    config = bridge_config(shared_relay, tenant, fake_line.url, healthy_chat.url)
    bridge = BridgeProcess(tmp_path_factory.mktemp("bridge"), config).start()
    try:
        bridge.wait_counter("acked", 6)
        wait_for(lambda: replied(fake_line, reply_tokens), what="the six replies")
        assert bridge.status()["protocol"] == 2
        assert 1 <= bridge.counter("ack_frames") < 6
        # Live traffic on the same connection is acked too.
        more, more_tokens = bodies(2, "live")
        for body in more:
            tenant.post(body)
        bridge.wait_counter("acked", 8)
        wait_for(lambda: replied(fake_line, more_tokens), what="the two live replies")
        assert bridge.counter("nacked") == 0
        # Every id of every batch ack counted at the relay: nothing is left unacked.
        relay = Harness(shared_relay)
        wait_for(
            lambda: relay.metric("linerelay_queue_depth", tenant=tenant.name) == 0,
            what="the relay's queue of the tenant to empty",
        )
    finally:
        assert bridge.stop() == 0
    relay_connected = [
        json.loads(line)
        for line in shared_relay.output().splitlines()
        if '"bridge connected"' in line and tenant.name in line
    ]
    assert [record["protocol"] for record in relay_connected] == [2]
    assert [e["protocol"] for e in connected_logs(bridge)] == [2]
    assert_no_secrets(bridge, *tenant.signatures)
