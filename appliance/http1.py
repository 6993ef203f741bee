"""HTTP/1.1 on the public listener: httptools' parser under one asyncio protocol a connection.

Hypercorn serves HTTP/2 on the public listener, and the admin listener; the
public listener's HTTP/1.1 connections (LINE's webhooks, nginx in front of
the relay) are served here, by the same ASGI app. The reason is cost, measured
on one core of this machine (``bench/http_stack.py``): a bare ASGI app answers
about 6,000 TLS requests a second on Hypercorn's h11 protocol and about
40,000 on this one, so Hypercorn's share of a webhook (~140 µs) was larger
than all the relay's own work on it (~115 µs: verify, store, deliver).

The surface is small on purpose, because the public HTTP/1.1 surface is (one
POST route and 404s):

- One request at a time per connection, in order: a pipelined request waits,
  and reading pauses until it may run.
- Request bodies framed by Content-Length or chunked (httptools decodes the
  chunks); the app reads them through ASGI ``receive``, and reading pauses
  while more than ``high_water`` bytes wait for it.
- Responses framed by the app's Content-Length, else chunked; ``Date`` added;
  ``Connection: close`` when the connection ends after it.
- Keep-alive per RFC 9112 (HTTP/1.0 only when asked), at most
  ``max_requests`` a connection; ``Expect: 100-continue`` answered when the app
  first reads the body.
- Upgrades are handed over, not served: a request asking for one that the
  ``upgrade`` handler wants (a bridge's WebSocket, when nginx reuses a
  keep-alive connection for it) gets the connection, with the request's bytes,
  once the requests before it are answered. Any other upgrade request is
  answered as plain HTTP and the connection closed after it.

Limits: a request's head (line and headers) must fit in ``max_head_bytes``
(431 beyond) and arrive whole within ``keep_alive_timeout`` of the
connection being ready for it, so an idle connection and a slow head
(slowloris) are closed alike. Deadlines for bodies and answers are the app's
(appliance/ingress.py). A request httptools cannot parse is answered 400 with
the connection closed: that includes Content-Length with Transfer-Encoding,
the shape of request smuggling.
"""

from __future__ import annotations

import asyncio
import collections
import email.utils
import http
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any, Protocol, cast
from urllib.parse import unquote

import httptools

from appliance.errors import HeadersTooLarge, MalformedRequest, RelayError, response_for

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
App = Callable[
    [Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]],
    Awaitable[None],
]

_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_NO_BODY_STATUSES = frozenset({204, 304})


class UpgradeHandler(Protocol):
    """Who takes over a connection whose request asks for an upgrade."""

    def wants(self, request_line: bytes) -> bool:
        """Whether to take the connection for this request (``GET /path HTTP/1.1``)."""

    def take_over(self, received: bytes) -> None:
        """Serve the connection from now on; ``received``: the request's head and what followed."""


@dataclass(frozen=True, slots=True)
class HTTP1Settings:
    """How the public listener serves HTTP/1.1 (from the relay config)."""

    #: Seconds an idle connection is kept, and a request's head may take to arrive.
    keep_alive_timeout: float = 30.0
    #: The longest request head (request line and headers), in bytes.
    max_head_bytes: int = 16 * 1024
    #: Requests served on one connection before it is closed.
    max_requests: int = 1000
    #: Body bytes held for the app before reading pauses.
    high_water: int = 64 * 1024
    #: Where one line per request goes, if anywhere (``hypercorn_access_log``).
    access_log: logging.Logger | None = None


class _Date:
    """The ``Date`` header's value, formatted once a second."""

    __slots__ = ("_second", "_value")

    def __init__(self) -> None:
        self._second = -1
        self._value = b""

    def now(self) -> bytes:
        second = int(time.time())
        if second != self._second:
            self._second = second
            self._value = email.utils.formatdate(second, usegmt=True).encode()
        return self._value


_date = _Date()


