"""Real LINE bodies go through the relay byte for byte (PROTOCOL.md §1-§2)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from linebot.v3 import SignatureValidator

from tests.conftest import FIXTURES
from tests.integration.helpers import Bridge, Harness, Tenant, async_client, running_relay

pytestmark = pytest.mark.integration

FILES = sorted(FIXTURES.glob("*/*.json"))


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    # A bridge per fixture, each opened right after the last: far faster than
    # any real bridge reconnects, so the per-tenant reconnect limit is raised.
    with running_relay(tmp_path_factory, "fixtures", "bridge_connect_burst = 1000\n") as h:
        yield h


@pytest.fixture(scope="module")
def tenants(harness: Harness) -> dict[bool, Tenant]:
    """One tenant per HTTP version: the same bytes posted twice to one tenant are a retry."""
    return {False: harness.tenant(), True: harness.tenant()}


def test_every_fixture_folder_is_found() -> None:
    assert {path.parent.name for path in FILES} == {"sdk-java", "sdk-python"}
    assert len(FILES) >= 28


@pytest.mark.parametrize("path", FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
@pytest.mark.parametrize("http2", [False, True], ids=["HTTP/1.1", "HTTP/2"])
async def test_fixture_reaches_the_bridge_byte_identical_and_verifiable(
    harness: Harness, tenants: dict[bool, Tenant], path: Path, http2: bool
) -> None:
    tenant = tenants[http2]
    body = path.read_bytes()
    signature = harness.sign(tenant.secret, body)
    async with async_client(harness, http2=http2) as client:
        response = await client.post(
            tenant.url, content=body, headers={"X-Line-Signature": signature}
        )
    assert response.status_code == 200, response.text
    assert response.http_version == ("HTTP/2" if http2 else "HTTP/1.1")
    async with await Bridge.open(harness, tenant.token) as bridge:
        # The embedded default's window.
        assert bridge.hello == {"type": "hello", "protocol": 1, "tenant": tenant.id, "window": 64}
        frame = await bridge.webhook()
        await bridge.ack(frame)
    assert frame["body"].encode("utf-8") == body
    assert frame["signature"] == signature
    assert frame["tenant"] == tenant.id
    assert frame["attempt"] == 1
    # A bridge can check the signature itself with LINE's own SDK.
    assert SignatureValidator(tenant.secret).validate(frame["body"], frame["signature"])
