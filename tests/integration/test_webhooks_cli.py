"""``linerelay webhooks list|show|replay|send`` and ``tenant purge`` against a real relay.

The relay is a real ``linerelay serve`` process; bridges are python-websockets
clients on real TLS (tests/integration/helpers.py), and one test runs a real
``linerelay bridge`` process with LINE and the chat model as small HTTP servers
(tests/bridge/fakes.py). Every command also runs on the relay stopped, where it
works on the store file. No output may hold a body unless asked, nor a
signature, a secret or a token.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.bridge.fakes import FakeChat, FakeLine, Recorded
from tests.bridge.harness import BridgeProcess, bridge_config
from tests.bridge.harness import Tenant as BridgeTenant
from tests.integration.helpers import Bridge, Harness, Tenant, post_tags, running_relay, tag_of
from tests.support.relay import LINERELAY, RelayProcess
from tests.support.waiting import async_wait_for, wait_for

pytestmark = pytest.mark.integration

#: Short enough to see an expiry within a test.
MAX_UNACKED_AGE = 4.0
CONFIG = f"""
max_unacked_age = {MAX_UNACKED_AGE}
tenant_poll_interval = 0.5
"""


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    with running_relay(tmp_path_factory, "webhooks-cli", config=CONFIG) as h:
        yield h


def cli(
    relay: RelayProcess, *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """``linerelay ARGS`` for ``relay``'s state dir, finding its listeners as an operator's
    shell would (the environment)."""
    env = {
        **os.environ,
        "LINERELAY_ADMIN_LISTEN": f"127.0.0.1:{relay.admin_port}",
        "LINERELAY_LISTEN": relay.listen,
    }
    return subprocess.run(
        [LINERELAY, *args, "--state-dir", str(relay.state_dir)],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, (result.returncode, result.stdout, result.stderr)
    return result.stdout


def listed(relay: RelayProcess, *args: str) -> list[dict[str, Any]]:
    """``webhooks list --json`` (with ``args``)."""
    webhooks: list[dict[str, Any]] = json.loads(
        ok(cli(relay, "webhooks", "list", "--json", *args))
    )["webhooks"]
    return webhooks


def api_list(harness: Harness, **params: str) -> list[dict[str, Any]]:
    """The admin API's list (cheaper than a CLI run, for waiting on a state)."""
    answer = httpx.get(f"{harness.relay.admin_url}/api/webhooks", params=params, timeout=10)
    assert answer.status_code == 200, answer.text
    webhooks: list[dict[str, Any]] = answer.json()["webhooks"]
    return webhooks


def printed(result: subprocess.CompletedProcess[str]) -> str:
    return result.stdout + result.stderr


async def delivered_pair(harness: Harness) -> tuple[Tenant, list[dict[str, Any]], list[bytes]]:
    """A tenant with two webhooks its bridge took and acked; the frames and bodies."""
    tenant = harness.tenant()
    async with await Bridge.open(harness, tenant.token) as bridge:
        bodies = await post_tags(harness, tenant, "first words", "second words")
        frames = await bridge.take(2)
        await async_wait_for(
            _async(lambda: len(api_list(harness, tenant=tenant.id, state="delivered")) == 2),
            what="both acks recorded",
        )
    for frame in frames:
        harness.remember(frame["signature"])
    return tenant, frames, bodies


def _async(condition: Any) -> Any:
    async def check() -> Any:
        return condition()

    return check


