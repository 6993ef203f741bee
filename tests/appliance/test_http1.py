"""HTTP/1.1 connections (appliance/http1.py) served on a real loopback socket, driven by raw bytes."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest

from appliance.http1 import HTTP1Connection, HTTP1Settings

App = Callable[[Any, Any, Any], Awaitable[None]]


async def echo(scope: Any, receive: Any, send: Any) -> None:
    """Answer with the method, path and body it was sent."""
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    out = f"{scope['method']} {scope['path']} ".encode() + body
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-length", str(len(out)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": out})


class Served:
    """A listening socket whose connections are :class:`HTTP1Connection` s."""

    def __init__(self, server: asyncio.Server, protocols: list[HTTP1Connection]) -> None:
        self.server = server
        self.protocols = protocols
        self.port = server.sockets[0].getsockname()[1]

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", self.port)


class Upgrades:
    """Takes connections whose request upgrades on ``/bridge``; keeps what it was handed."""

    def __init__(self) -> None:
        self.received: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def wants(self, request_line: bytes) -> bool:
        return request_line.startswith(b"GET /bridge ")

    def take_over(self, received: bytes) -> None:
        self.received.set_result(received)


@asynccontextmanager
async def serving(
    app: App = echo, upgrades: Upgrades | None = None, **settings: Any
) -> AsyncIterator[Served]:
    protocols: list[HTTP1Connection] = []

    def make() -> HTTP1Connection:
        protocol = HTTP1Connection(
            app, HTTP1Settings(**settings), {"k": "v"}, lambda: None, upgrades
        )
        protocols.append(protocol)
        return protocol

    server = await asyncio.get_running_loop().create_server(make, "127.0.0.1", 0)
    try:
        yield Served(server, protocols)
    finally:
        server.close()
        for protocol in protocols:
            protocol.end()


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[bytes, bytes], bytes]:
    """One response: status, headers (lower-cased names), body (Content-Length or chunked)."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ")[1])
    headers = dict(
        (name.strip().lower(), value.strip())
        for name, _, value in (line.partition(b":") for line in lines[1:] if line)
    )
    if b"content-length" in headers:
        body = await reader.readexactly(int(headers[b"content-length"]))
    elif headers.get(b"transfer-encoding") == b"chunked":
        body = b""
        while size := int((await reader.readuntil(b"\r\n")).strip(), 16):
            body += await reader.readexactly(size)
            await reader.readexactly(2)
        await reader.readexactly(2)
    else:
        body = b""
    return status, headers, body


def post(path: str, body: bytes, extra: bytes = b"") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n".encode()
        + extra
        + b"\r\n"
        + body
    )


async def answered_then_closed(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """The next response's status and body; it must say close, and the connection close."""
    status, headers, body = await read_response(reader)
    assert headers[b"connection"] == b"close"
    assert await closed(reader)
    return status, body


async def closed(reader: asyncio.StreamReader) -> bool:
    """Whether the server closed the connection (EOF within a second)."""
    try:
        return await asyncio.wait_for(reader.read(), 1) == b""
    except (TimeoutError, ConnectionResetError):
        return False


async def test_keep_alive_requests_are_answered_in_turn_on_one_connection() -> None:
    async with serving() as served:
        reader, writer = await served.connect()
        for n in range(3):
            writer.write(post(f"/webhook/t{n}", b"body-%d" % n))
            status, headers, body = await read_response(reader)
            assert (status, body) == (200, b"POST /webhook/t%d body-%d" % (n, n))
            assert b"connection" not in headers
            assert re.fullmatch(rb"\w{3}, \d\d \w{3} \d{4} \d\d:\d\d:\d\d GMT", headers[b"date"])
        assert len(served.protocols) == 1
        writer.close()


async def test_pipelined_requests_run_one_at_a_time_in_order() -> None:
    running: list[str] = []
    overlap = False

    async def slow(scope: Any, receive: Any, send: Any) -> None:
        nonlocal overlap
        overlap = overlap or bool(running)
        running.append(scope["path"])
        await asyncio.sleep(0.05 if scope["path"] == "/a" else 0)
        await echo(scope, receive, send)
        running.remove(scope["path"])

    async with serving(slow) as served:
        reader, writer = await served.connect()
        writer.write(post("/a", b"1") + post("/b", b"2") + post("/c", b"3"))
        answers = [(await read_response(reader))[2] for _ in range(3)]
    assert answers == [b"POST /a 1", b"POST /b 2", b"POST /c 3"]
    assert not overlap


async def test_a_chunked_request_body_reaches_the_app_whole() -> None:
    async with serving() as served:
        reader, writer = await served.connect()
        writer.write(
            b"POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
        )
        assert (await read_response(reader))[2] == b"POST /x hello world"


async def test_a_response_without_content_length_is_sent_chunked() -> None:
    async def parts(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"one ", "more_body": True})
        await send({"type": "http.response.body", "body": b"two"})

    async with serving(parts) as served:
        reader, writer = await served.connect()
        writer.write(post("/x", b""))
        _, headers, body = await read_response(reader)
        assert headers[b"transfer-encoding"] == b"chunked"
        assert body == b"one two"