class _Exchange:
    """One request and its response: the ASGI ``receive`` and ``send`` of one call of the app."""

    __slots__ = (
        "body",
        "chunked",
        "complete",
        "connection",
        "delivered",
        "disconnected",
        "expect_continue",
        "finished",
        "head_only",
        "headers",
        "keep_alive",
        "scope",
        "sent_bytes",
        "started",
        "status",
        "waiter",
    )

    def __init__(self, scope: Scope, connection: HTTP1Connection, keep_alive: bool) -> None:
        self.scope = scope
        self.connection = connection
        self.body: collections.deque[bytes] = collections.deque()
        #: The whole body has been parsed / handed to the app.
        self.complete = False
        self.delivered = False
        self.disconnected = False
        self.expect_continue = False
        self.keep_alive = keep_alive
        self.head_only = scope["method"] == "HEAD"
        self.waiter: asyncio.Future[None] | None = None
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        #: The response's head was written; the whole response was.
        self.started = False
        self.finished = False
        self.chunked = False
        self.sent_bytes = 0

    def wake(self) -> None:
        """Wake a ``receive`` waiting for body or for the end."""
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def receive(self) -> Message:
        """ASGI ``receive``: the body in chunks, then (only) ``http.disconnect``."""
        connection = self.connection
        if self.expect_continue:
            self.expect_continue = False
            if not self.started:
                connection.write(_CONTINUE)
        while not self.body and not (self.complete and not self.delivered):
            if self.disconnected:
                return {"type": "http.disconnect"}
            connection.resume()
            self.waiter = asyncio.get_running_loop().create_future()
            await self.waiter
        chunk = self.body.popleft() if len(self.body) == 1 else b"".join(self.body)
        self.body.clear()
        connection.consumed(len(chunk))
        more = not self.complete
        self.delivered = not more
        return {"type": "http.request", "body": chunk, "more_body": more}

    async def send(self, message: Message) -> None:
        """ASGI ``send``: the response's start, then its body in one or more parts."""
        kind = message["type"]
        if kind == "http.response.start":
            if self.status:
                raise RuntimeError("http.response.start sent twice")
            self.status = int(message["status"])
            self.headers = list(message.get("headers", ()))
            return
        if kind != "http.response.body" or not self.status or self.finished:
            raise RuntimeError(f"unexpected ASGI message {kind!r}")
        body = bytes(message.get("body", b""))
        more = bool(message.get("more_body", False))
        data = b"" if self.started else self._head()
        self.started = True
        if self.head_only or self.status in _NO_BODY_STATUSES:
            body = b""
        self.sent_bytes += len(body)
        if self.chunked:
            if body:
                data += b"%x\r\n%b\r\n" % (len(body), body)
            if not more:
                data += b"0\r\n\r\n"
        else:
            data += body
        if not more:
            self.finished = True
        if self.disconnected:
            return
        self.connection.write(data)
        if self.finished:
            self.connection.answered(self)
        await self.connection.drained()

    def _head(self) -> bytes:
        """The status line and headers, with the framing and keep-alive decided."""
        lines = [_status_line(self.status)]
        framed = dated = False
        for name, value in self.headers:
            lowered = name.lower()
            if lowered in {b"content-length", b"transfer-encoding"}:
                framed = True
            elif lowered == b"date":
                dated = True
            elif lowered == b"connection" and value.lower() == b"close":
                self.keep_alive = False
                continue  # written once, below
            lines.append(b"%b: %b\r\n" % (name, value))
        if not dated:
            lines.append(b"date: %b\r\n" % _date.now())
        bodiless = self.head_only or self.status in _NO_BODY_STATUSES
        if not framed and not bodiless:
            self.chunked = True
            lines.append(b"transfer-encoding: chunked\r\n")
        self.keep_alive = self.keep_alive and self.connection.keeps_alive()
        if not self.keep_alive:
            lines.append(b"connection: close\r\n")
        lines.append(b"\r\n")
        return b"".join(lines)


def _status_line(status: int) -> bytes:
    try:
        reason = http.HTTPStatus(status).phrase.encode()
    except ValueError:
        reason = b""
    return b"HTTP/1.1 %d %b\r\n" % (status, reason)