async def test_list_and_show_never_print_a_body_unless_asked(harness: Harness) -> None:
    tenant, frames, bodies = await delivered_pair(harness)
    relay = harness.relay
    records = listed(relay, "--tenant", tenant.id)
    assert [r["id"] for r in records] == [frames[1]["id"], frames[0]["id"]]  # newest first
    for record, body in zip(records, reversed(bodies), strict=True):
        assert record["state"] == "delivered"
        assert record["size"] == len(body)
        assert record["attempts"] == 1
        assert record["acked_at"] >= record["received_at"]
        assert record["event_types"] == ["message"]
    table = ok(cli(relay, "webhooks", "list", "--tenant", tenant.id))
    header, *lines = table.splitlines()
    assert header.split()[:6] == ["ID", "TENANT", "STATE", "RECEIVED", "ATTEMPTS", "SIZE"]
    assert [line.split()[0] for line in lines] == [frames[1]["id"], frames[0]["id"]]
    assert all(" delivered " in line for line in lines)
    shown = cli(relay, "webhooks", "show", frames[0]["id"])
    assert "state:     delivered" in ok(shown)
    with_body = ok(cli(relay, "webhooks", "show", frames[0]["id"], "--body"))
    assert with_body.endswith(bodies[0].decode() + "\n")
    as_json = json.loads(ok(cli(relay, "webhooks", "show", frames[0]["id"], "--body", "--json")))
    assert as_json["body"].encode() == bodies[0]
    for result in (shown, cli(relay, "webhooks", "list", "--json")):
        text = printed(result)
        assert "first words" not in text
        assert not [s for s in harness.sensitive if s in text]
    assert not [s for s in harness.sensitive if s in with_body]


async def test_show_body_on_a_running_relay_is_logged_by_the_relay_never_the_body(
    harness: Harness,
) -> None:
    tenant, frames, _ = await delivered_pair(harness)
    ok(cli(harness.relay, "webhooks", "show", frames[1]["id"]))
    assert frames[1]["id"] not in [
        r["delivery"] for r in harness.log_events("api: webhook body shown")
    ]
    ok(cli(harness.relay, "webhooks", "show", frames[1]["id"], "--body"))
    (shown,) = [
        r for r in harness.log_events("api: webhook body shown") if r["delivery"] == frames[1]["id"]
    ]
    assert shown["tenant"] == tenant.id
    assert shown["client"] == "127.0.0.1"
    assert "second words" not in json.dumps(shown)
    assert "second words" not in harness.relay.output()


@pytest.mark.parametrize("protocol", [1, 2])
async def test_a_replay_reaches_the_bridge_byte_identical_with_a_new_id(
    harness: Harness, protocol: int
) -> None:
    tenant, frames, _ = await delivered_pair(harness)
    relay = harness.relay
    async with await Bridge.open(harness, tenant.token, protocol=protocol) as bridge:
        result = cli(relay, "webhooks", "replay", frames[0]["id"], frames[1]["id"])
        lines = ok(result).splitlines()
        pairs = [line.split(" -> ") for line in lines]
        assert [old for old, _ in pairs] == [frames[0]["id"], frames[1]["id"]]
        if protocol == 1:
            got = await bridge.take(2)
        else:
            got = [item for batch in await bridge.items(2) for item in batch]
            await bridge.ack_ids(*(item["id"] for item in got))
    assert [g["id"] for g in got] == [new for _, new in pairs]
    for replay, original in zip(got, frames, strict=True):
        assert replay["replay"] is True
        assert replay["id"] != original["id"]
        assert (replay["body"], replay["signature"]) == (original["body"], original["signature"])
        assert replay["attempt"] == 1
    records = {r["id"]: r for r in listed(relay, "--tenant", tenant.id)}
    assert {records[new]["replay_of"] for _, new in pairs} == {f["id"] for f in frames}
    assert "replay" not in frames[0]


async def test_unknown_ids_exit_2_naming_them_and_nothing_is_replayed(harness: Harness) -> None:
    tenant, frames, _ = await delivered_pair(harness)
    relay = harness.relay
    shown = cli(relay, "webhooks", "show", "d-000000000000000000000bad")
    assert shown.returncode == 2
    assert "no webhook d-000000000000000000000bad" in shown.stderr
    assert shown.stdout == ""
    before = len(listed(relay, "--tenant", tenant.id))
    async with await Bridge.open(harness, tenant.token) as bridge:
        refused = cli(relay, "webhooks", "replay", frames[0]["id"], "d-nope", "../../x")
        assert refused.returncode == 2
        assert "d-nope" in refused.stderr
        assert "nothing was replayed" in refused.stderr
        assert await bridge.silent_for(1.0)
    assert len(listed(relay, "--tenant", tenant.id)) == before
    bad_state = cli(relay, "webhooks", "list", "--state", "lost")
    assert bad_state.returncode == 2


