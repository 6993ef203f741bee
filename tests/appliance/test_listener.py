"""The public listener in-process, on real sockets: admission, caps, the HTTP/2 guard."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.errors
import pytest
from hypercorn.config import Config as HypercornConfig

from appliance.listener import (
    EOF_GRACE,
    Connection,
    ListenerLimits,
    PublicListener,
    connection_of,
)
from appliance.metrics import Metrics
from tls import policy
from tls.pki import EmbeddedPKI

Scope = dict[str, Any]

pytestmark = pytest.mark.integration


class App:
    """Answers every request 200 and remembers the connection records it saw."""

    def __init__(self) -> None:
        self.seen: list[Connection | None] = []

    async def __call__(
        self,
        scope: Scope,
        receive: Callable[[], Awaitable[dict[str, Any]]],
        send: Callable[[dict[str, Any]], Awaitable[None]],
    ) -> None:
        if scope["type"] != "http":
            return
        self.seen.append(connection_of(scope))
        while (await receive()).get("more_body"):
            pass
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


class Running:
    def __init__(self, listener: PublicListener, port: int, app: App) -> None:
        self.listener, self.port, self.app = listener, port, app

    def refused(self, reason: str) -> float:
        return self.listener.metrics.connections_refused[reason]._value.get()


async def start(
    limits: ListenerLimits, context: ssl.SSLContext | None = None
) -> tuple[Running, asyncio.Event, asyncio.Task[None]]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    app = App()
    listener = PublicListener([sock], app, HypercornConfig(), context, limits, Metrics())
    stop = asyncio.Event()
    task = asyncio.create_task(listener.serve(stop.wait))
    return Running(listener, sock.getsockname()[1], app), stop, task


@pytest.fixture
async def plain() -> AsyncIterator[Running]:
    running, stop, task = await start(
        ListenerLimits(max_connections=4, max_connections_per_address=2)
    )
    yield running
    stop.set()
    await task


async def get(port: int, source: str = "127.0.0.1") -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    answer = await asyncio.wait_for(reader.read(1024), 5)
    writer.close()
    return answer


async def hold(port: int, source: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))


async def read_until_closed(reader: asyncio.StreamReader) -> bool:
    """Read whatever the server sends until it closes; True once it has."""
    try:
        while await asyncio.wait_for(reader.read(65536), 5):
            pass
    except (ConnectionResetError, ssl.SSLError):
        pass
    return True


async def closed_by_server(reader: asyncio.StreamReader) -> bool:
    try:
        return await asyncio.wait_for(reader.read(1), 5) == b""
    except ConnectionResetError:
        return True


async def test_the_app_sees_the_connection_it_came_in_on(plain: Running) -> None:
    assert (await get(plain.port)).startswith(b"HTTP/1.1 200")
    (seen,) = plain.app.seen
    assert seen is not None
    assert (seen.peer, seen.key) == ("127.0.0.1", "127.0.0.1")


async def test_accepted_sockets_do_not_wait_for_delayed_acks(plain: Running) -> None:
    await get(plain.port)
    (seen,) = plain.app.seen
    assert seen is not None
    assert seen.transport is not None
    sock = seen.transport.get_extra_info("socket")
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1


async def test_one_address_is_refused_past_its_cap_and_others_are_not(plain: Running) -> None:
    held = [await hold(plain.port, "127.0.0.2") for _ in range(2)]
    extra_reader, _ = await hold(plain.port, "127.0.0.2")
    assert await closed_by_server(extra_reader)
    assert plain.refused("per_address") == 1
    assert (await get(plain.port, "127.0.0.3")).startswith(b"HTTP/1.1 200")
    for _, writer in held:
        writer.close()


async def test_the_total_cap_refuses_everyone_past_it(plain: Running) -> None:
    held = [await hold(plain.port, f"127.0.0.{n}") for n in (2, 2, 3, 3)]
    reader, _ = await hold(plain.port, "127.0.0.4")
    assert await closed_by_server(reader)
    assert plain.refused("total") == 1
    for _, writer in held:
        writer.close()


async def test_a_connection_its_client_closed_gives_its_slot_back_soon(plain: Running) -> None:
    # Hypercorn alone would hold it until its keep-alive timer (5 s here, 30 s in the relay).
    for _ in range(3):
        held = [await hold(plain.port, "127.0.0.2") for _ in range(2)]
        for _, writer in held:
            writer.close()
        await asyncio.sleep(EOF_GRACE + 0.3)
        assert plain.listener.counter.open == 0
    assert plain.refused("per_address") == 0


async def test_new_connections_from_one_address_are_rate_limited() -> None:
    running, stop, task = await start(ListenerLimits(connection_rate_per_address=0.5))
    try:
        # A burst of ten seconds' worth (five), then nothing until a token refills.
        answers = [await get(running.port, "127.0.0.2") for _ in range(5)]
        assert all(a.startswith(b"HTTP/1.1 200") for a in answers)
        reader, _ = await hold(running.port, "127.0.0.2")
        assert await closed_by_server(reader)
        assert running.refused("rate") == 1
        assert (await get(running.port, "127.0.0.3")).startswith(b"HTTP/1.1 200")
    finally:
        stop.set()
        await task


@pytest.fixture(scope="module")
def tls_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    pki = EmbeddedPKI(tmp_path_factory.mktemp("pki"))
    pki.ensure()
    server = policy.server_context("modern", pki.chain, pki.key)
    client = ssl.create_default_context(cafile=str(Path(pki.root)))
    client.set_alpn_protocols(["h2"])
    return server, client


async def test_an_http2_client_resetting_streams_past_the_burst_is_cut_off(
    tls_pair: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    server_context, client_context = tls_pair
    running, stop, task = await start(
        ListenerLimits(h2_reset_burst=20, h2_reset_rate=1), server_context
    )
    try:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", running.port, ssl=client_context, server_hostname="127.0.0.1"
        )
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        conn.initiate_connection()
        for _ in range(200):
            stream = conn.get_next_available_stream_id()
            conn.send_headers(
                stream,
                [(":method", "GET"), (":path", "/"), (":scheme", "https"), (":authority", "x")],
            )
            conn.reset_stream(stream, h2.errors.ErrorCodes.CANCEL)
        writer.write(conn.data_to_send())
        await writer.drain()
        assert await read_until_closed(reader)
        trips = running.listener.metrics.h2_guard_trips["rapid_reset"]._value.get()
        assert trips == 1
        # Far fewer than the 200 sent reached the app.
        assert len(running.app.seen) < 50
    finally:
        stop.set()
        await task
