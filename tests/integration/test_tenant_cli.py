"""Tenants (PROTOCOL.md §3) through the real ``linerelay tenant`` CLI while a relay runs."""

from __future__ import annotations

import json
import secrets
import sqlite3
import time
from collections.abc import Iterator

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

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
    webhook_body,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    with running_relay(tmp_path_factory, "tenants") as h:
        yield h


@pytest.fixture(scope="module")
def slow_poll(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    """A relay that polls the tenants file only every 30 s (a valid setting)."""
    with running_relay(tmp_path_factory, "slowpoll", config="tenant_poll_interval = 30.0\n") as h:
        yield h


def tenants_file(harness: Harness) -> list[tuple[object, ...]]:
    """Every row of the relay's real tenants file, to show a command changed nothing."""
    db = sqlite3.connect(harness.relay.state.tenants)
    try:
        return db.execute("SELECT * FROM tenants ORDER BY id").fetchall()
    finally:
        db.close()


def add_with_cli(harness: Harness, *extra: str, stdin: str | None = None) -> Tenant:
    """``linerelay tenant add ID --json EXTRA`` for a new id; must succeed."""
    tenant_id = f"cli-{secrets.token_hex(5)}"
    result = harness.cli("tenant", "add", tenant_id, *extra, "--json", stdin=stdin)
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    assert printed["tenant"] == tenant_id
    assert printed["webhook_url"].endswith(f"/webhook/{tenant_id}")
    assert printed["token"].startswith("lrb_")
    harness.remember(printed["token"])
    return Tenant(tenant_id, "", printed["token"], harness.relay.webhook_url(tenant_id))


async def test_added_tenant_is_served_at_once_without_a_restart(harness: Harness) -> None:
    secret = harness.remember(secrets.token_hex(16))
    tenant = add_with_cli(harness, "--channel-secret", secret)
    tenant = Tenant(tenant.id, secret, tenant.token, tenant.url)
    # The token is stored hashed only (in the file or its write-ahead log); the secret is there.
    stored = b"".join(path.read_bytes() for path in harness.relay.state_dir.glob("tenants.db*"))
    assert secret.encode() in stored
    assert tenant.token.encode() not in stored
    async with async_client(harness) as client:
        response = await post(client, harness, tenant, webhook_body("first"))
    assert response.status_code == 200
    async with await Bridge.open(harness, tenant.token) as bridge:
        frame = await bridge.webhook()
        assert tag_of(frame) == "first"
        await bridge.ack(frame)


async def test_channel_secret_read_from_stdin_is_used_to_check_signatures(
    harness: Harness,
) -> None:
    secret = harness.remember(secrets.token_hex(16))
    added = add_with_cli(harness, "--channel-secret-file", "-", stdin=secret + "\n")
    tenant = Tenant(added.id, secret, added.token, added.url)
    async with async_client(harness) as client:
        assert (await post(client, harness, tenant, webhook_body("stdin"))).status_code == 200
        wrong = Tenant(tenant.id, secret + "x", "", tenant.url)
        assert (await post(client, harness, wrong, webhook_body("forged"))).status_code == 401


async def test_removed_tenant_gets_404_and_its_bridge_is_closed(harness: Harness) -> None:
    tenant = harness.tenant()
    async with await Bridge.open(harness, tenant.token) as bridge:
        result = harness.cli("tenant", "remove", tenant.id)
        assert result.returncode == 0, result.stderr
        with pytest.raises(ConnectionClosed) as closed:
            await bridge.frame(TIMEOUT)
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 4404
    async with async_client(harness) as client:
        response = await post(client, harness, tenant, webhook_body("gone"))
    assert response.status_code == 404
    assert response.json() == {"error": "unknown_tenant"}
    with pytest.raises(InvalidStatus) as refused:
        await Bridge.open(harness, tenant.token)
    assert refused.value.response.status_code == 401


async def test_rotated_token_replaces_the_old_one_and_disconnects_its_bridge(
    harness: Harness,
) -> None:
    tenant = harness.tenant()
    async with await Bridge.open(harness, tenant.token) as bridge:
        result = harness.cli("tenant", "rotate-token", tenant.id, "--json")
        assert result.returncode == 0, result.stderr
        new_token = harness.remember(json.loads(result.stdout)["token"])
        assert new_token != tenant.token
        with pytest.raises(ConnectionClosed) as closed:
            await bridge.frame(TIMEOUT)
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 4401
    with pytest.raises(InvalidStatus) as refused:
        await Bridge.open(harness, tenant.token)
    assert refused.value.response.status_code == 401
    async with await Bridge.open(harness, new_token) as bridge:
        assert bridge.hello["tenant"] == tenant.id
        async with async_client(harness) as client:
            # Webhooks are still signed with the unchanged channel secret.
            assert (await post(client, harness, tenant, webhook_body("new"))).status_code == 200
        frame = await bridge.webhook()
        assert tag_of(frame) == "new"
        await bridge.ack(frame)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("add", "Shop_1", "--channel-secret", "abc"), "invalid tenant id"),
        (("add", "shop.1", "--channel-secret", "abc"), "invalid tenant id"),
        (("add", "new-shop", "--channel-secret", ""), "channel secret is empty"),
        (("add", "new-shop", "--channel-secret", "   "), "channel secret is empty"),
        (("add", "new-shop", "--channel-secret", "two words"), "spaces"),
        (("add", "new-shop", "--channel-secret-file", "/nonexistent/secret"), "cannot read"),
        (("remove", "no-such-shop"), "no tenant"),
        (("rotate-token", "no-such-shop"), "no tenant"),
        (("rotate-token", "Bad_Id"), "invalid tenant id"),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, tuple) else None,
)
def test_bad_input_exits_2_with_a_clear_message_and_changes_nothing(
    harness: Harness, args: tuple[str, ...], message: str
) -> None:
    harness.tenant()  # never an empty file: "nothing changed" must be able to fail
    before = tenants_file(harness)
    result = harness.cli("tenant", *args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert "lrb_" not in result.stdout
    assert tenants_file(harness) == before


def test_adding_an_existing_tenant_exits_2_and_keeps_its_secret_and_token(
    harness: Harness,
) -> None:
    tenant = harness.tenant()
    before = tenants_file(harness)
    other = harness.remember(secrets.token_hex(16))
    result = harness.cli("tenant", "add", tenant.id, "--channel-secret", other, "--json")
    assert result.returncode == 2
    assert "already exists" in result.stderr
    assert result.stdout == ""
    assert tenants_file(harness) == before
    body = webhook_body("still-mine")
    response = httpx.post(
        tenant.url, content=body, headers=harness.headers(tenant, body), verify=harness.ssl
    )
    assert response.status_code == 200


async def test_remove_with_unacked_webhooks_is_refused_without_force(harness: Harness) -> None:
    tenant = harness.tenant()
    async with async_client(harness) as client:
        assert (await post(client, harness, tenant, webhook_body("pending"))).status_code == 200
    before = tenants_file(harness)
    refused = harness.cli("tenant", "remove", tenant.id)
    assert refused.returncode == 2
    assert "1 unacked" in refused.stderr
    assert "--force" in refused.stderr
    assert tenants_file(harness) == before
    # Still served, and the webhook is still queued for its bridge.
    async with await Bridge.open(harness, tenant.token) as bridge:
        frame = await bridge.webhook()
        assert tag_of(frame) == "pending"
    forced = harness.cli("tenant", "remove", tenant.id, "--force")
    assert forced.returncode == 0, forced.stderr

    async def gone() -> bool:
        async with async_client(harness) as client:
            response = await post(client, harness, tenant, webhook_body("late"))
        return response.status_code == 404

    await async_wait_for(gone, "the removed tenant to get 404")


# -- the CLI's word is kept at once, not at the relay's next poll ---------------


async def test_removed_tenant_gets_404_as_soon_as_the_cli_returns(slow_poll: Harness) -> None:
    tenant = slow_poll.tenant()
    async with async_client(slow_poll) as client:
        assert (await post(client, slow_poll, tenant, webhook_body("before"))).status_code == 200
        result = slow_poll.cli("tenant", "remove", tenant.id, "--force")
        assert result.returncode == 0, result.stderr
        response = await post(client, slow_poll, tenant, webhook_body("after-remove"))
    assert response.status_code == 404


async def test_old_token_is_refused_as_soon_as_rotate_token_returns(slow_poll: Harness) -> None:
    tenant = slow_poll.tenant()
    # The relay has seen the tenant (and cached its token) before the rotation.
    async with await Bridge.open(slow_poll, tenant.token):
        pass
    result = slow_poll.cli("tenant", "rotate-token", tenant.id, "--json")
    assert result.returncode == 0, result.stderr
    slow_poll.remember(json.loads(result.stdout)["token"])
    with pytest.raises(InvalidStatus) as refused:
        await connect(
            slow_poll.relay.bridge_url,
            ssl=slow_poll.ssl,
            additional_headers={"Authorization": f"Bearer {tenant.token}"},
            open_timeout=TIMEOUT,
        )
    assert refused.value.response.status_code == 401


async def test_a_re_added_tenant_id_never_gets_the_removed_tenants_webhooks(
    slow_poll: Harness,
) -> None:
    old = slow_poll.tenant()
    async with async_client(slow_poll) as client:
        assert (await post(client, slow_poll, old, webhook_body("old-owner"))).status_code == 200
    removed = slow_poll.cli("tenant", "remove", old.id, "--force")
    assert removed.returncode == 0, removed.stderr
    secret = slow_poll.remember(secrets.token_hex(16))
    added = slow_poll.cli("tenant", "add", old.id, "--channel-secret", secret, "--json")
    assert added.returncode == 0, added.stderr
    new = Tenant(old.id, secret, slow_poll.remember(json.loads(added.stdout)["token"]), old.url)
    async with async_client(slow_poll) as client:
        # A webhook for an unknown id makes the relay re-read the tenants file now.
        nobody_id = "nobody-" + secrets.token_hex(4)
        nobody = Tenant(nobody_id, secret, "", slow_poll.relay.webhook_url(nobody_id))
        assert (await post(client, slow_poll, nobody, webhook_body("x"))).status_code == 404
        assert (await post(client, slow_poll, new, webhook_body("new-owner"))).status_code == 200
    async with await Bridge.open(slow_poll, new.token) as bridge:
        frame = await bridge.webhook()
        await bridge.ack(frame)
    assert tag_of(frame) == "new-owner"


# -- rotations with a grace ------------------------------------------------------

#: Long enough for the checks made inside it on a loaded machine.
GRACE_SECONDS = 12


async def close_code(bridge: Bridge, timeout: float) -> int | None:
    """The code the relay closes ``bridge`` with, reading (and dropping) frames until then."""
    try:
        while True:
            await bridge.frame(timeout)
    except ConnectionClosed as closed:
        return closed.rcvd.code if closed.rcvd is not None else None


async def test_a_token_rotated_with_a_grace_serves_old_bridges_until_it_ends(
    harness: Harness,
) -> None:
    tenant = harness.tenant()
    async with await Bridge.open(harness, tenant.token) as old_bridge:
        result = harness.cli(
            "tenant", "rotate-token", tenant.id, "--grace", str(GRACE_SECONDS), "--json"
        )
        assert result.returncode == 0, result.stderr
        rotated = json.loads(result.stdout)
        new_token = harness.remember(rotated["token"])
        until = rotated["token_grace_until"] / 1000
        listed = {
            row["tenant"]: row for row in json.loads(harness.cli("tenant", "list", "--json").stdout)
        }
        assert listed[tenant.id]["token_grace_until"] == rotated["token_grace_until"]
        async with await Bridge.open(harness, new_token) as new_bridge:
            # Inside the grace both tokens log in, and the old connection still gets webhooks.
            async with await Bridge.open(harness, tenant.token) as second_old:
                assert second_old.hello["tenant"] == tenant.id
            async with async_client(harness) as client:
                assert (
                    await post(client, harness, tenant, webhook_body("grace"))
                ).status_code == 200
            frame = await new_bridge.webhook()  # the newest connection is the active one
            await new_bridge.ack(frame)
            assert time.time() < until, "the machine was too slow to check inside the grace"
            # The grace ends: the old token's connection is closed, the new one's is not.
            assert await close_code(old_bridge, GRACE_SECONDS + TIMEOUT) == 4401
            assert time.time() >= until
            async with async_client(harness) as client:
                assert (
                    await post(client, harness, tenant, webhook_body("after"))
                ).status_code == 200
            frame = await new_bridge.webhook()
            assert tag_of(frame) == "after"
            await new_bridge.ack(frame)
    with pytest.raises(InvalidStatus) as refused:
        await Bridge.open(harness, tenant.token)
    assert refused.value.response.status_code == 401
    listed = {
        row["tenant"]: row for row in json.loads(harness.cli("tenant", "list", "--json").stdout)
    }
    assert listed[tenant.id]["token_grace_until"] is None
    ended = harness.log_events("tenant tokens changed")
    assert any(e["tenant"] == tenant.id and e["bridges_closed"] == 1 for e in ended)


def test_tenant_list_says_until_when_old_credentials_work(harness: Harness) -> None:
    tenant = harness.tenant()
    rotated = harness.cli("tenant", "rotate-token", tenant.id, "--grace", "3600")
    assert rotated.returncode == 0, rotated.stderr
    assert "The old token works until 20" in rotated.stdout
    harness.remember(rotated.stdout.split()[2])
    listing = harness.cli("tenant", "list")
    (line,) = [row for row in listing.stdout.splitlines() if row.startswith(tenant.id + "\t")]
    assert "old token valid until 20" in line
    assert "old secret" not in line


@pytest.mark.parametrize("grace", ["-1", "abc", "nan", "604801"])
@pytest.mark.parametrize("command", ["rotate-token", "rotate-secret"])
def test_a_bad_grace_exits_2_and_changes_nothing(
    harness: Harness, command: str, grace: str
) -> None:
    tenant = harness.tenant()
    before = tenants_file(harness)
    extra = (
        ("--channel-secret", harness.remember(secrets.token_hex(16)))
        if command == "rotate-secret"
        else ()
    )
    result = harness.cli("tenant", command, tenant.id, *extra, "--grace", grace)
    assert result.returncode == 2
    assert "grace" in result.stderr
    assert "Traceback" not in result.stderr
    assert "lrb_" not in result.stdout
    assert tenants_file(harness) == before


async def test_a_secret_rotated_with_a_grace_verifies_both_until_the_old_one_ends(
    harness: Harness,
) -> None:
    tenant = harness.tenant()
    new_secret = harness.remember(secrets.token_hex(16))
    result = harness.cli(
        "tenant",
        "rotate-secret",
        tenant.id,
        "--channel-secret-file",
        "-",
        "--grace",
        "3",
        "--json",
        stdin=new_secret + "\n",
    )
    assert result.returncode == 0, result.stderr
    until = json.loads(result.stdout)["secret_grace_until"] / 1000
    renewed = Tenant(tenant.id, new_secret, tenant.token, tenant.url)
    async with async_client(harness) as client:
        assert (await post(client, harness, renewed, webhook_body("new-1"))).status_code == 200
        old_answer = await post(client, harness, tenant, webhook_body("old-1"))
        assert time.time() < until, "the machine was too slow to check inside the grace"
        assert old_answer.status_code == 200

        late_accepted = 0

        async def old_refused() -> bool:
            nonlocal late_accepted
            response = await post(client, harness, tenant, webhook_body("old-late"))
            late_accepted += response.status_code == 200
            return response.status_code == 401

        await async_wait_for(old_refused, "the old secret to stop verifying")
        assert time.time() >= until
        assert (await post(client, harness, renewed, webhook_body("new-2"))).status_code == 200
    # Each "old-late" accepted (the grace was still on) is queued too.
    queued = ["new-1", "old-1"] + ["old-late"] * late_accepted + ["new-2"]
    async with await Bridge.open(harness, tenant.token) as bridge:
        tags = [tag_of(frame) for frame in await bridge.take(len(queued))]
    assert tags == queued


async def test_a_secret_rotated_without_a_grace_stops_the_old_one_as_the_cli_returns(
    slow_poll: Harness,
) -> None:
    tenant = slow_poll.tenant()
    async with async_client(slow_poll) as client:
        assert (await post(client, slow_poll, tenant, webhook_body("before"))).status_code == 200
        new_secret = slow_poll.remember(secrets.token_hex(16))
        result = slow_poll.cli("tenant", "rotate-secret", tenant.id, "--channel-secret", new_secret)
        assert result.returncode == 0, result.stderr
        assert "The old one no longer verifies." in result.stdout
        assert (await post(client, slow_poll, tenant, webhook_body("old"))).status_code == 401
        renewed = Tenant(tenant.id, new_secret, tenant.token, tenant.url)
        assert (await post(client, slow_poll, renewed, webhook_body("new"))).status_code == 200


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("rotate-secret", "no-such-shop", "--channel-secret", "abc"), "no tenant"),
        (("rotate-secret", "Bad_Id", "--channel-secret", "abc"), "invalid tenant id"),
        (("rotate-secret", "TENANT", "--channel-secret", "two words"), "spaces"),
        (("rotate-secret", "TENANT", "--channel-secret", " "), "empty"),
        (("rotate-secret", "TENANT", "--channel-secret", "SAME"), "is the one in use"),
        (("rotate-secret", "TENANT", "--channel-secret-file", "/nonexistent/s"), "cannot read"),
        (("rotate-secret", "TENANT"), "one of the arguments"),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, tuple) else None,
)
def test_bad_secret_rotations_exit_2_and_change_nothing(
    harness: Harness, args: tuple[str, ...], message: str
) -> None:
    tenant = harness.tenant()
    args = tuple(tenant.id if a == "TENANT" else tenant.secret if a == "SAME" else a for a in args)
    before = tenants_file(harness)
    result = harness.cli("tenant", *args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert tenant.secret not in result.stdout + result.stderr
    assert tenants_file(harness) == before
