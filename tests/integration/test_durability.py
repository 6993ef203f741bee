"""A 200 means stored: webhooks survive ``kill -9`` of the relay (PROTOCOL.md §1-§2)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.integration.helpers import (
    Bridge,
    Harness,
    Tenant,
    async_client,
    post,
    running_relay,
    tag_of,
    webhook_body,
)

pytestmark = pytest.mark.integration

CLIENTS = 8
WEBHOOKS = 300


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    with running_relay(tmp_path_factory, "durable") as h:
        yield h


async def load(
    harness: Harness,
    tenant: Tenant,
    accepted: dict[str, bytes],
    stop: asyncio.Event | None = None,
) -> int:
    """Post WEBHOOKS webhooks from CLIENTS concurrent keep-alive clients (half on HTTP/2).

    Tags answered 200 go into ``accepted`` (with their bodies) as the answers
    come. Returns how many requests failed (refused once the relay is gone).
    """
    tags = iter(f"load-{i:04d}" for i in range(WEBHOOKS))
    failed = 0

    async def client_task(http2: bool) -> None:
        nonlocal failed
        async with async_client(harness, http2=http2) as client:
            for tag in tags:
                if stop is not None and stop.is_set():
                    return
                body = webhook_body(tag)
                try:
                    response = await post(client, harness, tenant, body)
                except httpx.TransportError:
                    failed += 1
                    continue
                if response.status_code == 200:
                    accepted[tag] = body
                else:
                    failed += 1

    await asyncio.gather(*(client_task(i % 2 == 1) for i in range(CLIENTS)))
    return failed


async def drain(harness: Harness, tenant: Tenant, wanted: set[str]) -> list[dict[str, Any]]:
    """Connect a bridge and ack everything until every tag in ``wanted`` has arrived."""
    frames: list[dict[str, Any]] = []
    async with await Bridge.open(harness, tenant.token) as bridge:
        while not wanted <= {tag_of(f) for f in frames}:
            frame = await bridge.webhook()
            frames.append(frame)
            await bridge.ack(frame)
    return frames


def assert_no_loss(accepted: dict[str, bytes], frames: list[dict[str, Any]]) -> None:
    """Every accepted tag delivered; a tag seen twice only as a redelivery."""
    assert set(accepted) <= {tag_of(f) for f in frames}
    seen: set[str] = set()
    for frame in frames:
        tag = tag_of(frame)
        if tag in seen:
            assert frame["attempt"] > 1, f"{tag} delivered twice as a first attempt"
        seen.add(tag)


async def test_every_webhook_answered_200_survives_kill_9_right_after_the_answers(
    harness: Harness,
) -> None:
    tenant = harness.tenant()
    accepted: dict[str, bytes] = {}
    failed = await load(harness, tenant, accepted)
    harness.relay.kill()
    assert failed == 0
    assert len(accepted) == WEBHOOKS
    harness.relay.restart()
    # LINE retrying a webhook whose answer it lost in the crash: still a known duplicate.
    async with async_client(harness) as client:
        for body in list(accepted.values())[-3:]:
            assert (await post(client, harness, tenant, body)).status_code == 200
        sentinel = webhook_body("sentinel")
        assert (await post(client, harness, tenant, sentinel)).status_code == 200
    frames = await drain(harness, tenant, {*accepted, "sentinel"})
    assert_no_loss(accepted, frames)
    assert [tag_of(f) for f in frames].count("sentinel") == 1
    assert tag_of(frames[-1]) == "sentinel"
    assert len(frames) == WEBHOOKS + 1
    # Order of receipt holds across the crash.
    stamps = [f["received_at"] for f in frames]
    assert stamps == sorted(stamps)


async def test_every_webhook_answered_200_survives_kill_9_in_the_middle_of_the_load(
    harness: Harness,
) -> None:
    tenant = harness.tenant()
    accepted: dict[str, bytes] = {}
    stop = asyncio.Event()
    loader = asyncio.create_task(load(harness, tenant, accepted, stop))
    while len(accepted) < WEBHOOKS // 3 and not loader.done():
        await asyncio.sleep(0.01)
    harness.relay.kill()  # with requests in flight
    stop.set()
    await loader
    assert WEBHOOKS // 3 <= len(accepted) < WEBHOOKS
    harness.relay.restart()
    frames = await drain(harness, tenant, set(accepted))
    assert_no_loss(accepted, frames)
    # Acks are durable too: after a clean restart nothing acked comes back. Only
    # requests cut off by the kill (stored, never answered) may still be queued.
    acked = {tag_of(f) for f in frames}
    harness.relay.restart()
    async with await Bridge.open(harness, tenant.token) as bridge:
        async with async_client(harness) as client:
            assert (
                await post(client, harness, tenant, webhook_body("sentinel"))
            ).status_code == 200
        while (frame := await bridge.webhook()) and tag_of(frame) != "sentinel":
            assert tag_of(frame) not in acked, f"{tag_of(frame)} was acked before the restart"
            assert tag_of(frame).startswith("load-")
            await bridge.ack(frame)
        await bridge.ack(frame)
