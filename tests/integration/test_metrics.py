"""Issue 11 item 5: metrics an operator can trust, read from a real relay's /metrics.

Every known tenant has its queue depth, its oldest unacked webhook's age and
its bridges' state, zeros included; the build is named. The alert rules and
the dashboard that read these series are checked against the same real
output in tests/deploy/test_queried_metrics_exist.py.
"""

from __future__ import annotations

import platform
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect
from websockets.typing import Subprotocol

from appliance.protocol import SUBPROTOCOL_V2
from tests.integration.helpers import (
    TIMEOUT,
    Bridge,
    Harness,
    Tenant,
    async_client,
    async_wait_for,
    post,
    running_relay,
    wait_for,
    webhook_body,
)

pytestmark = pytest.mark.integration

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    # Tenants written to tenants.db are picked up on the poll: a short one keeps waits short.
    with running_relay(tmp_path_factory, "metrics", config="tenant_poll_interval = 0.2\n") as h:
        yield h


def sample(harness: Harness, name: str, **labels: str) -> float | None:
    """The value of one sample on the relay's /metrics; None when it is absent.

    Unlike :meth:`Harness.metric`, absent and 0 differ: the point here is that
    zeros are exported.
    """
    text = httpx.get(f"{harness.relay.admin_url}/metrics", timeout=TIMEOUT).text
    for family in text_string_to_metric_families(text):
        for found in family.samples:
            if found.name == name and found.labels == labels:
                return float(found.value)
    return None


def known(harness: Harness, tenant: Tenant) -> None:
    """Wait until the relay has read ``tenant`` from tenants.db (its series appear)."""
    wait_for(
        lambda: sample(harness, "linerelay_queue_depth", tenant=tenant.id) is not None,
        f"the relay to export {tenant.id}",
    )


def test_a_tenant_with_nothing_queued_shows_depth_age_and_bridges_at_zero(harness: Harness):
    tenant = harness.tenant("idle")
    known(harness, tenant)
    assert sample(harness, "linerelay_queue_depth", tenant=tenant.id) == 0
    assert sample(harness, "linerelay_queue_oldest_age_seconds", tenant=tenant.id) == 0
    for protocol in ("1", "2"):
        assert (
            sample(harness, "linerelay_bridge_connected", tenant=tenant.id, protocol=protocol) == 0
        )
    assert sample(harness, "linerelay_bridge_connects_total", tenant=tenant.id) == 0


async def test_the_oldest_age_grows_while_a_webhook_waits_and_is_zero_after_its_ack(
    harness: Harness,
):
    tenant = harness.tenant("wait")
    known(harness, tenant)
    async with async_client(harness) as client:
        response = await post(client, harness, tenant, webhook_body("waiting"))
    assert response.status_code == 200
    posted = time.monotonic()
    first = sample(harness, "linerelay_queue_oldest_age_seconds", tenant=tenant.id)
    assert first is not None
    assert 0 <= first < TIMEOUT
    time.sleep(1.5)
    later = sample(harness, "linerelay_queue_oldest_age_seconds", tenant=tenant.id)
    assert later is not None
    assert later >= first + 1.0
    assert later <= time.monotonic() - posted + 1.0  # about the time it has waited, no more
    assert sample(harness, "linerelay_queue_depth", tenant=tenant.id) == 1

    async with await Bridge.open(harness, tenant.token) as bridge:
        await bridge.take(1)

        async def drained() -> bool:
            return sample(harness, "linerelay_queue_depth", tenant=tenant.id) == 0

        await async_wait_for(drained, "the ack to empty the queue")
        assert sample(harness, "linerelay_queue_oldest_age_seconds", tenant=tenant.id) == 0


async def test_the_bridge_gauge_follows_connects_and_disconnects_with_their_protocol(
    harness: Harness,
):
    tenant = harness.tenant("br")
    known(harness, tenant)

    def connected() -> dict[str, float | None]:
        return {
            p: sample(harness, "linerelay_bridge_connected", tenant=tenant.id, protocol=p)
            for p in ("1", "2")
        }

    async def shows(expected: dict[str, float]) -> bool:
        return connected() == expected

    total = sample(harness, "linerelay_bridges_connected")
    async with await Bridge.open(harness, tenant.token) as bridge:
        assert bridge.hello["protocol"] == 1
        assert connected() == {"1": 1, "2": 0}
        # PROTOCOL.md §3's process-wide gauge counts it too.
        assert sample(harness, "linerelay_bridges_connected") == (total or 0) + 1
    await async_wait_for(lambda: shows({"1": 0, "2": 0}), "the disconnect to show")

    async with connect(
        harness.relay.bridge_url,
        ssl=harness.ssl,
        additional_headers={"Authorization": f"Bearer {tenant.token}"},
        subprotocols=[Subprotocol(SUBPROTOCOL_V2)],
        open_timeout=TIMEOUT,
    ) as ws:
        assert ws.subprotocol == SUBPROTOCOL_V2
        await ws.recv()  # the hello: the relay has attached the bridge by now
        assert connected() == {"1": 0, "2": 1}
    await async_wait_for(lambda: shows({"1": 0, "2": 0}), "the disconnect to show")
    assert sample(harness, "linerelay_bridge_connects_total", tenant=tenant.id) == 2


def test_build_info_names_the_version_and_the_python(harness: Harness):
    version = tomllib.loads(PYPROJECT.read_text())["project"]["version"]
    info = {"version": version, "python": platform.python_version()}
    assert sample(harness, "linerelay_build_info", **info) == 1
