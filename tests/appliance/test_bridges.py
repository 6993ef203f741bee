"""The bridge endpoint's transports, over real python-websockets connections on loopback."""

from __future__ import annotations

import asyncio

import pytest
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve

from appliance.bridges import _WebsocketsTransport


async def test_sending_on_a_websocket_the_bridge_closed_is_a_connection_error() -> None:
    outcome: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()

    async def handler(ws: ServerConnection) -> None:
        transport = _WebsocketsTransport(ws)
        await ws.wait_closed()
        try:
            await transport.send('{"type": "webhooks", "items": []}')
        except BaseException as exc:  # what was raised is the finding
            outcome.set_result(exc)
        else:
            outcome.set_result(None)

    async with serve(handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        async with connect(f"ws://127.0.0.1:{port}"):
            pass  # a clean close from the bridge's side
        raised = await asyncio.wait_for(outcome, 5)
    # The hub treats ConnectionError as "the peer went away"; anything else would
    # escape its send task and be logged as an error.
    assert isinstance(raised, ConnectionError), raised


@pytest.mark.parametrize("code", [1000, 4401])
async def test_closing_a_websocket_twice_is_quiet_or_a_connection_error(code: int) -> None:
    results: asyncio.Future[list[str]] = asyncio.get_running_loop().create_future()

    async def handler(ws: ServerConnection) -> None:
        transport = _WebsocketsTransport(ws)
        seen = []
        for _ in range(2):
            try:
                await transport.close(code)
                seen.append("closed")
            except ConnectionError:
                seen.append("connection error")
        results.set_result(seen)

    async with serve(handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        async with connect(f"ws://127.0.0.1:{port}") as ws:
            await ws.wait_closed()
        seen = await asyncio.wait_for(results, 5)
    assert seen[0] == "closed"
    assert seen[1] in ("closed", "connection error")
