"""The link against a small real WebSocket server playing the relay's side of PROTOCOL.md §2.

The server selects the ``linerelay.v2`` subprotocol when asked to (a relay
speaking protocol 2) and none otherwise (a relay from before protocol 2).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Sequence
from http import HTTPStatus
from typing import Any

import pytest
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from appliance.protocol import SUBPROTOCOL_V2, Hello, Webhook, Webhooks, encode
from bridge.backoff import Backoff
from bridge.config import BridgeConfig, parse
from bridge.link import Link, connect_headers
from bridge.status import BridgeStatus
from bridge.wire import IntakeResult

TOKEN = "lrb_test-token"


def config_for(url: str, **overrides: Any) -> BridgeConfig:
    return parse(
        {
            "relay_token": TOKEN,
            "channel_secret": "s",
            "channel_access_token": "a",
            "relay_url": url,
            "openclaw_url": "http://127.0.0.1:1/v1/chat/completions",
            "backoff_min": 0.05,
            "backoff_max": 0.2,
            **overrides,
        }
    )


def test_token_goes_in_the_header_unless_the_url_carries_it() -> None:
    assert connect_headers(config_for("ws://h/bridge")) == {"Authorization": f"Bearer {TOKEN}"}
    url_only = parse(
        {
            "channel_secret": "s",
            "channel_access_token": "a",
            "relay_url": f"ws://h/bridge/{TOKEN}",
            "openclaw_url": "http://h/v1/chat/completions",
        }
    )
    assert connect_headers(url_only) == {}


def webhook(n: int) -> Webhook:
    return Webhook(f"d-{n}", "shop", '{"events":[]}', "sig", 0, 1)


def take_all(frames: Sequence[Webhook]) -> Any:
    """An intake that queues everything at once."""
    return asyncio.sleep(0, [IntakeResult(True)] * len(frames))


class FakeRelay:
    """Greets, sends the queued frames, records what the bridge sends; 401 for a wrong token."""

    def __init__(self, frames: list[str], protocol: int = 1) -> None:
        self.frames = frames
        self.protocol = protocol
        self.received: list[dict[str, Any]] = []
        self.headers: list[Headers] = []
        self.rejected = 0
        self.server: Server | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        port = next(iter(self.server.sockets)).getsockname()[1]
        return f"ws://127.0.0.1:{port}/bridge"

    def check_token(self, connection: ServerConnection, request: Request) -> Response | None:
        self.headers.append(request.headers)
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            self.rejected += 1
            return connection.respond(HTTPStatus.UNAUTHORIZED, "no\n")
        return None

    async def handler(self, ws: ServerConnection) -> None:
        protocol = 2 if ws.subprotocol == SUBPROTOCOL_V2 else 1
        await ws.send(encode(Hello(tenant="shop", window=64, protocol=protocol)))
        for frame in self.frames:
            await ws.send(frame)
        async for message in ws:
            self.received.append(json.loads(message))


@pytest.fixture
async def relay_factory() -> AsyncIterator[Callable[[list[str]], Any]]:
    servers: list[Server] = []

    async def make(frames: list[str], protocol: int = 1) -> FakeRelay:
        relay = FakeRelay(frames, protocol)
        relay.server = await serve(
            relay.handler,
            "127.0.0.1",
            0,
            process_request=relay.check_token,
            # No subprotocols at all: what a relay from before protocol 2 does.
            subprotocols=[Subprotocol(SUBPROTOCOL_V2)] if protocol == 2 else None,
        )
        servers.append(relay.server)
        return relay

    yield make
    for server in servers:
        server.close()
        await server.wait_closed()


async def run_link(link: Link, until: Callable[[], bool]) -> None:
    stopping = asyncio.Event()
    task = asyncio.create_task(link.run(stopping))
    try:
        for _ in range(400):
            if until():
                break
            await asyncio.sleep(0.02)
    finally:
        stopping.set()
        await asyncio.wait_for(task, 10)


pytestmark = pytest.mark.integration


async def test_with_a_protocol_1_relay_each_webhook_is_acked_or_nacked_alone_after_intake(
    relay_factory: Callable[[list[str]], Any],
) -> None:
    frames = [encode(webhook(1)), '{"type":"future-thing"}', "not json", encode(webhook(2))]
    relay = await relay_factory(frames)
    taken: list[str] = []

    async def intake(frames: Sequence[Webhook]) -> list[IntakeResult]:
        assert len(frames) == 1
        (frame,) = frames
        taken.append(frame.id)
        return [IntakeResult(frame.id == "d-1", "" if frame.id == "d-1" else "queue unavailable")]

    status = BridgeStatus()
    link = Link(lambda: config_for(relay.url), intake, status, Backoff(0.05, 0.2))
    await run_link(link, lambda: len(relay.received) >= 2)
    assert taken == ["d-1", "d-2"]
    assert relay.received == [
        {"type": "ack", "id": "d-1"},
        {"type": "nack", "id": "d-2", "reason": "queue unavailable"},
    ]
    assert relay.headers[0]["Authorization"] == f"Bearer {TOKEN}"
    # It asked for protocol 2 and, refused it without a word, spoke protocol 1.
    assert relay.headers[0]["Sec-WebSocket-Protocol"] == SUBPROTOCOL_V2
    assert status.protocol == 1
    assert status.counters["bad_frames"] == 1
    assert status.tenant == "shop"


async def test_with_a_protocol_2_relay_a_batch_goes_to_intake_whole_and_is_acked_in_one_frame(
    relay_factory: Callable[[list[str], int], Any],
) -> None:
    batch = Webhooks(tuple(webhook(n) for n in range(1, 5)))
    relay = await relay_factory([encode(batch, 2), encode(Webhooks((webhook(5),)), 2)], 2)
    calls: list[list[str]] = []

    async def intake(frames: Sequence[Webhook]) -> list[IntakeResult]:
        calls.append([frame.id for frame in frames])
        return [IntakeResult(frame.id != "d-3", "queue unavailable") for frame in frames]

    status = BridgeStatus()
    link = Link(lambda: config_for(relay.url), intake, status, Backoff(0.05, 0.2))
    await run_link(link, lambda: len(relay.received) >= 3)
    assert calls == [["d-1", "d-2", "d-3", "d-4"], ["d-5"]]
    assert relay.received == [
        {"type": "ack", "ids": ["d-1", "d-2", "d-4"]},
        {"type": "nack", "id": "d-3", "reason": "queue unavailable"},
        {"type": "ack", "ids": ["d-5"]},
    ]
    assert status.protocol == 2
    assert (status.counters["acked"], status.counters["nacked"]) == (4, 1)
    assert status.counters["ack_frames"] == 2


async def test_rejected_token_is_reported_and_retried(
    relay_factory: Callable[[list[str]], Any],
) -> None:
    relay = await relay_factory([])
    status = BridgeStatus()
    backoff = Backoff(0.05, 0.2)
    link = Link(
        lambda: config_for(relay.url, relay_token="wrong", backoff_min=0.05, backoff_max=0.2),
        take_all,
        status,
        backoff,
    )
    await run_link(link, lambda: relay.rejected >= 3)
    assert relay.rejected >= 3
    assert status.connection == "rejected"
    assert "401" in status.last_error


async def test_a_429_is_retried_no_sooner_than_its_retry_after() -> None:
    attempts: list[float] = []

    def too_many(connection: ServerConnection, request: Request) -> Response:
        attempts.append(asyncio.get_running_loop().time())
        response = connection.respond(HTTPStatus.TOO_MANY_REQUESTS, "slow down\n")
        response.headers["Retry-After"] = "1"
        return response

    async with serve(lambda ws: ws.wait_closed(), "127.0.0.1", 0, process_request=too_many) as s:
        port = next(iter(s.sockets)).getsockname()[1]
        status = BridgeStatus()
        link = Link(
            lambda: config_for(f"ws://127.0.0.1:{port}/bridge"),
            take_all,
            status,
            Backoff(0.05, 0.2),
        )
        await run_link(link, lambda: len(attempts) >= 2)
    assert len(attempts) >= 2
    # The backoff alone would have come back within 0.2 s.
    assert attempts[1] - attempts[0] >= 1.0
    assert "429" in status.last_error


async def test_reconnect_request_drops_the_connection_and_connects_again(
    relay_factory: Callable[[list[str]], Any],
) -> None:
    relay = await relay_factory([])
    status = BridgeStatus()
    link = Link(
        lambda: config_for(relay.url),
        take_all,
        status,
        Backoff(0.05, 0.2),
    )
    kicked = False

    def until() -> bool:
        nonlocal kicked
        if status.counters["hellos"] == 1 and not kicked:
            kicked = True
            link.reconnect()
        return status.counters["hellos"] >= 2

    await run_link(link, until)
    assert status.counters["hellos"] == 2
    assert len(relay.headers) == 2


@pytest.mark.parametrize(("code", "said"), [(4401, "token revoked"), (4404, "tenant removed")])
async def test_a_close_no_reconnect_can_cure_is_logged_as_an_error_and_waited_out(
    code: int, said: str, caplog: pytest.LogCaptureFixture
) -> None:
    attempts: list[float] = []

    async def close_at_once(ws: ServerConnection) -> None:
        attempts.append(asyncio.get_running_loop().time())
        await ws.send(encode(Hello(tenant="shop", window=64, protocol=1)))
        await ws.close(code)

    async with serve(close_at_once, "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        status = BridgeStatus()
        config = config_for(f"ws://127.0.0.1:{port}/bridge", backoff_min=0.05, backoff_max=1.0)
        link = Link(lambda: config, take_all, status, Backoff(0.05, 1.0))
        with caplog.at_level("INFO", logger="bridge.link"):
            await run_link(link, lambda: len(attempts) >= 2 and status.connection == "rejected")
    assert len(attempts) >= 2
    # backoff_max, not backoff_min: the relay is not hammered.
    assert attempts[1] - attempts[0] >= 1.0
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert errors
    assert errors[0].getMessage().startswith(said)
    assert str(code) in errors[0].getMessage()
    assert status.connection == "rejected"
    assert said in status.last_error
