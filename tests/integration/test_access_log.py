"""Hypercorn's own access log, when switched on, never shows a bridge token."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
import websockets

from tests.support.relay import RelayProcess

pytestmark = pytest.mark.integration


@pytest.fixture
def logging_relay(tmp_path: Path) -> Iterator[RelayProcess]:
    relay = RelayProcess(tmp_path / "state", config="hypercorn_access_log = true\n").start()
    try:
        yield relay
    finally:
        relay.stop()


async def test_token_in_the_bridge_url_is_redacted_from_hypercorns_access_log(
    logging_relay: RelayProcess,
) -> None:
    token = logging_relay.add_tenant("logged", "s3cret-value")
    context = ssl.create_default_context(cafile=str(logging_relay.ca_file))
    async with websockets.connect(f"{logging_relay.bridge_url}/{token}", ssl=context) as ws:
        assert "hello" in str(await ws.recv())
    logging_relay.stop()
    output = logging_relay.output()
    assert '"logger":"hypercorn.access"' in output  # the access log is really on
    assert "/bridge/[redacted]" in output
    assert token not in output
    assert "s3cret-value" not in output