async def test_an_expired_webhook_stays_listed_and_is_replayed_to_a_later_bridge(
    harness: Harness,
) -> None:
    tenant = harness.tenant()
    (body,) = await post_tags(harness, tenant, "nobody listens")
    relay = harness.relay
    await async_wait_for(
        _async(lambda: api_list(harness, tenant=tenant.id, state="expired")),
        what="the webhook to expire",
    )
    (expired,) = listed(relay, "--tenant", tenant.id, "--state", "expired")
    assert expired["acked_at"] is None
    # When it expired: its retention (retain_expired) counts from then.
    assert expired["expired_at"] >= expired["received_at"]
    assert expired["attempts"] == 0
    assert harness.log_events("webhook expired unacked")
    async with await Bridge.open(harness, tenant.token) as bridge:
        (line,) = ok(cli(relay, "webhooks", "replay", expired["id"])).splitlines()
        (replay,) = await bridge.take(1)
    assert line == f"{expired['id']} -> {replay['id']}"
    assert (replay["replay"], replay["body"].encode()) == (True, body)
    assert tag_of(replay) == "nobody listens"


async def test_purge_erases_a_tenants_webhooks_on_a_running_relay(harness: Harness) -> None:
    tenant, _, _ = await delivered_pair(harness)
    other, other_frames, _ = await delivered_pair(harness)
    relay = harness.relay
    await post_tags(harness, tenant, "still queued")
    refused = cli(relay, "tenant", "purge", tenant.id, "--yes")
    assert refused.returncode == 2
    assert "1 queued webhooks" in refused.stderr
    assert "--include-queued" in refused.stderr
    unconfirmed = cli(relay, "tenant", "purge", tenant.id, "--include-queued", stdin="")
    assert unconfirmed.returncode == 2
    assert "--yes" in unconfirmed.stderr
    assert len(listed(relay, "--tenant", tenant.id)) == 3
    done = cli(relay, "tenant", "purge", tenant.id, "--include-queued", "--yes")
    assert "1 of them still queued" in ok(done)
    assert listed(relay, "--tenant", tenant.id) == []
    async with await Bridge.open(harness, tenant.token) as bridge:
        assert await bridge.silent_for(1.0)
    assert [r["id"] for r in listed(relay, "--tenant", other.id)] == [
        f["id"] for f in reversed(other_frames)
    ]
    assert cli(relay, "tenant", "purge", "no-such-tenant", "--yes").returncode == 2


async def test_send_posts_a_signed_sample_that_reaches_the_bridge(harness: Harness) -> None:
    tenant = harness.tenant()
    relay = harness.relay
    async with await Bridge.open(harness, tenant.token) as bridge:
        sent = cli(relay, "webhooks", "send", "--tenant", tenant.id, "--text", "hello from ops")
        (frame,) = await bridge.take(1)
    output = printed(sent)
    assert sent.returncode == 0, output
    assert f"/webhook/{tenant.id} -> 200" in output
    body = frame["body"].encode()
    expected = hmac.new(tenant.secret.encode(), body, hashlib.sha256).digest()
    assert base64.b64decode(frame["signature"]) == expected
    event = json.loads(body)["events"][0]
    assert (event["type"], event["message"]["text"]) == ("message", "hello from ops")
    assert event["webhookEventId"] in output
    harness.remember(frame["signature"])
    assert not [s for s in harness.sensitive if s in output]
    unknown = cli(relay, "webhooks", "send", "--tenant", "no-such-tenant")
    assert unknown.returncode == 2
    # Signed for this tenant, posted as another: the relay answers 401, the command fails.
    other = harness.tenant()
    wrong = cli(relay, "webhooks", "send", "--tenant", tenant.id, "--url", other.url)
    assert wrong.returncode == 1
    assert "-> 401" in wrong.stdout


