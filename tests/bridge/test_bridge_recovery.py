"""Crash recovery with real processes: the relay killed under a bridge, and a bridge killed mid-answer."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.bridge.fakes import FakeChat, FakeLine
from tests.bridge.harness import BridgeProcess, Tenant, bridge_config
from tests.support.bodies import webhook_body
from tests.support.relay import RelayProcess
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration


def replied(line: FakeLine, reply_token: str) -> list[object]:
    return [
        r
        for r in line.delivered()
        if r.path == FakeLine.REPLY and r.body["replyToken"] == reply_token
    ]


def test_relay_killed_and_restarted_bridge_returns_within_the_cap_and_answers(
    tmp_path: Path, fake_line: FakeLine, healthy_chat: FakeChat
) -> None:
    relay = RelayProcess(tmp_path / "relay").start()
    bridge = None
    try:
        tenant = Tenant(relay)
        bridge = BridgeProcess(
            tmp_path / "bridge", bridge_config(relay, tenant, fake_line.url, healthy_chat.url)
        )
        bridge.start().wait_connected()
        relay.kill()
        wait_for(
            lambda: bridge.status().get("connection") in ("backoff", "connecting"), what="the drop"
        )
        relay.restart()
        bridge.wait_connected(hellos=2)
        tenant.post(webhook_body("back?", reply_token="rt-back"))
        wait_for(lambda: replied(fake_line, "rt-back"), what="the reply after the restart")
        waits = [
            e["wait_seconds"]
            for e in bridge.log_events()
            if e.get("event") == "waiting before reconnecting"
        ]
        assert waits, "the bridge never backed off"
        assert all(0.2 <= w <= 1.0 for w in waits)  # backoff_min..backoff_max
    finally:
        if bridge is not None and bridge.proc is not None and bridge.proc.poll() is None:
            bridge.kill()
        relay.stop()


def test_bridge_killed_after_ack_answers_after_restart(
    tmp_path: Path, shared_relay: RelayProcess, fake_line: FakeLine, healthy_chat: FakeChat
) -> None:
    tenant = Tenant(shared_relay)
    bridge = BridgeProcess(
        tmp_path / "bridge", bridge_config(shared_relay, tenant, fake_line.url, healthy_chat.url)
    )
    try:
        bridge.start().wait_connected()
        healthy_chat.delay = 30.0  # the model is still thinking when the bridge dies
        tenant.post(webhook_body("survive this", reply_token="rt-kill"))
        wait_for(healthy_chat.requests, what="the question to reach the model")
        bridge.wait_counter("acked", 1)
        bridge.kill()
        healthy_chat.delay = 0.0
        # Sent while no bridge is connected: the relay keeps it until one acks.
        tenant.post(webhook_body("while you were out", reply_token="rt-offline"))
        bridge.start()
        [reply] = wait_for(
            lambda: replied(fake_line, "rt-kill"), timeout=60, what="the reply after restart"
        )
        assert reply.body["messages"][0]["text"] == "model says: survive this"
        wait_for(lambda: replied(fake_line, "rt-offline"), what="the message sent while down")
        # The first was answered from the bridge's own queue: the job was resumed at start.
        starts = [e for e in bridge.log_events() if e.get("event") == "bridge starting"]
        assert [e["resumed_jobs"] for e in starts] == [0, 1]
        assert len(replied(fake_line, "rt-kill")) == 1
    finally:
        if bridge.proc is not None and bridge.proc.poll() is None:
            bridge.kill()
