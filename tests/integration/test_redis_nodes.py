"""Two relay nodes on one Redis are one relay (PROTOCOL.md §6, issue 10).

Real parts: one ``redis-server`` (AOF, ``appendfsync always``) started for the
module, two ``linerelay serve`` processes configured with it (each its own
state dir and dev PKI), tenants added to Redis with the code behind
``tenant add``, the real ``linerelay tenant`` CLI with ``--config``, bridges
over real TLS WebSockets.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import signal
import statistics
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.exceptions import InvalidStatus

from appliance.state import StateDir
from tests.integration.helpers import (
    TIMEOUT,
    Bridge,
    Harness,
    Tenant,
    async_client,
    async_wait_for,
    close_code,
    post,
    post_tags,
    relay_nodes,
    tag_of,
    wait_for,
    webhook_body,
)
from tests.support.redis import RedisServer, add_redis_tenant, relay_config, running_redis
from tests.support.relay import linerelay

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with running_redis(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(scope="module")
def nodes(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Harness, Harness]]:
    # A short lease: a dead node's tenants go to a standby connection elsewhere soon.
    with relay_nodes(redis_server, tmp_path_factory, redis_lease_ttl=2) as pair:
        yield pair


async def tenant_on(redis_server: RedisServer, *harnesses: Harness) -> Tenant:
    """A tenant added to Redis, once every one of ``harnesses`` serves it; its URL is
    on the first."""
    added = add_redis_tenant(redis_server.url)
    for harness in harnesses:
        harness.sensitive.update((added.secret, added.token))
        url = harness.relay.webhook_url(added.id)
        async with async_client(harness) as client:

            async def known(client: httpx.AsyncClient = client, url: str = url) -> bool:
                # 401 (a bad signature) once the node knows the tenant; 404 before.
                response = await client.post(url, content=b"{}", headers={"x-line-signature": "x"})
                return response.status_code == 401

            await async_wait_for(known, f"{url} to know the tenant")
    first = harnesses[0]
    return Tenant(added.id, added.secret, added.token, first.relay.webhook_url(added.id))


def at(tenant: Tenant, harness: Harness) -> Tenant:
    """``tenant`` with its webhook URL on ``harness``'s node."""
    return Tenant(tenant.id, tenant.secret, tenant.token, harness.relay.webhook_url(tenant.id))


async def test_webhooks_posted_to_one_node_reach_a_bridge_on_the_other_byte_identical_in_order(
    nodes: tuple[Harness, Harness], redis_server: RedisServer
) -> None:
    a, b = nodes
    tenant = await tenant_on(redis_server, a, b)
    async with await Bridge.open(b, tenant.token) as bridge:
        bodies = await post_tags(a, tenant, *(f"ab-{i:03d}" for i in range(40)))
        frames = await bridge.take(len(bodies))
    assert [frame["body"].encode() for frame in frames] == bodies
    assert [frame["attempt"] for frame in frames] == [1] * len(bodies)


async def test_a_bridge_on_the_other_node_gets_what_was_queued_before_it_connected(
    nodes: tuple[Harness, Harness], redis_server: RedisServer
) -> None:
    a, b = nodes
    tenant = await tenant_on(redis_server, a, b)
    bodies = await post_tags(a, tenant, *(f"queued-{i}" for i in range(10)))
    async with await Bridge.open(b, tenant.token) as bridge:
        frames = await bridge.take(len(bodies))
        more = await post_tags(a, tenant, "after-1", "after-2")
        frames += await bridge.take(2)
    assert [frame["body"].encode() for frame in frames] == bodies + more