def test_a_real_bridge_answers_a_sample_and_its_replay_and_says_it_saw_it(
    harness: Harness, tmp_path: Path
) -> None:
    relay = harness.relay
    tenant = BridgeTenant(relay)
    harness.sensitive.update((tenant.secret, tenant.token))
    user = "U" + "1" * 32
    with FakeLine() as line, FakeChat() as chat:
        bridge = BridgeProcess(
            tmp_path / "bridge", bridge_config(relay, tenant, line.url, chat.url)
        )
        bridge.start()
        try:
            bridge.wait_connected()
            ok(cli(relay, "webhooks", "send", "--tenant", tenant.name, "--user", user))

            def answers() -> list[Recorded]:
                return line.delivered()  # this test's own fake LINE: every answer is ours

            wait_for(lambda: len(answers()) == 1, what="the answer to the sample")
            (record,) = listed(relay, "--tenant", tenant.name)
            wait_for(
                lambda: api_list(harness, tenant=tenant.name)[0]["state"] == "delivered",
                what="the bridge's ack",
            )
            ok(cli(relay, "webhooks", "replay", record["id"]))
            # The replay's reply token was used: its answer is pushed to the user.
            wait_for(lambda: len(answers()) == 2, what="the answer to the replay")
            assert [a.path for a in answers()] == [FakeLine.REPLY, FakeLine.PUSH]
            assert answers()[1].body["to"] == user
            told = [
                e
                for e in bridge.log_events()
                if e.get("event") == "replay of an already seen event: processing it again"
            ]
            assert len(told) == 1
        finally:
            assert bridge.stop() == 0


def test_every_command_works_on_a_stopped_relay(tmp_path: Path) -> None:
    relay = RelayProcess(tmp_path / "state").start()
    try:
        harness = Harness(relay)
        tenant = harness.tenant()

        async def deliver_one_queue_one() -> tuple[dict[str, Any], list[bytes]]:
            async with await Bridge.open(harness, tenant.token) as bridge:
                bodies = await post_tags(harness, tenant, "acked before the stop")
                (frame,) = await bridge.take(1)
                await async_wait_for(
                    _async(lambda: api_list(harness, state="delivered")), what="the ack"
                )
            bodies += await post_tags(harness, tenant, "queued at the stop")
            return frame, bodies

        frame, bodies = asyncio.run(deliver_one_queue_one())
    finally:
        assert relay.stop() == 0
    records = listed(relay, "--tenant", tenant.id)
    assert [r["state"] for r in records] == ["queued", "delivered"]
    shown = cli(relay, "webhooks", "show", frame["id"], "--body")
    assert ok(shown).endswith(bodies[0].decode() + "\n")
    # No relay saw that read: the command logs it itself (stderr), never the body.
    (logged,) = [json.loads(line) for line in shown.stderr.splitlines()]
    assert logged["event"] == "cli: webhook body shown"
    assert (logged["delivery"], logged["tenant"]) == (frame["id"], tenant.id)
    assert logged["user"]
    assert "acked before the stop" not in shown.stderr
    assert cli(relay, "webhooks", "show", frame["id"]).stderr == ""
    assert cli(relay, "webhooks", "show", "d-nope").returncode == 2
    replayed = cli(relay, "webhooks", "replay", frame["id"])
    (pair, note) = ok(replayed).splitlines()
    new_id = pair.split(" -> ")[1]
    assert "not running" in note
    assert cli(relay, "webhooks", "replay", frame["id"], "d-nope").returncode == 2
    assert cli(relay, "tenant", "purge", tenant.id, "--yes").returncode == 2
    assert len(listed(relay)) == 3

    relay.start()
    try:

        async def bridge_gets_the_queue_and_the_replay() -> list[dict[str, Any]]:
            async with await Bridge.open(harness, tenant.token) as bridge:
                return await bridge.take(2)

        got = asyncio.run(bridge_gets_the_queue_and_the_replay())
    finally:
        assert relay.stop() == 0
    assert [tag_of(g) for g in got] == ["queued at the stop", "acked before the stop"]
    assert [g.get("replay", False) for g in got] == [False, True]
    assert got[1]["id"] == new_id
    ok(cli(relay, "tenant", "purge", tenant.id, "--include-queued", "--yes"))
    assert listed(relay) == []
    for value in harness.sensitive:
        assert value not in relay.output()


