"""A real bridge through rotations done with the real CLI on a real relay.

A token rotated with a grace: the bridge stays connected until the grace
ends, is then closed with 4401, says "token revoked" at error level, and
waits ``backoff_max`` between attempts instead of hammering the relay; a new
token in its config brings it back at once. A channel secret rotated with a
grace: webhooks LINE signed with the old secret, accepted by the relay in
the grace, are still answered by a bridge given ``previous_channel_secret``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.bridge.fakes import FakeChat, FakeLine, Recorded
from tests.bridge.harness import (
    BridgeProcess,
    Tenant,
    assert_no_secrets,
    bridge_config,
    post_webhook,
)
from tests.support.bodies import new_user, webhook_body
from tests.support.relay import RelayProcess, linerelay
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration

#: Long enough for the checks made inside it on a loaded machine.
GRACE_SECONDS = 12
BACKOFF_MAX = 3.0


@pytest.fixture
def bridge(
    shared_relay: RelayProcess,
    fake_line: FakeLine,
    fake_chat: FakeChat,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[BridgeProcess, Tenant]]:
    tenant = Tenant(shared_relay)
    config = bridge_config(shared_relay, tenant, fake_line.url, fake_chat.url)
    config.update(backoff_min=0.5, backoff_max=BACKOFF_MAX)
    process = BridgeProcess(tmp_path_factory.mktemp("bridge"), config).start()
    process.wait_connected()
    yield process, tenant
    if process.proc is not None and process.proc.poll() is None:
        process.kill()


def cli(relay: RelayProcess, *args: str) -> dict[str, Any]:
    result = linerelay(*args, "--json", state_dir=relay.state_dir)
    printed: dict[str, Any] = json.loads(result.stdout)
    return printed


def auth_failures(relay: RelayProcess) -> float:
    return relay.metric("linerelay_bridge_auth_failures_total")


def replies_to(line: FakeLine, reply_token: str) -> list[Recorded]:
    return [
        r
        for r in line.delivered()
        if r.path == FakeLine.REPLY and r.body["replyToken"] == reply_token
    ]


def test_a_rotated_token_serves_through_its_grace_then_the_bridge_says_token_revoked(
    shared_relay: RelayProcess,
    bridge: tuple[BridgeProcess, Tenant],
    fake_line: FakeLine,
) -> None:
    process, tenant = bridge
    rotated = cli(
        shared_relay, "tenant", "rotate-token", tenant.name, "--grace", str(GRACE_SECONDS)
    )
    until = rotated["token_grace_until"] / 1000
    # In the grace: the bridge on the old token keeps its connection and its webhooks.
    tenant.post(webhook_body("still served", reply_token="rt-grace", user=new_user()))
    wait_for(lambda: replies_to(fake_line, "rt-grace"), "the reply inside the grace")
    assert time.time() < until, "the machine was too slow to check inside the grace"
    assert process.counter("hellos") == 1
    # The grace ends: the relay closes it with 4401, without any CLI call.
    revoked = wait_for(
        lambda: [e for e in process.log_events() if e.get("event", "").startswith("token revoked")],
        "the bridge's 'token revoked' line",
        timeout=GRACE_SECONDS + 30,
    )
    assert time.time() >= until
    assert revoked[0]["level"] == "error"
    assert "4401" in revoked[0]["event"]
    assert "relay_token" in revoked[0]["event"]
    wait_for(lambda: process.status().get("connection") == "rejected", "status 'rejected'")
    assert "token revoked" in process.status()["last_error"]
    # It keeps trying with the old token, but at backoff_max, not in a loop.
    first = wait_for(lambda: auth_failures(shared_relay), "a first attempt refused with 401")
    started = time.monotonic()
    time.sleep(2 * BACKOFF_MAX + 1)
    attempts = auth_failures(shared_relay) - first
    elapsed = time.monotonic() - started
    assert attempts <= elapsed / BACKOFF_MAX + 1
    # The new token in its config: it reconnects at once, without waiting out the cap.
    process.write_config({**process.config, "relay_token": rotated["token"]})
    process.wait_connected(hellos=2, timeout=BACKOFF_MAX * 3)
    assert_no_secrets(process, rotated["token"])


def test_without_a_grace_the_bridge_is_closed_at_once_and_says_token_revoked(
    shared_relay: RelayProcess, bridge: tuple[BridgeProcess, Tenant]
) -> None:
    process, tenant = bridge
    cli(shared_relay, "tenant", "rotate-token", tenant.name)
    wait_for(
        lambda: any(e.get("event", "").startswith("token revoked") for e in process.log_events()),
        "the bridge's 'token revoked' line",
    )
    assert not [e for e in process.log_events() if "connection lost (4401)" in str(e)]


def test_webhooks_signed_with_the_old_secret_in_its_grace_are_answered_by_the_bridge(
    shared_relay: RelayProcess,
    bridge: tuple[BridgeProcess, Tenant],
    fake_line: FakeLine,
    fake_chat: FakeChat,
) -> None:
    process, tenant = bridge
    old = tenant.secret
    new = "0123456789abcdef" + old[16:][::-1]
    assert new != old
    # What LINE signed before the reissue, queued at the relay while the bridge is away.
    process.stop()
    post_webhook(
        shared_relay,
        tenant.name,
        old,
        webhook_body("signed before", reply_token="rt-before", user=new_user()),
    )
    rotated = cli(
        shared_relay,
        "tenant",
        "rotate-secret",
        tenant.name,
        "--channel-secret",
        new,
        "--grace",
        "600",
    )
    assert rotated["secret_grace_until"] > time.time() * 1000
    # LINE retrying with the old signature, and signing anew with the new secret.
    post_webhook(
        shared_relay,
        tenant.name,
        old,
        webhook_body("retried", reply_token="rt-retried", user=new_user()),
    )
    post_webhook(
        shared_relay,
        tenant.name,
        new,
        webhook_body("signed after", reply_token="rt-after", user=new_user()),
    )
    # The bridge as the operator updates it: the new secret, and the old one as previous.
    process.write_config({**process.config, "channel_secret": new, "previous_channel_secret": old})
    process.start().wait_connected(hellos=1)
    for token in ("rt-before", "rt-retried", "rt-after"):
        wait_for(lambda token=token: replies_to(fake_line, token), f"the reply to {token}")
    assert process.counter("signature_failures") == 0
    assert_no_secrets(process, old, new)