async def test_http_1_0_is_answered_and_closed() -> None:
    async with serving() as served:
        reader, writer = await served.connect()
        writer.write(b"POST /x HTTP/1.0\r\nContent-Length: 2\r\n\r\nhi")
        assert await answered_then_closed(reader) == (200, b"POST /x hi")


async def test_content_length_with_transfer_encoding_is_refused_400_and_closed() -> None:
    calls: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        calls.append(scope["path"])
        await echo(scope, receive, send)

    async with serving(app) as served:
        reader, writer = await served.connect()
        writer.write(
            b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 40\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        status, headers, body = await read_response(reader)
        assert (status, body) == (400, b'{"error": "malformed_request"}')
        assert headers[b"connection"] == b"close"
        assert await closed(reader)
    assert calls == []


async def test_a_head_over_the_limit_is_refused_431_and_closed() -> None:
    async with serving(max_head_bytes=1024) as served:
        reader, writer = await served.connect()
        writer.write(b"GET /x HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 2000 + b"\r\n\r\n")
        status, headers, body = await read_response(reader)
        assert (status, body) == (431, b'{"error": "headers_too_large"}')
        assert headers[b"connection"] == b"close"
        assert await closed(reader)


async def test_an_idle_connection_and_a_slow_head_are_closed_after_the_keep_alive_timeout() -> None:
    async with serving(keep_alive_timeout=0.2) as served:
        idle_reader, _ = await served.connect()
        slow_reader, slow_writer = await served.connect()
        slow_writer.write(b"GET /x HTTP/1.1\r\n")
        await asyncio.sleep(0.1)
        slow_writer.write(b"Host: x\r\n")  # still no end of head
        assert await closed(idle_reader)
        assert await closed(slow_reader)


async def test_a_request_in_progress_is_not_cut_by_the_keep_alive_timeout() -> None:
    async def slow(scope: Any, receive: Any, send: Any) -> None:
        await asyncio.sleep(0.4)
        await echo(scope, receive, send)

    async with serving(slow, keep_alive_timeout=0.2) as served:
        reader, writer = await served.connect()
        writer.write(post("/x", b"late"))
        assert (await read_response(reader))[2] == b"POST /x late"


async def test_expect_100_continue_is_answered_when_the_app_reads_the_body() -> None:
    async with serving() as served:
        reader, writer = await served.connect()
        writer.write(
            b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n"
        )
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(b"body")
        assert (await read_response(reader))[2] == b"POST /x body"


async def test_the_last_of_max_requests_says_close() -> None:
    async with serving(max_requests=2) as served:
        reader, writer = await served.connect()
        writer.write(post("/1", b""))
        assert b"connection" not in (await read_response(reader))[1]
        writer.write(post("/2", b""))
        assert (await read_response(reader))[1][b"connection"] == b"close"
        assert await closed(reader)


async def test_an_app_that_fails_gets_a_500_and_the_connection_closed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def broken(scope: Any, receive: Any, send: Any) -> None:
        raise RuntimeError("bug")

    async with serving(broken) as served:
        reader, writer = await served.connect()
        writer.write(post("/x", b""))
        status, headers, _ = await read_response(reader)
        assert (status, headers[b"connection"]) == (500, b"close")
        assert await closed(reader)
    assert any(record.levelno == logging.ERROR for record in caplog.records)


async def test_a_client_gone_mid_body_is_a_disconnect_for_the_app() -> None:
    seen: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

    async def reader_app(scope: Any, receive: Any, send: Any) -> None:
        messages = [await receive()]
        while messages[-1]["type"] == "http.request" and messages[-1]["more_body"]:
            messages.append(await receive())
        seen.set_result(messages[-1])

    async with serving(reader_app) as served:
        _, writer = await served.connect()
        writer.write(b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\npart")
        await writer.drain()
        writer.close()
        assert (await asyncio.wait_for(seen, 5))["type"] == "http.disconnect"


async def test_ending_closes_idle_connections_now_and_busy_ones_after_their_answer() -> None:
    release = asyncio.Event()

    async def held(scope: Any, receive: Any, send: Any) -> None:
        await release.wait()
        await echo(scope, receive, send)

    async with serving(held) as served:
        idle_reader, _ = await served.connect()
        busy_reader, busy_writer = await served.connect()
        busy_writer.write(post("/x", b"in flight"))
        await asyncio.sleep(0.1)
        for protocol in served.protocols:
            protocol.end()
        assert await closed(idle_reader)
        release.set()
        assert await answered_then_closed(busy_reader) == (200, b"POST /x in flight")


async def test_ending_mid_body_still_reads_the_body_and_answers_with_close() -> None:
    async with serving() as served:
        reader, writer = await served.connect()
        writer.write(b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 8\r\n\r\nfirst")
        await asyncio.sleep(0.1)
        served.protocols[0].end()
        writer.write(b"-ok" + post("/after-the-end", b""))
        status, headers, body = await read_response(reader)
        assert (status, body, headers[b"connection"]) == (200, b"POST /x first-ok", b"close")
        assert await closed(reader)  # the request sent after the end was not served


async def test_a_wanted_upgrade_gets_the_connection_after_the_answers_before_it() -> None:
    upgrades = Upgrades()
    upgrade = (
        b"GET /bridge HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
    )
    async with serving(upgrades=upgrades) as served:
        reader, writer = await served.connect()
        writer.write(post("/webhook/t", b"first") + upgrade + b"frame bytes")
        status, headers, body = await read_response(reader)
        assert (status, body) == (200, b"POST /webhook/t first")
        assert b"connection" not in headers  # kept open for the hand-over
        received = await asyncio.wait_for(upgrades.received, 5)
        assert served.protocols[0].handed_over
        assert await asyncio.wait_for(served.protocols[0].done, 5) is None
    assert received == (
        b"GET /bridge HTTP/1.1\r\nhost: x\r\nconnection: Upgrade\r\nupgrade: websocket\r\n\r\n"
        b"frame bytes"
    )


async def test_an_upgrade_request_not_wanted_is_answered_as_plain_http_then_closed() -> None:
    async with serving(upgrades=Upgrades()) as served:
        reader, writer = await served.connect()
        writer.write(
            b"GET /other HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
        )
        assert await answered_then_closed(reader) == (200, b"GET /other ")


async def test_a_head_request_gets_headers_and_no_body() -> None:
    async with serving() as served:
        reader, writer = await served.connect()
        writer.write(b"HEAD /x HTTP/1.1\r\nHost: x\r\n\r\n" + post("/y", b"next"))
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200 OK\r\n")
        # The next response follows at once: no body bytes came between.
        assert (await read_response(reader))[2] == b"POST /y next"


async def test_the_scope_carries_the_path_query_client_and_state() -> None:
    scopes: list[Any] = []

    async def keep(scope: Any, receive: Any, send: Any) -> None:
        scopes.append(scope)
        await echo(scope, receive, send)

    async with serving(keep) as served:
        reader, writer = await served.connect()
        writer.write(b"GET /a%20b?q=1 HTTP/1.1\r\nHost: x\r\nX-Line-Signature: s\r\n\r\n")
        await read_response(reader)
    scope = scopes[0]
    assert (scope["path"], scope["raw_path"], scope["query_string"]) == ("/a b", b"/a%20b", b"q=1")
    assert scope["http_version"] == "1.1"
    assert scope["scheme"] == "http"
    assert scope["client"][0] == "127.0.0.1"
    assert (b"x-line-signature", b"s") in scope["headers"]
    assert scope["state"] == {"k": "v"}


async def test_each_answer_is_one_access_log_line_when_asked(
    caplog: pytest.LogCaptureFixture,
) -> None:
    access = logging.getLogger("test.http1.access")
    caplog.set_level(logging.INFO, logger=access.name)
    async with serving(access_log=access) as served:
        reader, writer = await served.connect()
        writer.write(post("/webhook/t", b"abc"))
        await read_response(reader)
    lines = [r.getMessage() for r in caplog.records if r.name == access.name]
    assert len(lines) == 1
    assert re.fullmatch(r'127\.0\.0\.1:\d+ - - "POST /webhook/t HTTP/1\.1" 200 19', lines[0])


async def test_a_large_body_is_read_with_reading_paused_between_chunks() -> None:
    body = bytes(range(256)) * 4096  # 1 MiB
    async with serving(high_water=16 * 1024) as served:
        reader, writer = await served.connect()
        writer.write(post("/big", body))
        status, _, answer = await read_response(reader)
    assert status == 200
    assert answer == b"POST /big " + body