class HTTP1Connection(asyncio.Protocol):
    """One HTTP/1.1 connection: parses requests, runs ``app`` for each in turn.

    ``state`` is copied into every request's ``scope["state"]``;
    ``on_lost`` is called once when the socket is gone. :attr:`done`
    resolves then, or when ``upgrade`` took the connection over
    (:attr:`handed_over`).
    """

    def __init__(
        self,
        app: App,
        settings: HTTP1Settings,
        state: dict[str, Any],
        on_lost: Callable[[], None],
        upgrade: UpgradeHandler | None = None,
    ) -> None:
        self._app = app
        self._settings = settings
        self._state = state
        self._on_lost = on_lost
        self._loop = asyncio.get_running_loop()
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        #: Set in connection_made from the transport.
        self._base: dict[str, Any] = {}
        # The request being parsed.
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._head_bytes = 0
        self._head_too_large = False
        self._parsing: _Exchange | None = None
        # Requests whose heads are parsed; the first is the one running.
        self._queue: collections.deque[_Exchange] = collections.deque()
        self._buffered = 0
        self._served = 0
        self._paused = False
        #: No more requests are served: an error, an upgrade, EOF or the server stopping.
        self._last = False
        #: Nothing more is parsed: an error or an upgrade.
        self._broken = False
        self._timer: asyncio.TimerHandle | None = None
        self._writable: asyncio.Future[None] | None = None
        self._lost = False
        self._upgrade = upgrade
        #: The head of a request ``upgrade`` wants, until the connection is its.
        self._upgrading: bytes | None = None
        self._handoff: bytes | None = None
        #: The connection was given to ``upgrade``: it is not this protocol's any more.
        self.handed_over = False
        self.done: asyncio.Future[None] = self._loop.create_future()

    # -- asyncio's side ------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self._base = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "scheme": "https" if transport.get_extra_info("sslcontext") else "http",
            "client": _address(transport.get_extra_info("peername")),
            "server": _address(transport.get_extra_info("sockname")),
            "root_path": "",
        }
        self._ready()

    def data_received(self, data: bytes) -> None:
        if self._broken:
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            self._stop_reading(broken=True)
            if self._upgrading is not None:
                self._handoff = self._upgrading + data[upgrade.args[0] :]
                if not self._queue:
                    self._hand_over()
            # Otherwise served as plain HTTP (the request is complete), then closed.
        except httptools.HttpParserError:
            self._refuse(HeadersTooLarge() if self._head_too_large else MalformedRequest())

    def eof_received(self) -> bool:
        self._stop_reading()
        parsing = self._parsing
        if parsing is not None and not parsing.complete:
            parsing.disconnected = True
            parsing.wake()
        # Kept open for an answer in progress (a TLS transport closes anyway).
        return bool(self._queue)

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._cancel_timer()
        for exchange in self._queue:
            exchange.disconnected = True
            exchange.wake()
        if self._parsing is not None:
            self._parsing.disconnected = True
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)
        self._on_lost()
        if not self.done.done():
            self.done.set_result(None)

    def pause_writing(self) -> None:
        self._writable = self._loop.create_future()

    def resume_writing(self) -> None:
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)
        self._writable = None

    # -- httptools' callbacks ------------------------------------------------

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []
        self._head_bytes = 0

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._count_head(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.lower(), value))
        self._count_head(len(name) + len(value) + 4)

    def on_headers_complete(self) -> None:
        self._cancel_timer()
        if self._last:
            # Sent after the server began to stop: not served; the answer in
            # progress says close, and the connection closes after it.
            self.pause()
            return
        parser = self._parser
        if parser.should_upgrade() and self._upgrade is not None:
            head = b"%b %b HTTP/%b\r\n" % (
                parser.get_method(),
                self._url,
                parser.get_http_version().encode(),
            )
            if self._upgrade.wants(head[:-2]):
                lines = [head, *(b"%b: %b\r\n" % header for header in self._headers), b"\r\n"]
                self._upgrading = b"".join(lines)
                return
        url = httptools.parse_url(self._url)
        raw_path = url.path or b"/"
        scope = dict(self._base)
        scope.update(
            http_version=parser.get_http_version(),
            method=parser.get_method().decode("ascii"),
            path=unquote(raw_path.decode("latin-1")),
            raw_path=raw_path,
            query_string=url.query or b"",
            headers=self._headers,
            state=dict(self._state),
        )
        exchange = _Exchange(scope, self, parser.should_keep_alive())
        exchange.expect_continue = any(
            name == b"expect" and value.lower() == b"100-continue" for name, value in self._headers
        )
        self._parsing = exchange
        self._queue.append(exchange)
        if len(self._queue) == 1:
            self._start(exchange)
        else:
            self.pause()  # pipelined: read on when it may run

    def on_body(self, body: bytes) -> None:
        exchange = self._parsing
        if exchange is None:
            return
        exchange.body.append(body)
        self._buffered += len(body)
        if self._buffered > self._settings.high_water:
            self.pause()
        exchange.wake()

    def on_message_complete(self) -> None:
        exchange = self._parsing
        self._parsing = None
        if exchange is not None:
            exchange.complete = True
            exchange.wake()

    # -- for the exchanges ---------------------------------------------------

    def write(self, data: bytes) -> None:
        """Write ``data`` unless the socket is gone."""
        if not self._lost and self._transport is not None:
            self._transport.write(data)

    async def drained(self) -> None:
        """Wait until the transport takes more (its buffer under its high-water mark)."""
        if self._writable is not None:
            await self._writable

    def keeps_alive(self) -> bool:
        """Whether the connection may carry another request after the one answering now."""
        open_on = not self._last or self._handoff is not None  # kept for the hand-over
        return open_on and self._served + 1 < self._settings.max_requests

    def consumed(self, size: int) -> None:
        """The app took ``size`` body bytes."""
        self._buffered -= size

    def pause(self) -> None:
        """Stop reading from the socket."""
        if not self._paused and self._transport is not None:
            self._paused = True
            self._transport.pause_reading()

    def resume(self) -> None:
        """Read on, unless a pipelined request or a full buffer says wait."""
        if (
            self._paused
            and not self._lost
            and len(self._queue) <= 1
            and self._buffered <= self._settings.high_water
        ):
            self._paused = False
            cast(asyncio.Transport, self._transport).resume_reading()

    def answered(self, exchange: _Exchange) -> None:
        """``exchange``'s response is written whole."""
        self._served += 1
        self._log(exchange)
        if not exchange.keep_alive or not exchange.complete or exchange.body:
            # A body not read to its end leaves the next request's start unknown.
            self._close()

    # -- the connection's course ---------------------------------------------

    def end(self) -> None:
        """The server stops: close now if idle, else after the answer in progress
        (whose body is still read to its end)."""
        self._last = True
        self._cancel_timer()
        if not self._queue:
            self._close()

    def _start(self, exchange: _Exchange) -> None:
        self._loop.create_task(self._run(exchange))

    async def _run(self, exchange: _Exchange) -> None:
        try:
            await self._app(exchange.scope, exchange.receive, exchange.send)
        except Exception:
            log.exception("the app failed on a request", extra={"path": exchange.scope["path"]})
        if not exchange.finished:
            if exchange.started:
                self._abort()
            else:
                exchange.status, exchange.headers = 500, []
                exchange.keep_alive = False
                await exchange.send({"type": "http.response.body", "body": b""})
        self._queue.popleft()
        if self._lost or self._transport is None or self._transport.is_closing():
            return
        if self._handoff is not None and not self._queue:
            self._hand_over()
        elif self._queue:
            self._start(self._queue[0])
            self.resume()
        elif self._last:
            self._close()
        else:
            self._ready()

    def _hand_over(self) -> None:
        assert self._upgrade is not None
        assert self._handoff is not None
        self._cancel_timer()
        self.handed_over = True
        self._upgrade.take_over(self._handoff)
        if not self.done.done():
            self.done.set_result(None)

    def _ready(self) -> None:
        """Waiting for the next request's head, for at most keep_alive_timeout."""
        self._cancel_timer()
        self._timer = self._loop.call_later(self._settings.keep_alive_timeout, self._idle)
        self.resume()

    def _idle(self) -> None:
        self._timer = None
        if not self._queue:
            self._close()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _count_head(self, size: int) -> None:
        self._head_bytes += size
        if self._head_bytes > self._settings.max_head_bytes:
            self._head_too_large = True
            raise HeadersTooLarge

    def _refuse(self, error: RelayError) -> None:
        """Answer a request that cannot be parsed (if nothing is answering), then close."""
        self._stop_reading(broken=True)
        parsing = self._parsing
        if parsing is not None and parsing in self._queue:
            # Its head was fine; its body broke off: the app sees the client gone.
            parsing.disconnected = True
            parsing.wake()
            return
        if self._queue:
            return  # the answers in progress go out, then the connection closes
        # response_for gives these errors their Connection: close (errors.py).
        status, headers, body = response_for(error)
        head = [_status_line(status), *(b"%b: %b\r\n" % header for header in headers)]
        head.append(b"content-length: %d\r\ndate: %b\r\n\r\n" % (len(body), _date.now()))
        self.write(b"".join(head) + body)
        self._close()

    def _stop_reading(self, broken: bool = False) -> None:
        self._last = True
        self._broken = self._broken or broken
        self._cancel_timer()
        self.pause()

    def _close(self) -> None:
        self._last = True
        self._cancel_timer()
        if self._transport is not None and not self._transport.is_closing():
            self._transport.close()

    def _abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def _log(self, exchange: _Exchange) -> None:
        access = self._settings.access_log
        if access is None:
            return
        scope = exchange.scope
        client = scope["client"]
        access.info(
            '%s - - "%s %s HTTP/%s" %d %d',
            f"{client[0]}:{client[1]}" if client else "-",
            scope["method"],
            scope["raw_path"].decode("latin-1"),
            scope["http_version"],
            exchange.status,
            exchange.sent_bytes,
        )


def _address(value: Any) -> tuple[str, int] | None:
    if isinstance(value, tuple) and len(value) >= 2:
        return str(value[0]), int(value[1])
    return None
