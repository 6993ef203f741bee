"""One real ``linerelay bridge`` process, connected to a real relay, through its answer path.

The bridge runs as a subprocess over TLS WebSockets to a real ``linerelay
serve``; LINE's Messaging API and the chat model are small real HTTP servers
(tests/bridge/fakes.py). The scenarios share the process (each uses its own
users and reply tokens) to keep the suite's time down; the config edits
restore what they change.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from tests.bridge.fakes import FakeChat, FakeLine, Recorded
from tests.bridge.harness import (
    FIXTURES,
    BridgeProcess,
    FreezableProxy,
    Tenant,
    assert_no_secrets,
    bridge_config,
    run_bridge_cli,
)
from tests.support.bodies import new_user, webhook_body
from tests.support.relay import RelayProcess
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tenant(shared_relay: RelayProcess) -> Tenant:
    return Tenant(shared_relay)


@pytest.fixture(scope="module")
def bridge(
    shared_relay: RelayProcess,
    tenant: Tenant,
    fake_line: FakeLine,
    fake_chat: FakeChat,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[BridgeProcess]:
    config = bridge_config(shared_relay, tenant, fake_line.url, fake_chat.url)
    config.update(
        model="test-model",
        system_prompt="Answer briefly.",
        chat_timeout=2.0,
        apology_text="Sorry, try later.",
        concurrency=8,
    )
    process = BridgeProcess(tmp_path_factory.mktemp("bridge"), config).start()
    process.wait_connected()
    yield process
    if process.proc is not None and process.proc.poll() is None:
        process.kill()


def replies_to(line: FakeLine, reply_token: str) -> list[Recorded]:
    return [
        r
        for r in line.delivered()
        if r.path == FakeLine.REPLY and r.body["replyToken"] == reply_token
    ]


def pushes_to(line: FakeLine, user: str) -> list[Recorded]:
    return [r for r in line.delivered() if r.path == FakeLine.PUSH and r.body["to"] == user]


def edit_config(bridge: BridgeProcess, **changes: Any) -> None:
    """Edit the config file in place and wait until the bridge has taken it."""
    before = bridge.counter("config_reloads")
    config = {**bridge.config, **changes}
    bridge.write_config({k: v for k, v in config.items() if v is not None})
    bridge.wait_counter("config_reloads", before + 1)


def test_text_message_is_answered_by_reply_after_the_loading_animation(
    bridge: BridgeProcess, tenant: Tenant, fake_line: FakeLine, healthy_chat: FakeChat
) -> None:
    user = new_user()
    tenant.post(webhook_body("what is the time?", reply_token="rt-first", user=user))
    [reply] = wait_for(lambda: replies_to(fake_line, "rt-first"), what="the reply")
    assert reply.body["messages"] == [{"type": "text", "text": "model says: what is the time?"}]
    assert reply.headers["authorization"] == f"Bearer {bridge.config['channel_access_token']}"
    [loading] = [r for r in fake_line.requests(FakeLine.LOADING) if r.body["chatId"] == user]
    assert loading.body["loadingSeconds"] == 20
    [asked] = [
        r
        for r in healthy_chat.requests()
        if r.body["messages"][-1]["content"] == "what is the time?"
    ]
    assert loading.at <= asked.at <= reply.at
    assert asked.headers["authorization"] == f"Bearer {bridge.config['gateway_token']}"
    assert asked.body["model"] == "test-model"
    assert asked.body["messages"][0] == {"role": "system", "content": "Answer briefly."}


def test_status_readout_shows_connection_queue_and_last_error(bridge: BridgeProcess) -> None:
    shown = run_bridge_cli(
        "--config",
        str(bridge.config_file),
        "--state-dir",
        str(bridge.state_dir),
        "--status",
        "--json",
    )
    assert shown.returncode == 0, shown.stderr
    snapshot = json.loads(shown.stdout)
    assert snapshot["connection"] == "connected"
    assert snapshot["tenant"] == bridge.status()["tenant"]
    assert {"queue_depth", "last_error", "counters"} <= set(snapshot)
    human = run_bridge_cli(
        "--config", str(bridge.config_file), "--state-dir", str(bridge.state_dir), "--status"
    )
    assert "connection:   connected" in human.stdout
    assert "queue depth:" in human.stdout


def test_same_webhook_event_id_twice_is_answered_once(
    bridge: BridgeProcess, tenant: Tenant, fake_line: FakeLine, healthy_chat: FakeChat
) -> None:
    user = new_user()
    event_id = "01" + secrets.token_hex(12).upper()
    duplicates = bridge.counter("duplicate_events")
    tenant.post(webhook_body("hi", event_id=event_id, reply_token="rt-dup-a", user=user))
    # LINE's redelivery: the same webhookEventId in new bytes (isRedelivery), so the relay relays it.
    tenant.post(
        webhook_body("hi", event_id=event_id, reply_token="rt-dup-b", user=user, redelivery=True)
    )
    bridge.wait_counter("duplicate_events", duplicates + 1)
    tenant.post(webhook_body("after", reply_token="rt-dup-c", user=user))
    wait_for(lambda: replies_to(fake_line, "rt-dup-c"), what="the later message's reply")
    assert len(replies_to(fake_line, "rt-dup-a")) == 1
    assert replies_to(fake_line, "rt-dup-b") == []
    assert pushes_to(fake_line, user) == []


def test_fixture_bodies_are_survived_and_answering_goes_on(
    bridge: BridgeProcess, tenant: Tenant, fake_line: FakeLine, healthy_chat: FakeChat
) -> None:
    before = dict(bridge.settled_status()["counters"])
    bodies = sorted(FIXTURES.glob("*/*.json"))
    total = 0
    for path in bodies:
        raw = path.read_bytes()  # byte for byte: never re-serialised
        total += len(json.loads(raw)["events"])
        tenant.post(raw)
    tenant.post(webhook_body("still there?", reply_token="rt-sentinel"))
    wait_for(lambda: replies_to(fake_line, "rt-sentinel"), timeout=60, what="the sentinel's reply")
    bridge.wait_counter("webhooks", before.get("webhooks", 0) + len(bodies) + 1)
    after = bridge.settled_status()["counters"]
    bridge.check_alive()

    def grew(name: str) -> int:
        return int(after.get(name, 0) - before.get(name, 0))

    # message-edited.json and webhook-redelivery.json share one webhookEventId.
    assert grew("events_queued") + grew("duplicate_events") == total + 1
    assert grew("duplicate_events") == 1
    assert grew("outcome_crashed") == 0
    assert grew("malformed_bodies") == 0
    skipped = [e for e in bridge.log_events() if e.get("event") == "event skipped"]
    assert any(e.get("reason") == "unknown event type" for e in skipped)
    assert bridge.status()["failed_jobs"] == 0


def test_expired_reply_token_is_answered_by_push(
    bridge: BridgeProcess, tenant: Tenant, fake_line: FakeLine, healthy_chat: FakeChat
) -> None:
    fake_line.expired_reply_tokens.add("rt-stale")
    user = new_user()
    tenant.post(webhook_body("late", reply_token="rt-stale", user=user))
    [push] = wait_for(lambda: pushes_to(fake_line, user), what="the push")
    assert push.body["messages"] == [{"type": "text", "text": "model says: late"}]
    assert push.headers["x-line-retry-key"]
    assert push.headers["authorization"] == f"Bearer {bridge.config['channel_access_token']}"
    assert replies_to(fake_line, "rt-stale") == []


def test_failing_chat_api_gets_the_apology(
    bridge: BridgeProcess, tenant: Tenant, fake_line: FakeLine, healthy_chat: FakeChat
) -> None:
    healthy_chat.status = 500
    tenant.post(webhook_body("anyone?", reply_token="rt-sorry"))
    [reply] = wait_for(lambda: replies_to(fake_line, "rt-sorry"), what="the apology")
    assert reply.body["messages"] == [{"type": "text", "text": "Sorry, try later."}]
    wait_for(lambda: "chat API" in bridge.status()["last_error"], what="the last error")


def test_slow_chat_api_gets_the_apology(
    bridge: BridgeProcess, tenant: Tenant, fake_line: FakeLine, healthy_chat: FakeChat
) -> None:
    healthy_chat.delay = 4.0  # chat_timeout is 2 s
    tenant.post(webhook_body("slow?", reply_token="rt-slow"))
    [reply] = wait_for(lambda: replies_to(fake_line, "rt-slow"), what="the apology")
    assert reply.body["messages"] == [{"type": "text", "text": "Sorry, try later."}]


def test_config_edited_in_place_is_taken_without_restart(
    bridge: BridgeProcess, tenant: Tenant, fake_line: FakeLine, healthy_chat: FakeChat
) -> None:
    assert bridge.proc is not None
    pid = bridge.proc.pid
    old_token = bridge.config["channel_access_token"]
    # A broken edit (an unknown key) is refused and the last good config stays.
    errors = bridge.counter("config_errors")
    bridge.write_config({**bridge.config, "channel_access_token": "acc-broken", "colour": "blue"})
    bridge.wait_counter("config_errors", errors + 1)
    refused = [
        e for e in bridge.log_events() if e.get("event", "").startswith("config edit refused")
    ]
    assert "'colour'" in refused[-1]["why"]
    tenant.post(webhook_body("two", reply_token="rt-edit-1"))
    [first] = wait_for(lambda: replies_to(fake_line, "rt-edit-1"), what="a reply")
    assert first.headers["authorization"] == f"Bearer {old_token}"
    new_token = "acc-rotated-" + secrets.token_hex(8)
    edit_config(bridge, colour=None, channel_access_token=new_token)
    tenant.post(webhook_body("three", reply_token="rt-edit-2"))
    [second] = wait_for(lambda: replies_to(fake_line, "rt-edit-2"), what="a reply")
    assert second.headers["authorization"] == f"Bearer {new_token}"
    bridge.check_alive()
    assert bridge.status()["pid"] == pid
    assert_no_secrets(bridge, old_token, "acc-broken")


def test_signature_mismatch_is_acked_counted_and_not_acted_on(
    bridge: BridgeProcess, tenant: Tenant, fake_line: FakeLine, healthy_chat: FakeChat
) -> None:
    edit_config(bridge, channel_secret="not-the-tenant-secret")
    try:
        failures, acked = bridge.counter("signature_failures"), bridge.counter("acked")
        asked = len(healthy_chat.requests())
        tenant.post(webhook_body("forged?", reply_token="rt-forged"))
        bridge.wait_counter("signature_failures", failures + 1)
        bridge.wait_counter("acked", acked + 1)
        events = [e for e in bridge.log_events() if e.get("security") and "signature" in e["event"]]
        assert events[-1]["level"] == "warning"
    finally:
        edit_config(bridge, channel_secret=tenant.secret)
    assert len(healthy_chat.requests()) == asked
    assert replies_to(fake_line, "rt-forged") == []
    tenant.post(webhook_body("genuine", reply_token="rt-genuine"))
    wait_for(lambda: replies_to(fake_line, "rt-genuine"), what="the genuine message's reply")


def test_rejected_token_is_logged_retried_at_the_cap_then_fixed_by_an_edit(
    bridge: BridgeProcess, tenant: Tenant, fake_line: FakeLine, healthy_chat: FakeChat
) -> None:
    bad = "lrb_wrong-" + secrets.token_hex(8)
    hellos = bridge.counter("hellos")
    rejections = len(
        [e for e in bridge.log_events() if "rejected the bridge token" in e.get("event", "")]
    )
    edit_config(bridge, relay_token=bad)

    def rejected_twice() -> bool:
        events = [
            e for e in bridge.log_events() if "rejected the bridge token" in e.get("event", "")
        ]
        return len(events) >= rejections + 2

    wait_for(rejected_twice, what="two rejected attempts")
    assert bridge.status()["connection"] in ("rejected", "connecting")
    waits = [
        e["wait_seconds"]
        for e in bridge.log_events()
        if e.get("event") == "waiting before reconnecting"
    ]
    assert waits[-1] == 1.0  # backoff_max: a rejected token is not hammered
    edit_config(bridge, relay_token=tenant.token)
    bridge.wait_connected(hellos=hellos + 1)
    tenant.post(webhook_body("fixed", reply_token="rt-fixed"))
    wait_for(lambda: replies_to(fake_line, "rt-fixed"), what="the reply")
    assert_no_secrets(bridge, bad)


def test_token_in_the_url_connects_and_is_never_logged(
    bridge: BridgeProcess,
    tenant: Tenant,
    shared_relay: RelayProcess,
    fake_line: FakeLine,
    healthy_chat: FakeChat,
) -> None:
    hellos = bridge.counter("hellos")
    edit_config(bridge, relay_token=None, relay_url=f"{shared_relay.bridge_url}/{tenant.token}")
    bridge.wait_connected(hellos=hellos + 1)
    tenant.post(webhook_body("via url", reply_token="rt-url"))
    wait_for(lambda: replies_to(fake_line, "rt-url"), what="the reply")
    assert_no_secrets(bridge, tenant.token)
    edit_config(bridge, relay_token=tenant.token, relay_url=shared_relay.bridge_url)
    bridge.wait_connected(hellos=hellos + 2)


def test_half_open_connection_is_dropped_by_ping_timeout_and_replaced(
    bridge: BridgeProcess,
    tenant: Tenant,
    shared_relay: RelayProcess,
    fake_line: FakeLine,
    healthy_chat: FakeChat,
) -> None:
    proxy = FreezableProxy(shared_relay.port)
    keys = ("relay_url", "relay_token", "ping_interval", "ping_timeout")
    original = {k: bridge.config.get(k) for k in keys}
    try:
        hellos = bridge.counter("hellos")
        edit_config(
            bridge,
            relay_url=f"wss://127.0.0.1:{proxy.port}/bridge",
            relay_token=tenant.token,
            ping_interval=0.5,
            ping_timeout=0.5,
        )
        bridge.wait_connected(hellos=hellos + 1)
        proxy.freeze()  # the connection stays open but nothing crosses it any more
        bridge.wait_connected(hellos=hellos + 2)
        tenant.post(webhook_body("through the new connection", reply_token="rt-half-open"))
        wait_for(lambda: replies_to(fake_line, "rt-half-open"), what="the reply")
    finally:
        hellos = bridge.counter("hellos")
        edit_config(bridge, **original)
        bridge.wait_connected(hellos=hellos + 1)
        proxy.close()


def test_tls_and_dns_failures_are_retried_and_recovered(
    bridge: BridgeProcess, tenant: Tenant, fake_line: FakeLine, tmp_path: Path
) -> None:
    stranger = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(stranger))
    original_ca, original_url = bridge.config["ca_file"], bridge.config["relay_url"]
    hellos = bridge.counter("hellos")
    edit_config(bridge, ca_file=str(stranger))
    wait_for(lambda: "TLS failure" in bridge.status().get("last_error", ""), what="the TLS failure")
    assert bridge.status()["connection"] in ("backoff", "connecting")
    edit_config(bridge, ca_file=original_ca, relay_url="wss://relay.invalid/bridge")
    wait_for(lambda: "gaierror" in bridge.status().get("last_error", ""), what="the DNS failure")
    edit_config(bridge, relay_url=original_url)
    bridge.wait_connected(hellos=hellos + 1)


def test_second_bridge_on_the_same_state_dir_is_refused(bridge: BridgeProcess) -> None:
    result = run_bridge_cli(
        "--config", str(bridge.config_file), "--state-dir", str(bridge.state_dir)
    )
    assert result.returncode == 2
    assert "another bridge is running" in result.stderr
    bridge.check_alive()


def test_no_secret_or_token_anywhere_in_the_output(bridge: BridgeProcess, tenant: Tenant) -> None:
    assert bridge.output()
    assert len(tenant.signatures) > 30
    assert_no_secrets(bridge, tenant.secret, tenant.token, *tenant.signatures)


def test_sigterm_lets_the_answer_in_flight_finish_and_exits_cleanly(
    bridge: BridgeProcess, tenant: Tenant, fake_line: FakeLine, healthy_chat: FakeChat
) -> None:
    healthy_chat.delay = 1.5  # shutdown_grace is 5 s
    asked = len(healthy_chat.requests())
    tenant.post(webhook_body("last words", reply_token="rt-term"))
    wait_for(lambda: len(healthy_chat.requests()) > asked, what="the question to reach the model")
    assert bridge.stop() == 0
    assert len(replies_to(fake_line, "rt-term")) == 1
    assert bridge.status()["connection"] == "stopped"
    shown = run_bridge_cli(
        "--config", str(bridge.config_file), "--state-dir", str(bridge.state_dir), "--status"
    )
    assert shown.returncode == 1
    assert "running:      no" in shown.stdout
    assert any(e.get("event") == "bridge stopped" for e in bridge.log_events())


def test_missing_required_key_exits_2_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "b.json"
    path.write_text(
        json.dumps({"relay_token": "x", "channel_secret": "y", "relay_url": "wss://h/bridge"})
    )
    result = run_bridge_cli("--config", str(path), "--state-dir", str(tmp_path / "b.state"))
    assert result.returncode == 2
    assert "channel_access_token" in result.stderr
    assert "openclaw_url" in result.stderr
    assert not (tmp_path / "b.state").exists()


def test_unknown_key_at_start_exits_2_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "b.json"
    path.write_text(json.dumps({"relay_tokn": "x"}))
    result = run_bridge_cli("--config", str(path))
    assert result.returncode == 2
    assert "unknown config key 'relay_tokn'" in result.stderr