async def test_the_newest_connection_anywhere_is_served_and_the_older_one_stands_by(
    nodes: tuple[Harness, Harness], redis_server: RedisServer
) -> None:
    a, b = nodes
    tenant = await tenant_on(redis_server, a, b)
    async with await Bridge.open(a, tenant.token) as older:
        await post_tags(b, at(tenant, b), "to-older")
        assert tag_of(await older.webhook()) == "to-older"  # not acked: taken over below
        async with await Bridge.open(b, tenant.token) as newer:
            # The unacked one again, in order, then what comes next: on the newest only.
            first = await newer.webhook()
            assert (tag_of(first), first["attempt"]) == ("to-older", 2)
            await newer.ack(first)
            await post_tags(a, tenant, "to-newer")
            assert tag_of(await newer.webhook()) == "to-newer"
            assert await older.silent_for(0.5)
        # The newest went: the standby connection on the other node takes over.
        await post_tags(b, at(tenant, b), "back-to-older")
        frame = await older.webhook()
        while tag_of(frame) == "to-newer":  # unacked on the newest: sent again first
            await older.ack(frame)
            frame = await older.webhook()
        assert tag_of(frame) == "back-to-older"


async def test_the_tenant_cli_with_the_config_changes_what_every_node_serves(
    nodes: tuple[Harness, Harness], redis_server: RedisServer, tmp_path: Path
) -> None:
    a, b = nodes
    config = tmp_path / "relay.toml"
    config.write_text(relay_config(redis_server))
    state = tmp_path / "cli-state"
    added = linerelay(
        "tenant", "add", "cli-made", "--channel-secret", "s3cret-s3cret", "--json",
        "--config", str(config), state_dir=state,
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    listed = linerelay("tenant", "list", "--config", str(config), state_dir=state)
    assert "cli-made\tqueued=0" in listed.stdout
    async with async_client(b) as client:

        async def served() -> bool:
            response = await client.post(
                b.relay.webhook_url("cli-made"), content=b"{}", headers={"x-line-signature": "x"}
            )
            return response.status_code == 401

        await async_wait_for(served, "node b to serve the tenant the CLI added")
    removed = linerelay("tenant", "remove", "cli-made", "--config", str(config), state_dir=state)
    assert removed.returncode == 0, removed.stderr
    async with async_client(a) as client:

        async def gone() -> bool:
            response = await client.post(
                a.relay.webhook_url("cli-made"), content=b"{}", headers={"x-line-signature": "x"}
            )
            return response.status_code == 404

        await async_wait_for(gone, "node a to stop serving the removed tenant")


async def test_a_node_killed_with_unacked_webhooks_loses_none_the_bridge_gets_them_in_order_elsewhere(
    nodes: tuple[Harness, Harness], redis_server: RedisServer
) -> None:
    a, b = nodes
    tenant = await tenant_on(redis_server, a, b)
    count = 30
    bridge = await Bridge.open(b, tenant.token)
    bodies = await post_tags(a, tenant, *(f"held-{i:03d}" for i in range(count)))
    held = await bridge.webhooks(count)  # received on node b, none acked
    assert [frame["body"].encode() for frame in held] == bodies
    attempts = redis_server.client()
    wait_for(
        lambda: attempts.hlen("linerelay:att") >= count, "node b's attempt marks to be written"
    )
    b.relay.kill()  # kill -9: no goodbye, its lease and pending entries left in Redis
    with pytest.raises(Exception):  # noqa: B017, PT011 (how the socket ends is the kernel's)
        await bridge.frame(10)
    async with await Bridge.open(a, tenant.token) as again:
        frames = await again.take(count)
    assert [frame["body"].encode() for frame in frames] == bodies
    assert [frame["id"] for frame in frames] == [frame["id"] for frame in held]
    assert all(frame["attempt"] >= 2 for frame in frames)
    b.relay.start()
    wait_for(lambda: b.relay.proc is not None and b.relay.proc.poll() is None, "node b back")


async def test_a_standby_connection_on_another_node_takes_over_when_the_serving_node_dies(
    nodes: tuple[Harness, Harness], redis_server: RedisServer
) -> None:
    a, b = nodes
    tenant = await tenant_on(redis_server, a, b)
    async with await Bridge.open(a, tenant.token) as standby:
        serving = await Bridge.open(b, tenant.token)
        await post_tags(a, tenant, "before")
        assert tag_of(await serving.webhook()) == "before"
        b.relay.signal(signal.SIGKILL)
        b.relay.proc.wait()  # type: ignore[union-attr]
        # No reconnect: node b's lease lapses (redis_lease_ttl) and node a's
        # standby connection is served, unacked first.
        await post_tags(a, tenant, "after")
        frames = [await standby.webhook(timeout=30), await standby.webhook(timeout=30)]
        assert [tag_of(f) for f in frames] == ["before", "after"]
        await asyncio.gather(*(standby.ack(f) for f in frames))
    b.relay.start()


async def test_a_webhook_goes_to_a_bridge_on_the_other_node_at_once(
    nodes: tuple[Harness, Harness], redis_server: RedisServer
) -> None:
    a, b = nodes
    tenant = await tenant_on(redis_server, a, b)
    clock = asyncio.get_running_loop().time
    delays = []
    async with await Bridge.open(b, tenant.token) as bridge, async_client(a) as client:
        for i in range(9):
            body = f'{{"events": [{{"n": {i}}}]}}'.encode()
            response = await post(client, a, tenant, body)
            assert response.status_code == 200
            answered = clock()
            frame = await bridge.webhook()
            delays.append(clock() - answered)
            await bridge.ack(frame)
            assert frame["body"].encode() == body
    # Node B learns of A's commit by a blocking read that A's commit wakes: from A's 200
    # to B's frame takes milliseconds. A poll loop, even once every 0.5 s, would take
    # a quarter of a second in the median.
    assert statistics.median(delays) < 0.15, delays
    assert max(delays) < 2.0, delays


# -- rotations with a grace, on every node ---------------------------------------

#: Long enough for the checks made inside it on a loaded machine.
GRACE_SECONDS = 12


def tenant_cli(
    redis_server: RedisServer, where: Path, *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """``linerelay tenant ARGS --config FILE`` on the nodes' Redis: no node is
    signalled, each learns of the change from Redis."""
    config = where / "relay.toml"
    config.write_text(relay_config(redis_server))
    # A state dir of the CLI's own (it signals a relay found there): none runs in it.
    state = StateDir(where / "cli-state").create().path
    result = linerelay(
        "tenant", *args, "--config", str(config), state_dir=state, stdin=stdin, check=False
    )
    assert result.returncode == 0, result.stderr
    return result


async def logged(harness: Harness, tenant: str, grace_until_ms: int) -> list[dict[str, Any]]:
    """The node's ``tenant tokens changed`` log lines about ``tenant`` that say the old
    token works until ``grace_until_ms`` (0: no more)."""
    return [
        e
        for e in harness.log_events("tenant tokens changed")
        if (e["tenant"], e["grace_until_ms"]) == (tenant, grace_until_ms)
    ]


async def test_a_token_rotated_with_a_grace_works_on_every_node_until_it_ends_then_4401(
    nodes: tuple[Harness, Harness], redis_server: RedisServer, tmp_path: Path
) -> None:
    a, b = nodes
    tenant = await tenant_on(redis_server, a, b)
    old_on_a = await Bridge.open(a, tenant.token)
    old_on_b = await Bridge.open(b, tenant.token)
    try:
        result = tenant_cli(
            redis_server, tmp_path, "rotate-token", tenant.id, "--grace", str(GRACE_SECONDS),
            "--json",
        )  # fmt: skip
        rotated = json.loads(result.stdout)
        new_token, until_ms = rotated["token"], rotated["token_grace_until"]
        for node in (a, b):
            node.sensitive.add(new_token)
            # The node has read the rotation from Redis and knows when the grace ends.
            await async_wait_for(
                lambda node=node: logged(node, tenant.id, until_ms), "the node to read it"
            )
            # In the grace both tokens log in; the old token's bridge stays connected.
            async with await Bridge.open(node, new_token) as new_bridge:
                assert new_bridge.hello["tenant"] == tenant.id
            async with await Bridge.open(node, tenant.token) as old_again:
                assert old_again.hello["tenant"] == tenant.id
        assert time.time() * 1000 < until_ms, "the machine was too slow to check inside the grace"
        # The grace ends: each node closes its bridge on the old token by itself.
        codes = await asyncio.gather(
            close_code(old_on_a, GRACE_SECONDS + TIMEOUT),
            close_code(old_on_b, GRACE_SECONDS + TIMEOUT),
        )
        assert codes == [4401, 4401]
        assert time.time() * 1000 >= until_ms
    finally:
        await asyncio.gather(old_on_a.close(), old_on_b.close())
    for node in (a, b):
        with pytest.raises(InvalidStatus) as refused:
            await Bridge.open(node, tenant.token)
        assert refused.value.response.status_code == 401
        ended = await async_wait_for(
            lambda node=node: logged(node, tenant.id, 0), "the node to log the grace's end"
        )
        assert [e["bridges_closed"] for e in ended] == [1]
        async with await Bridge.open(node, new_token) as new_bridge:
            assert new_bridge.hello["tenant"] == tenant.id


async def test_a_secret_rotated_with_a_grace_verifies_both_on_every_node_until_it_ends(
    nodes: tuple[Harness, Harness], redis_server: RedisServer, tmp_path: Path
) -> None:
    a, b = nodes
    tenant = await tenant_on(redis_server, a, b)
    new_secret = secrets.token_hex(16)
    for node in (a, b):
        node.sensitive.add(new_secret)
    result = tenant_cli(
        redis_server, tmp_path, "rotate-secret", tenant.id, "--channel-secret-file", "-",
        "--grace", str(GRACE_SECONDS), "--json", stdin=new_secret + "\n",
    )  # fmt: skip
    until_ms = json.loads(result.stdout)["secret_grace_until"]
    renewed = Tenant(tenant.id, new_secret, tenant.token, tenant.url)
    for node in (a, b):
        async with async_client(node) as client:

            async def new_verifies(
                client: httpx.AsyncClient = client, node: Harness = node
            ) -> bool:
                # 401 until the node has read the new secret from Redis.
                response = await post(client, node, at(renewed, node), webhook_body("new"))
                return response.status_code == 200

            await async_wait_for(new_verifies, "the node to verify with the new secret")
            old = await post(client, node, at(tenant, node), webhook_body("old-in-grace"))
            assert time.time() * 1000 < until_ms, "the machine was too slow to check in the grace"
            assert old.status_code == 200
    for node in (a, b):
        async with async_client(node) as client:

            async def old_refused(client: httpx.AsyncClient = client, node: Harness = node) -> bool:
                response = await post(client, node, at(tenant, node), webhook_body("old-late"))
                return response.status_code == 401

            await async_wait_for(
                old_refused, "the old secret to stop verifying", GRACE_SECONDS + TIMEOUT, 0.25
            )
            assert time.time() * 1000 >= until_ms
            new = await post(client, node, at(renewed, node), webhook_body("new-after"))
            assert new.status_code == 200


async def test_webhooks_send_signs_with_the_secret_kept_in_redis_and_a_bridge_elsewhere_gets_it(
    nodes: tuple[Harness, Harness], redis_server: RedisServer
) -> None:
    a, b = nodes
    tenant = await tenant_on(redis_server, a, b)
    assert a.relay.config_file is not None
    async with await Bridge.open(b, tenant.token) as bridge:
        sent = await asyncio.to_thread(
            linerelay,
            "webhooks",
            "send",
            "--tenant",
            tenant.id,
            "--text",
            "hello from redis",
            "--url",
            tenant.url,
            "--json",
            "--config",
            str(a.relay.config_file),
            state_dir=a.relay.state_dir,
            check=False,
        )
        assert sent.returncode == 0, sent.stderr
        frame = await bridge.webhook()
    assert json.loads(sent.stdout)["status"] == 200
    assert "hello from redis" in frame["body"]
    assert tenant.secret not in sent.stdout + sent.stderr
