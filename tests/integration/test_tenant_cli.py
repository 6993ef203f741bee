"""Tenants (PROTOCOL.md §3) through the real ``linerelay tenant`` CLI while a relay runs."""

from __future__ import annotations

import json
import secrets
import sqlite3
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
