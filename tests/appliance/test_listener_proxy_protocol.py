"""The public listener behind a load balancer that sends PROXY protocol headers, in-process
on real sockets: whom it believes, and the caps applied to the client the header names.

The test plays the balancer from 127.0.0.1 (``proxy_protocol_from``), writing the
headers itself (tests/support/proxy_headers.py); other loopback addresses are
clients straight to the listener.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hypercorn.config import Config as HypercornConfig

from appliance.listener import ListenerLimits, PublicListener
from appliance.metrics import Metrics
from appliance.proxies import TrustedProxies
from tests.appliance.test_listener import App, Running, closed_by_server
from tests.support import proxy_headers
from tests.support.waiting import async_wait_for
from tls import policy
from tls.pki import EmbeddedPKI

pytestmark = pytest.mark.integration

BALANCER = "127.0.0.1"
REQUEST = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


async def start(
    limits: ListenerLimits, context: ssl.SSLContext | None = None
) -> tuple[Running, asyncio.Event, asyncio.Task[None]]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    app = App()
    listener = PublicListener(
        [sock],
        app,
        HypercornConfig(),
        context,
        limits,
        Metrics(),
        balancers=TrustedProxies([BALANCER]),
    )
    stop = asyncio.Event()
    task = asyncio.create_task(listener.serve(stop.wait))
    return Running(listener, sock.getsockname()[1], app), stop, task


@pytest.fixture
async def behind() -> AsyncIterator[Running]:
    running, stop, task = await start(
        ListenerLimits(max_connections=8, max_connections_per_address=2, proxy_header_timeout=0.5)
    )
    yield running
    stop.set()
    await task


async def through(
    port: int, header: bytes, source: str = BALANCER
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection from ``source`` that has written ``header``."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    writer.write(header)
    await writer.drain()
    return reader, writer


async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
    writer.write(REQUEST)
    data = await asyncio.wait_for(reader.read(1024), 5)
    writer.close()
    return data


@pytest.mark.parametrize("version", [1, 2])
async def test_the_client_a_balancers_header_names_is_the_connections_peer(
    behind: Running, version: int
) -> None:
    header = (proxy_headers.v1 if version == 1 else proxy_headers.v2)("203.0.113.7")
    # Header and request in one segment: the request's bytes are not eaten with the header.
    reader, writer = await through(behind.port, header + REQUEST)
    assert (await asyncio.wait_for(reader.read(1024), 5)).startswith(b"HTTP/1.1 200")
    writer.close()
    (seen,) = behind.app.seen
    assert seen is not None
    assert (seen.peer, seen.key, seen.trusted) == ("203.0.113.7", "203.0.113.7", False)
    assert behind.listener.metrics.connections_accepted._value.get() == 1


async def test_a_header_that_arrives_in_pieces_is_read_whole(behind: Running) -> None:
    header = proxy_headers.v2("2001:db8::7", tlvs=b"\x05\x00\x04abcd")
    reader, writer = await through(behind.port, header[:5])
    for piece in (header[5:14], header[14:30], header[30:]):
        await asyncio.sleep(0.05)
        writer.write(piece)
        await writer.drain()
    assert (await answer(reader, writer)).startswith(b"HTTP/1.1 200")
    (seen,) = behind.app.seen
    assert seen is not None
    assert (seen.peer, seen.key) == ("2001:db8::7", "2001:db8::/64")


async def test_a_local_header_leaves_the_connection_the_balancers(behind: Running) -> None:
    reader, writer = await through(behind.port, proxy_headers.v2(local=True))
    assert (await answer(reader, writer)).startswith(b"HTTP/1.1 200")
    (seen,) = behind.app.seen
    assert seen is not None
    assert seen.peer == BALANCER


async def test_the_per_address_cap_counts_each_client_not_the_balancer(
    behind: Running,
) -> None:
    held = [await through(behind.port, proxy_headers.v2("198.51.100.1")) for _ in range(2)]
    # Past the client's cap (2): refused, though the balancer holds only three.
    refused, _ = await through(behind.port, proxy_headers.v2("198.51.100.1"))
    assert await closed_by_server(refused)
    assert behind.refused("per_address") == 1
    other = await through(behind.port, proxy_headers.v2("198.51.100.2"))
    assert (await answer(*other)).startswith(b"HTTP/1.1 200")
    for _, writer in held:
        writer.close()


async def test_the_connection_rate_counts_each_client_not_the_balancer() -> None:
    running, stop, task = await start(ListenerLimits(connection_rate_per_address=0.5))
    try:
        # A burst of ten seconds' worth (five) per client.
        for _ in range(5):
            reader, writer = await through(running.port, proxy_headers.v2("198.51.100.3"))
            assert (await answer(reader, writer)).startswith(b"HTTP/1.1 200")
        reader, _ = await through(running.port, proxy_headers.v2("198.51.100.3"))
        assert await closed_by_server(reader)
        assert running.refused("rate") == 1
        reader, writer = await through(running.port, proxy_headers.v2("198.51.100.4"))
        assert (await answer(reader, writer)).startswith(b"HTTP/1.1 200")
    finally:
        stop.set()
        await task


async def test_a_balancers_connection_without_a_valid_header_is_dropped(
    behind: Running,
) -> None:
    # A request straight away, with no header.
    reader, _ = await through(behind.port, REQUEST)
    assert await closed_by_server(reader)
    # Nothing at all: dropped once proxy_header_timeout (0.5 s here) has passed.
    silent, _ = await through(behind.port, b"")
    assert await closed_by_server(silent)
    # A header cut short, then nothing.
    cut, _ = await through(behind.port, proxy_headers.v2()[:20])
    assert await closed_by_server(cut)
    # A header cut short, then the end of the connection.
    _, gone = await through(behind.port, proxy_headers.v1()[:20])
    gone.close()

    async def four_dropped() -> bool:
        return behind.refused("proxy_protocol") == 4

    await async_wait_for(four_dropped, "the fourth connection dropped")
    assert behind.app.seen == []
    assert behind.listener.counter.open == 0


async def test_a_header_from_anyone_else_is_not_believed(behind: Running) -> None:
    reader, writer = await through(behind.port, proxy_headers.v1("203.0.113.9"), "127.0.0.2")
    # Read as the client's request line: Hypercorn's 400, the app never asked.
    assert (await answer(reader, writer)).startswith(b"HTTP/1.1 400")
    assert behind.app.seen == []
    assert behind.refused("proxy_protocol") == 0


@pytest.fixture(scope="module")
def tls_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    pki = EmbeddedPKI(tmp_path_factory.mktemp("pki"))
    pki.ensure()
    server = policy.server_context("modern", pki.chain, pki.key)
    client = ssl.create_default_context(cafile=str(Path(pki.root)))
    return server, client


async def tls_get(port: int, client: ssl.SSLContext, source: str, header: bytes = b"") -> bytes:
    """A TLS request after ``header`` (written before the handshake, as a balancer does)."""
    sock = socket.create_connection(("127.0.0.1", port), source_address=(source, 0))
    sock.sendall(header)
    reader, writer = await asyncio.open_connection(
        sock=sock, ssl=client, server_hostname="localhost"
    )
    return await answer(reader, writer)


async def test_over_tls_the_header_comes_before_the_handshake(
    tls_pair: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    server, client = tls_pair
    running, stop, task = await start(ListenerLimits(), server)
    try:
        header = proxy_headers.v2("203.0.113.7")
        assert (await tls_get(running.port, client, BALANCER, header)).startswith(b"HTTP/1.1 200")
        # From anyone else the same header is bytes before a ClientHello: the handshake fails.
        with pytest.raises((ssl.SSLError, ConnectionError)):
            await tls_get(running.port, client, "127.0.0.2", header)
        assert running.listener.metrics.tls_handshake_failures._value.get() == 1
        # A client straight to the listener, without a header, is itself.
        assert (await tls_get(running.port, client, "127.0.0.2")).startswith(b"HTTP/1.1 200")
        assert [seen.peer for seen in running.app.seen if seen] == ["203.0.113.7", "127.0.0.2"]
    finally:
        stop.set()
        await task
