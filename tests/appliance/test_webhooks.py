"""The operator's webhook service and its admin JSON API, over a real SQLite store and hub.

Bridges here are the hub's own transport seam (a recorder of the frames it is
given); tests/integration/test_webhooks_cli.py runs the same over real
processes and sockets.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from quart import Quart

from appliance.app import create_admin_app
from appliance.config import RelayConfig
from appliance.errors import QueuedWebhooks, QueueFull, UnknownWebhook
from appliance.hub import BridgeConnection, Hub
from appliance.ingress import Relay
from appliance.metrics import Metrics
from appliance.store import Delivery, Limits, SQLiteStore
from appliance.tenants import SQLiteTenantDirectory, TenantRegistry
from appliance.webhooks import EVENT_TYPES_MAX_BODY, MAX_LIST, WebhookRecord, WebhookState
from tests.support.bodies import webhook_body
from tests.support.waiting import async_wait_for


@dataclass
class Recorder:
    """A bridge's socket as the hub sees it: the frames it was given."""

    frames: list[dict[str, Any]] = field(default_factory=list)

    async def send(self, text: str) -> None:
        self.frames.append(json.loads(text))

    async def close(self, code: int) -> None:
        pass

    def abort(self) -> None:
        pass

    def webhooks(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for frame in self.frames:
            if frame["type"] == "webhook":
                out.append(frame)
            elif frame["type"] == "webhooks":
                out.extend(frame["items"])
        return out


@dataclass
class Parts:
    store: SQLiteStore
    hub: Hub
    relay: Relay
    app: Quart


@pytest.fixture
async def parts(tmp_path: Path) -> AsyncIterator[Parts]:
    store = SQLiteStore(tmp_path / "store.db", Limits(queue_cap=5))
    await store.open()
    registry = TenantRegistry(tmp_path / "tenants.db")
    registry.add("shop", "secret-1")
    registry.close()
    tenants = SQLiteTenantDirectory(tmp_path / "tenants.db")
    metrics = Metrics()
    hub = Hub(store, metrics)
    relay = Relay(RelayConfig(state_dir=tmp_path), tenants, store, hub, metrics)
    yield Parts(store, hub, relay, create_admin_app(relay, lambda: True))
    await store.close()
    tenants.close()


async def accept(store: SQLiteStore, body: bytes, tenant: str = "shop") -> Delivery:
    stored = await store.append(tenant, body, "sig", int(time.time() * 1000))
    assert stored is not None
    return stored


async def acked(store: SQLiteStore, body: bytes, tenant: str = "shop") -> Delivery:
    stored = await accept(store, body, tenant)
    store.ack(tenant, stored.seq)
    await store.pending(tenant, 0, 1)  # a round trip: the ack is committed
    return stored


async def until(condition: Callable[[], bool], what: str) -> None:
    """Wait (on the loop, so the hub and store go on) until ``condition`` holds."""

    async def check() -> bool:
        return condition()

    await async_wait_for(check, what=what)


FOLLOW_AND_TEXT = json.dumps(
    {"destination": "U1", "events": [{"type": "follow"}, {"type": "message"}, {"x": 1}]}
).encode()


async def test_list_shows_records_with_event_types_and_never_a_body(parts: Parts) -> None:
    first = await acked(parts.store, FOLLOW_AND_TEXT)
    second = await accept(parts.store, webhook_body("hello"))
    records = await parts.relay.webhooks.list()
    assert [r.id for r in records] == [second.id, first.id]
    assert records[0].state is WebhookState.QUEUED
    assert records[1].state is WebhookState.DELIVERED
    assert records[1].event_types == ("follow", "message", "?")
    assert records[0].event_types == ("message",)
    assert records[1].acked_at is not None
    assert records[1].size == len(FOLLOW_AND_TEXT)
    text = json.dumps([r.to_json() for r in records])
    assert "hello" not in text
    assert "sig" not in text


async def test_list_filters_and_bounds_its_limit(parts: Parts) -> None:
    for i in range(3):
        await acked(parts.store, webhook_body(f"d{i}"))
    queued = await accept(parts.store, webhook_body("q"))
    webhooks = parts.relay.webhooks
    assert [r.id for r in await webhooks.list(state=WebhookState.QUEUED)] == [queued.id]
    assert len(await webhooks.list(state=WebhookState.DELIVERED, limit=2)) == 2
    assert await webhooks.list(tenant="other") == []
    assert len(await webhooks.list(limit=10 * MAX_LIST)) == 4
    assert len(await webhooks.list(limit=0)) == 1


async def test_a_large_body_is_not_read_to_list_its_event_types(parts: Parts) -> None:
    padding = "x" * EVENT_TYPES_MAX_BODY
    large = await acked(
        parts.store, json.dumps({"events": [{"type": "message"}], "p": padding}).encode()
    )
    (listed,) = await parts.relay.webhooks.list()
    assert listed.event_types == ()
    assert (await parts.relay.webhooks.show(large.id)).event_types == ("message",)


async def test_show_and_body_of_a_webhook(parts: Parts) -> None:
    body = webhook_body("exact bytes")
    stored = await acked(parts.store, body)
    record = await parts.relay.webhooks.show(stored.id)
    assert (record.id, record.tenant, record.event_types) == (stored.id, "shop", ("message",))
    assert await parts.relay.webhooks.body(stored.id) == body


async def test_show_body_and_replay_of_an_unknown_id_raise_unknown_webhook(
    parts: Parts,
) -> None:
    webhooks = parts.relay.webhooks
    with pytest.raises(UnknownWebhook, match="d-nope"):
        await webhooks.show("d-nope")
    with pytest.raises(UnknownWebhook):
        await webhooks.body("d-nope")
    known = await acked(parts.store, webhook_body("x"))
    with pytest.raises(UnknownWebhook) as refused:
        await webhooks.replay([known.id, "d-nope", "d-nada"])
    assert refused.value.delivery_ids == ("d-nope", "d-nada")
    assert await parts.store.pending("shop", 0, 10) == []


@pytest.mark.parametrize("version", [1, 2])
async def test_a_replay_reaches_the_connected_bridge_marked_as_a_replay(
    parts: Parts, version: int
) -> None:
    bridge = Recorder()
    connection = BridgeConnection("shop", bridge, "peer", protocol=version)
    parts.hub.attach(connection)
    original = await accept(parts.store, webhook_body("hi"))
    await until(lambda: len(bridge.webhooks()) == 1, what="the original")
    parts.hub.receive(connection, json.dumps({"type": "ack", "id": original.id}))
    (new_id,) = await parts.relay.webhooks.replay([original.id])
    await until(lambda: len(bridge.webhooks()) == 2, what="the replay")
    first, replay = bridge.webhooks()
    assert "replay" not in first
    assert replay["replay"] is True
    assert replay["id"] == new_id != original.id
    assert (replay["body"], replay["signature"]) == (first["body"], first["signature"])
    assert replay["attempt"] == 1
    parts.hub.detach(connection)


async def test_a_purge_refuses_to_lose_queued_webhooks_unless_told(parts: Parts) -> None:
    delivered = await acked(parts.store, webhook_body("d"))
    queued = await accept(parts.store, webhook_body("q"))
    with pytest.raises(QueuedWebhooks) as refused:
        await parts.relay.webhooks.purge("shop")
    assert refused.value.queued == 1
    assert {r.id for r in await parts.relay.webhooks.list()} == {delivered.id, queued.id}
    purged = await parts.relay.webhooks.purge("shop", include_queued=True)
    assert (purged.tenant, purged.queued) == ("shop", 1)
    assert await parts.relay.webhooks.list() == []
    assert parts.store.depth("shop") == 0


async def test_a_purge_without_queued_webhooks_erases_every_body(parts: Parts) -> None:
    await acked(parts.store, webhook_body("d1"))
    other = await acked(parts.store, webhook_body("o"), tenant="other")
    assert (await parts.relay.webhooks.purge("shop")).queued == 0
    assert [r.id for r in await parts.relay.webhooks.list()] == [other.id]


async def test_a_purge_stops_the_hub_sending_what_it_erased(parts: Parts) -> None:
    bridge = Recorder()
    connection = BridgeConnection("shop", bridge, "peer", protocol=2)
    # A window of one: the second webhook waits in the hub's memory.
    parts.hub.window_v2 = 1
    parts.hub.attach(connection)
    first = await accept(parts.store, webhook_body("1"))
    await accept(parts.store, webhook_body("2"))
    await until(lambda: len(bridge.webhooks()) == 1, what="the first webhook")
    await parts.relay.webhooks.purge("shop", include_queued=True)
    later = await accept(parts.store, webhook_body("3"))
    parts.hub.receive(connection, json.dumps({"type": "ack", "ids": [first.id]}))
    await until(lambda: bridge.webhooks()[-1]["id"] == later.id, what="the webhook after the purge")
    assert [w["id"] for w in bridge.webhooks()] == [first.id, later.id]
    parts.hub.detach(connection)


async def test_a_replay_past_the_queue_cap_is_refused(parts: Parts) -> None:
    rows = [await accept(parts.store, webhook_body(str(i))) for i in range(5)]
    with pytest.raises(QueueFull):
        await parts.relay.webhooks.replay([rows[0].id])


def test_a_record_survives_its_json_round_trip() -> None:
    record = WebhookRecord(
        "d-1", "shop", WebhookState.EXPIRED, 1, 2, 3, None, "d-0", ("message", "follow")
    )
    assert WebhookRecord.from_json(json.loads(json.dumps(record.to_json()))) == record


# -- the admin JSON API ----------------------------------------------------------


async def test_api_lists_and_filters_webhooks(parts: Parts) -> None:
    delivered = await acked(parts.store, webhook_body("d"))
    queued = await accept(parts.store, webhook_body("q"))
    client = parts.app.test_client()
    response = await client.get("/api/webhooks")
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    listed = (await response.get_json())["webhooks"]
    assert [w["id"] for w in listed] == [queued.id, delivered.id]
    assert listed[1]["state"] == "delivered"
    assert set(listed[0]) == {
        "id",
        "tenant",
        "state",
        "received_at",
        "attempts",
        "size",
        "acked_at",
        "expired_at",
        "replay_of",
        "event_types",
    }
    response = await client.get("/api/webhooks?tenant=shop&state=queued&limit=5")
    assert [w["id"] for w in (await response.get_json())["webhooks"]] == [queued.id]


@pytest.mark.parametrize(
    "query", ["state=lost", "limit=0", "limit=abc", f"limit={MAX_LIST + 1}", "limit=-1"]
)
async def test_api_refuses_a_bad_list_query(parts: Parts, query: str) -> None:
    response = await parts.app.test_client().get(f"/api/webhooks?{query}")
    assert response.status_code == 400
    assert (await response.get_json())["error"] == "bad_request"


async def test_api_shows_a_body_only_when_asked(parts: Parts) -> None:
    body = webhook_body("private words")
    stored = await acked(parts.store, body)
    client = parts.app.test_client()
    plain = await client.get(f"/api/webhooks/{stored.id}")
    assert plain.status_code == 200
    assert "private words" not in await plain.get_data(as_text=True)
    asked = await (await client.get(f"/api/webhooks/{stored.id}?body=1")).get_json()
    assert asked["body"].encode() == body
    assert "signature" not in asked


async def test_api_logs_each_body_it_shows_without_the_body(
    parts: Parts, caplog: pytest.LogCaptureFixture
) -> None:
    stored = await acked(parts.store, webhook_body("private words"))
    client = parts.app.test_client()
    with caplog.at_level(logging.INFO, logger="appliance.webhooks_api"):
        await client.get(f"/api/webhooks/{stored.id}")
        assert not [r for r in caplog.records if r.getMessage() == "api: webhook body shown"]
        await client.get(f"/api/webhooks/{stored.id}?body=1")
    (shown,) = [r for r in caplog.records if r.getMessage() == "api: webhook body shown"]
    assert shown.__dict__["delivery"] == stored.id
    assert shown.__dict__["tenant"] == "shop"
    assert shown.__dict__["client"]  # the address ("<local>" from Quart's test client)
    assert "private words" not in caplog.text
    assert "private words" not in repr(shown.__dict__)


async def test_api_answers_404_naming_an_unknown_id(parts: Parts) -> None:
    client = parts.app.test_client()
    response = await client.get("/api/webhooks/d-nope")
    assert response.status_code == 404
    assert await response.get_json() == {
        "error": "unknown_webhook",
        "id": "d-nope",
        "ids": ["d-nope"],
    }
    known = await acked(parts.store, webhook_body("x"))
    response = await client.post("/api/webhooks/replay", json={"ids": [known.id, "d-nope"]})
    assert response.status_code == 404
    assert (await response.get_json())["id"] == "d-nope"
    assert await parts.store.pending("shop", 0, 10) == []


async def test_api_replays_and_pairs_old_and_new_ids(parts: Parts) -> None:
    one = await acked(parts.store, webhook_body("1"))
    two = await acked(parts.store, webhook_body("2"))
    response = await parts.app.test_client().post(
        "/api/webhooks/replay", json={"ids": [two.id, one.id]}
    )
    assert response.status_code == 200
    replayed = (await response.get_json())["replayed"]
    assert [r["id"] for r in replayed] == [two.id, one.id]
    pending = await parts.store.pending("shop", 0, 10)
    assert [(d.id, d.replay_of) for d in pending] == [
        (replayed[0]["replay_id"], two.id),
        (replayed[1]["replay_id"], one.id),
    ]


@pytest.mark.parametrize(
    "payload", [None, [], {"ids": []}, {"ids": "d-1"}, {"ids": [1]}, {"ids": [""]}]
)
async def test_api_refuses_a_malformed_replay(parts: Parts, payload: object) -> None:
    client = parts.app.test_client()
    response = await client.post(
        "/api/webhooks/replay",
        data=json.dumps(payload),
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 400


async def test_api_replay_past_the_cap_is_503(parts: Parts) -> None:
    rows = [await accept(parts.store, webhook_body(str(i))) for i in range(5)]
    response = await parts.app.test_client().post(
        "/api/webhooks/replay", json={"ids": [rows[0].id]}
    )
    assert response.status_code == 503
    assert (await response.get_json())["error"] == "queue_full"


async def test_api_purges_a_tenant(parts: Parts) -> None:
    await acked(parts.store, webhook_body("d"))
    await accept(parts.store, webhook_body("q"))
    client = parts.app.test_client()
    refused = await client.post("/api/tenants/shop/purge", json={})
    assert refused.status_code == 409
    assert await refused.get_json() == {"error": "queued_webhooks", "queued": 1}
    assert len(await parts.relay.webhooks.list()) == 2
    done = await client.post("/api/tenants/shop/purge", json={"include_queued": True})
    assert done.status_code == 200
    assert await done.get_json() == {"tenant": "shop", "queued_erased": 1}
    assert await parts.relay.webhooks.list() == []


async def test_api_purge_of_an_unknown_tenant_is_404_and_changes_nothing(parts: Parts) -> None:
    kept = await acked(parts.store, webhook_body("d"), tenant="gone")
    client = parts.app.test_client()
    response = await client.post("/api/tenants/gone/purge", json={"include_queued": True})
    assert response.status_code == 404
    assert (await response.get_json())["error"] == "unknown_tenant"
    assert [r.id for r in await parts.relay.webhooks.list()] == [kept.id]
    bad = await client.post("/api/tenants/shop/purge", json={"include_queued": "yes"})
    assert bad.status_code == 400