async def test_retention_prunes_delivered_and_expired_webhooks_by_their_own_horizons(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    config = """
dedupe_window = 1.0
retain_delivered = 1.0
retain_expired = 6.0
max_unacked_age = 1.0
tenant_poll_interval = 0.2
"""
    with running_relay(tmp_path_factory, "retention", config=config) as short:
        tenant = short.tenant()
        async with await Bridge.open(short, tenant.token) as bridge:
            await post_tags(short, tenant, "delivered")
            (frame,) = await bridge.take(1)
        short.remember(frame["signature"])
        lonely = short.tenant()
        await post_tags(short, lonely, "expires")
        # Delivered: gone about a second after its ack.
        await async_wait_for(
            _async(lambda: not api_list(short, tenant=tenant.id)), what="the delivered one pruned"
        )
        # Expired after a second, then kept six more: still there when the other went.
        (expired,) = api_list(short, tenant=lonely.id)
        await async_wait_for(
            _async(lambda: api_list(short, tenant=lonely.id, state="expired")),
            what="the other to expire",
        )
        await async_wait_for(
            _async(lambda: not api_list(short, tenant=lonely.id)), what="the expired one pruned"
        )
        assert cli(short.relay, "webhooks", "show", expired["id"]).returncode == 2


async def test_retention_counts_from_a_late_ack_and_from_an_expiry_at_start(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    config = """
dedupe_window = 1.0
retain_delivered = 2.0
retain_expired = 3.0
max_unacked_age = {age}
tenant_poll_interval = 0.2
"""
    with running_relay(tmp_path_factory, "late", config=config.format(age=4.0)) as h:
        # Acked 3 s after receipt (the bridge was away): kept 2 s from the ack, where
        # counting from receipt would prune it at the next sweep (every second here).
        tenant = h.tenant()
        await post_tags(h, tenant, "acked late")
        await asyncio.sleep(3.0)
        async with await Bridge.open(h, tenant.token) as bridge:
            (frame,) = await bridge.take(1)
        h.remember(frame["signature"])
        await async_wait_for(
            _async(lambda: api_list(h, tenant=tenant.id, state="delivered")), what="the ack"
        )
        acked = time.monotonic()
        await async_wait_for(
            _async(lambda: not api_list(h, tenant=tenant.id)), what="the late one pruned"
        )
        assert time.monotonic() - acked >= 1.5
        # Received, then the relay stopped for longer than max_unacked_age (1 s from
        # the start on) and retain_expired together: it expires it at its start, and
        # keeps it retain_expired from then, to be found and replayed.
        lonely = h.tenant()
        await post_tags(h, lonely, "expires at the start")
        (queued,) = api_list(h, tenant=lonely.id)
        assert h.relay.stop() == 0
        assert h.relay.config_file is not None
        h.relay.config_file.write_text(config.format(age=1.0))
        await asyncio.sleep(max(0.0, queued["received_at"] / 1000 + 4.5 - time.time()))
        h.relay.start()
        await async_wait_for(
            _async(lambda: api_list(h, tenant=lonely.id, state="expired")),
            what="the webhook expired at the start, still listed",
        )
        expired = time.monotonic()
        await async_wait_for(
            _async(lambda: not api_list(h, tenant=lonely.id)), what="the expired one pruned"
        )
        assert time.monotonic() - expired >= 2.0
        assert cli(h.relay, "webhooks", "show", queued["id"]).returncode == 2
