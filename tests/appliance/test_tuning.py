from __future__ import annotations

import asyncio
import asyncio.sslproto
import ssl
from types import SimpleNamespace

import pytest
import websockets
from hypercorn.protocol import ws_stream

from appliance import tuning
from tests.support.relay import RelayProcess


def test_tls_read_buffer_is_small() -> None:
    tuning.apply()
    assert asyncio.sslproto.SSLProtocol.max_size == tuning.SSL_READ_BUFFER <= 4096


def test_permessage_deflate_offers_are_ignored() -> None:
    tuning.apply()
    offer = [(b"sec-websocket-extensions", b"permessage-deflate; client_max_window_bits")]
    assert ws_stream.Handshake(offer, "1.1").extensions is None


async def test_marking_a_stream_closed_cancels_its_ping_task() -> None:
    tuning.apply()
    stream = SimpleNamespace()
    pinger = asyncio.get_running_loop().create_task(asyncio.sleep(60))
    stream.__dict__["_linerelay_pinger"] = pinger
    tuning._mark_closed(stream, True)
    await asyncio.sleep(0)
    assert pinger.cancelled()
    assert tuning._is_closed(stream)


@pytest.mark.integration
async def test_the_relay_declines_compression_for_bridges(relay: RelayProcess) -> None:
    token = relay.add_tenant("deflate", "secret")
    context = ssl.create_default_context(cafile=str(relay.ca_file))
    async with websockets.connect(  # offers permessage-deflate by default
        relay.bridge_url, ssl=context, additional_headers={"Authorization": f"Bearer {token}"}
    ) as ws:
        assert ws.response is not None
        assert "Sec-WebSocket-Extensions" not in ws.response.headers
        assert "hello" in str(await ws.recv())
