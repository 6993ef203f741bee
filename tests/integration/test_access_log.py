"""No log line shows a bridge token: not Hypercorn's access log when switched on, not
python-websockets' debug lines (which quote request lines and headers)."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import websockets

from tests.support.relay import RelayProcess

pytestmark = pytest.mark.integration


@pytest.fixture
def logging_relay(tmp_path: Path) -> Iterator[RelayProcess]:
    relay = RelayProcess(
        tmp_path / "state", config='hypercorn_access_log = true\nlog_level = "debug"\n'
    ).start()
    try:
        yield relay
    finally:
        relay.stop()


async def test_a_bridge_token_never_reaches_the_log_even_at_debug(
    logging_relay: RelayProcess,
) -> None:
    token = logging_relay.add_tenant("logged", "s3cret-value")
    context = ssl.create_default_context(cafile=str(logging_relay.ca_file))
    async with websockets.connect(f"{logging_relay.bridge_url}/{token}", ssl=context) as ws:
        assert "hello" in str(await ws.recv())
    header = {"Authorization": f"Bearer {token}"}
    async with websockets.connect(
        logging_relay.bridge_url, ssl=context, additional_headers=header
    ) as ws:
        assert "hello" in str(await ws.recv())
    # Over HTTP/2 a request for /bridge/... goes through Hypercorn (and its access log).
    async with httpx.AsyncClient(verify=context, http2=True) as client:
        await client.get(f"{logging_relay.base_url}/bridge/{token}")
    # Later on an HTTP/1.1 keep-alive connection, without an upgrade, it is a plain
    # request of appliance/http1.py (and its access line).
    async with httpx.AsyncClient(verify=context) as client:
        await client.get(f"{logging_relay.base_url}/")
        plain = await client.get(f"{logging_relay.base_url}/bridge/{token}")
        assert plain.http_version == "HTTP/1.1"
        assert plain.status_code == 404
    logging_relay.stop()
    output = logging_relay.output()
    assert '"logger":"hypercorn.access"' in output  # the access log is really on
    assert "/bridge/[redacted]" in output
    assert '\\"GET /bridge/[redacted] HTTP/1.1\\" 404' in output  # http1.py's line
    assert token not in output
    assert token.removeprefix("lrb_") not in output
    assert "s3cret-value" not in output
