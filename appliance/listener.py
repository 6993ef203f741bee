"""The public listener: accepting connections, then routing each to what serves it.

``hypercorn.asyncio.serve`` owns its accept loop and offers no hook for
limits, so the relay accepts the public listener's connections itself and
routes each admitted one by what it speaks:

- HTTP/2 (ALPN ``h2``, or the prior-knowledge preface without TLS) to
  Hypercorn's per-connection server (``hypercorn.asyncio.tcp_server.TCPServer``,
  the object ``serve`` builds for every connection too);
- an HTTP/1.1 connection whose first request is ``GET /bridge...`` to the
  bridge endpoint (python-websockets, appliance/bridges.py);
- any other HTTP/1.1 connection to :mod:`appliance.http1` (the webhooks'
  path: a seventh of Hypercorn's cost per request, README "Performance").

Before that, and before any TLS is spent on a connection:

- **Caps.** At most ``max_connections`` open in all and
  ``max_connections_per_address`` from one address (IPv6 per /64), and new
  connections from one address at a bounded rate. Refused connections are
  closed at once, before the TLS handshake, and counted.
- **Out of file descriptors.** CPython's accept loop logs a traceback for
  every failed ``accept()`` (measured: 1-3 MB of log a second). Here the
  condition is logged once per interval, the waiting client is refused at
  once through a spare descriptor kept for the purpose, and accepting
  pauses for a moment.
- **PROXY protocol.** A connection from a configured balancer
  (``proxy_protocol_from``) must open with a PROXY header
  (:mod:`appliance.proxyproto`) within ``proxy_header_timeout``; the client
  it names is then the connection's peer, and the caps and the rate apply
  to that client instead of the balancer. No one else's header is looked for.
- **TLS** with a handshake deadline; failures are counted, not logged as errors.
- **HTTP/2 guard** (:mod:`appliance.h2guard`) between the socket and
  Hypercorn: rapid resets and stream floods close the connection, which is
  not read any further.
- A :class:`Connection` record per connection, handed to the app in the
  ASGI scope's ``state`` (Hypercorn copies the state it is given into
  every scope of the connection), so the app knows the client address it
  believes and can abort a connection whose peer will not take its answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import ssl
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

from hypercorn.asyncio.tcp_server import TCPServer
from hypercorn.asyncio.worker_context import WorkerContext
from hypercorn.config import Config as HypercornConfig
from hypercorn.utils import wrap_app

from appliance.h2guard import H2Guard
from appliance.http1 import HTTP1Connection, HTTP1Settings
from appliance.limits import ConnectionCounter, KeyedBuckets, address_key
from appliance.logs import Throttle
from appliance.metrics import Metrics
from appliance.proxies import UNIX_PEER, TrustedProxies
from appliance.proxyproto import ProxyHeader, ProxyHeaderError
from appliance.proxyproto import parse as parse_proxy_header

log = logging.getLogger(__name__)

#: The key under which a :class:`Connection` is found in ``scope["state"]``.
STATE_KEY = "linerelay.connection"
#: The burst of new connections one address may open: this many seconds' worth
#: of ``connection_rate_per_address`` (a TLS scanner opens hundreds at once).
RATE_BURST_SECONDS = 10
#: Seconds between two log lines about running out of file descriptors.
FD_LOG_INTERVAL = 10.0
#: The longest HTTP/1 request line looked at to route a connection; a longer
#: one is appliance/http1.py's to refuse.
MAX_REQUEST_LINE = 8192
#: Seconds a connection whose client sent EOF stays open for an answer in progress
#: (webhooks are answered within ack_deadline_ms, well under it).
EOF_GRACE = 1.0
#: Seconds accepting pauses after running out of file descriptors.
FD_PAUSE = 0.1
#: Seconds a connection reset at the end of the graceful timeout has to wind down
#: before its task is cancelled.
RESET_GRACE = 1.0
#: Handshakes in progress that hold a second descriptor, to send a TLS alert
#: through if they fail (see ``_alert_copy``); part of the descriptors
#: max_connections leaves aside, so a handshake flood cannot spend them all.
ALERT_COPIES = 32
#: Bytes looked at (not consumed) at a time while reading a PROXY header.
PROXY_PEEK_BYTES = 4096
#: How an HTTP/2 connection with prior knowledge opens (RFC 9113 §3.4).
H2_PREFACE_LINE = b"PRI * HTTP/2.0"
_OUT_OF_FDS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


@dataclass(frozen=True, slots=True)
class ListenerLimits:
    """The public listener's caps (from the relay config)."""

    max_connections: int = 50_000
    max_connections_per_address: int = 256
    connection_rate_per_address: float = 100.0
    tls_handshake_timeout: float = 10.0
    h2_max_streams: int = 1000
    h2_reset_burst: float = 100.0
    h2_reset_rate: float = 10.0
    #: Seconds a balancer's connection has to deliver its PROXY header (a balancer
    #: writes it at once, before any byte of its client's).
    proxy_header_timeout: float = 5.0


@dataclass(eq=False, slots=True)
class Connection:
    """One accepted connection, as the app sees it."""

    #: The socket's peer address (``unix`` for a Unix socket).
    peer: str
    #: What per-address limits count it under (:func:`appliance.limits.address_key`).
    key: str
    #: The peer is a trusted proxy: its X-Forwarded-For says who the client is,
    #: and the per-address limits do not apply to it.
    trusted: bool = False
    transport: asyncio.BaseTransport | None = field(default=None, repr=False)
    #: Called once when the socket is gone (it may be before Hypercorn's task ends).
    on_closed: Callable[[], None] | None = field(default=None, repr=False)
    #: Called when the socket is gone, to end what still serves it.
    on_lost: Callable[[], None] | None = field(default=None, repr=False)

    def client(self, forwarded_for: str | None, proxies: TrustedProxies) -> str:
        """The client address to believe for a request carrying ``forwarded_for``
        (its X-Forwarded-For): the peer's word only if the peer is a trusted proxy."""
        return proxies.client(self.peer, forwarded_for) if self.trusted else self.peer

    def closed(self) -> None:
        """The socket is gone: give back what it was counted for, once."""
        on_closed, self.on_closed = self.on_closed, None
        if on_closed is not None:
            on_closed()
        if self.on_lost is not None:
            self.on_lost()

    def abort(self) -> None:
        """Drop the connection now, unsent data and all."""
        if self.transport is not None and not self.transport.is_closing():
            reset(cast(asyncio.Transport, self.transport))


def reset(transport: asyncio.BaseTransport) -> None:
    """Abort ``transport`` with a TCP reset.

    A plain abort closes the socket, but the kernel still queues a FIN behind
    whatever the peer did not read (megabytes for a bridge that stopped
    reading) and keeps that memory until the peer reads or TCP gives up,
    minutes later; the peer never learns. A reset frees both at once.
    """
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    cast(asyncio.Transport, transport).abort()


def connection_of(scope: dict[str, Any] | Any) -> Connection | None:
    """The :class:`Connection` an ASGI scope came in on, if the listener made one."""
    state = scope.get("state")
    found = state.get(STATE_KEY) if state is not None else None
    return found if isinstance(found, Connection) else None


class _Event:
    """An asyncio event with the async interface Hypercorn's contexts use, settable
    from a callback too."""

    __slots__ = ("_event",)

    def __init__(self) -> None:
        self._event = asyncio.Event()

    async def clear(self) -> None:
        self._event.clear()

    async def set(self) -> None:
        self._event.set()

    def set_now(self) -> None:
        self._event.set()

    async def wait(self) -> None:
        await self._event.wait()

    def is_set(self) -> bool:
        return self._event.is_set()


class _ConnectionContext(WorkerContext):
    """Hypercorn's worker context, one per connection.

    Hypercorn keeps a connection's task until its keep-alive timer fires,
    even after the client has gone (a reset, say): with one context for the
    whole server that is up to ``keep_alive_timeout`` of memory per
    abandoned connection (measured: 45 KB each, 3,000 of them under an
    attack of 100 a second). Its own context lets the connection's end wake
    the timer at once: ``terminated`` means "wind down" to Hypercorn.

    The end also ends what sleeps in the context. Hypercorn's one sleeper is
    a WebSocket's ping loop (an HTTP/2 bridge's, appliance/bridges.py), which
    sleeps ``websocket_ping_interval`` before it looks whether its stream
    closed: it held the connection's task and memory that long after the
    socket went, and every shutdown with an HTTP/2 bridge connected until the
    graceful timeout.
    """

    event_class = _Event

    def __init__(self) -> None:
        super().__init__(None)
        self._sleepers: set[asyncio.Task[Any]] = set()

    def end(self) -> None:
        """Wind the connection down: the server stops, or its socket is gone."""
        cast(_Event, self.terminated).set_now()
        for task in self._sleepers:
            task.cancel()

    async def sleep(self, wait: float) -> None:  # type: ignore[override]
        """Sleep ``wait`` seconds; the connection's end cancels the sleeper (its task
        ends as if the connection's task group had cancelled it)."""
        task = asyncio.current_task()
        assert task is not None
        if self.terminated.is_set():
            task.cancel()
        self._sleepers.add(task)
        try:
            await asyncio.sleep(wait)
        finally:
            self._sleepers.discard(task)


class BridgeHandoff(Protocol):
    """Who serves the connections of bridges (appliance/bridges.py)."""

    def take_over(
        self, transport: asyncio.BaseTransport, received: bytes, connection: Connection
    ) -> None:
        """Serve ``transport`` from now on; ``received`` is what was read of it so far."""


class _Protocol(asyncio.StreamReaderProtocol):
    """asyncio's stream protocol, telling the connection's record when the socket goes,
    and closing a connection the client has finished with."""

    def __init__(self, reader: asyncio.StreamReader, connection: Connection) -> None:
        super().__init__(reader)
        self._connection = connection

    def eof_received(self) -> bool:
        # Hypercorn keeps a connection its client closed until its keep-alive
        # timer fires (up to keep_alive_timeout), holding a descriptor and a
        # slot under the caps. An answer still being written gets EOF_GRACE.
        keep_open = bool(super().eof_received())
        asyncio.get_running_loop().call_later(EOF_GRACE, self._close)
        return keep_open

    def _close(self) -> None:
        transport = self._connection.transport
        if transport is not None and not transport.is_closing():
            transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._connection.closed()


class _Opening(asyncio.Protocol):
    """A connection's first bytes, read to see what it speaks (the listener's routing).

    Holds what it read until the connection is handed to what serves it, and
    stops reading once it has the request line.
    """

    def __init__(self, connection: Connection) -> None:
        self._connection = connection
        self.received = bytearray()
        self._line: asyncio.Future[bytes | None] = asyncio.get_running_loop().create_future()
        self._transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        self.received += data
        end = self.received.find(b"\r\n")
        if not self._line.done() and (end >= 0 or len(self.received) >= MAX_REQUEST_LINE):
            self._line.set_result(bytes(self.received[: end if end >= 0 else None]))
            cast(asyncio.ReadTransport, self._transport).pause_reading()

    def eof_received(self) -> bool:
        if not self._line.done():
            self._line.set_result(None)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._line.done():
            self._line.set_result(None)
        self._connection.closed()

    async def first_line(self) -> bytes | None:
        """The request line, or None if the client closed before sending one."""
        return await self._line


def is_bridge_upgrade(request_line: bytes) -> bool:
    """Whether an HTTP/1 request line asks for the bridge endpoint (``GET /bridge...``)."""
    method, _, rest = request_line.partition(b" ")
    target = rest.partition(b" ")[0].partition(b"?")[0]
    return method == b"GET" and (target == b"/bridge" or target.startswith(b"/bridge/"))


@dataclass(frozen=True, slots=True)
class _BridgeUpgrade:
    """Hands an HTTP/1.1 connection to the bridge endpoint when a later request on it
    asks for ``/bridge`` (nginx reuses its keep-alive connections to the relay)."""

    bridges: BridgeHandoff
    transport: asyncio.BaseTransport
    connection: Connection

    def wants(self, request_line: bytes) -> bool:
        return is_bridge_upgrade(request_line)

    def take_over(self, received: bytes) -> None:
        self.bridges.take_over(self.transport, received, self.connection)


class _GuardedReader:
    """The connection's reader as Hypercorn uses it, every chunk shown to an :class:`H2Guard`."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        guard: H2Guard,
        on_trip: Callable[[str], None],
    ) -> None:
        self._reader = reader
        self._guard = guard
        self._on_trip = on_trip
        self._cut = False

    def at_eof(self) -> bool:
        return self._cut or self._reader.at_eof()

    async def read(self, n: int = -1) -> bytes:
        if self._cut:
            return b""
        data = await self._reader.read(n)
        self._guard.feed(data, time.monotonic())
        if self._guard.tripped is None:
            return data
        # Nothing more reaches Hypercorn: what is left of the chunk is more of the same.
        self._cut = True
        self._on_trip(self._guard.tripped)
        return b""


class PublicListener:
    """Accepts, admits and serves the public listener's connections."""

    def __init__(
        self,
        sockets: list[socket.socket],
        app: Any,
        config: HypercornConfig,
        ssl_context: ssl.SSLContext | None,
        limits: ListenerLimits,
        metrics: Metrics,
        proxies: TrustedProxies | None = None,
        bridges: BridgeHandoff | None = None,
        balancers: TrustedProxies | None = None,
    ) -> None:
        """``bridges`` takes over HTTP/1 connections that ask for ``/bridge``; without
        it they are served as plain HTTP. ``balancers`` send PROXY headers."""
        self.sockets = sockets
        self.proxies = proxies or TrustedProxies()
        self.balancers = balancers or TrustedProxies()
        self.bridges = bridges
        self.asgi = app
        self.app = wrap_app(app, config.wsgi_max_body_size, "asgi")
        self.config = config
        self.ssl_context = ssl_context
        self.metrics = metrics
        self.limits = limits
        self.counter = ConnectionCounter(limits.max_connections, limits.max_connections_per_address)
        self._rates = KeyedBuckets(
            RATE_BURST_SECONDS * limits.connection_rate_per_address,
            1 / limits.connection_rate_per_address,
        )
        #: Each HTTP connection's Hypercorn context or HTTP/1.1 protocol, to end them
        #: all at shutdown.
        self._contexts: set[_ConnectionContext | HTTP1Connection] = set()
        self._stopping = False
        #: Each connection's serving task, and the connection.
        self._tasks: dict[asyncio.Task[None], Connection] = {}
        self._spare: int | None = None
        self._fd_events = 0
        self._alert_copies = 0
        self._fd_logged = 0.0
        self._failures = Throttle(log, logging.WARNING, "connections dropped on a server error")
        # An attacker reconnects after each close: one line per connection would be
        # its log flood (750 lines in 40 s of rapid reset), not the operator's news.
        self._h2_closes = Throttle(log, logging.INFO, "HTTP/2 connections closed for abuse")
        # A misconfigured balancer (or a port scan from its address) fails every
        # connection: the operator needs the news once, with a count.
        self._proxy_drops = Throttle(
            log, logging.INFO, "balancer connections dropped without a valid PROXY header"
        )

    def configure(
        self,
        limits: ListenerLimits,
        proxies: TrustedProxies,
        balancers: TrustedProxies | None = None,
    ) -> None:
        """Apply new limits, proxies and balancers to new connections (config reload)."""
        self.limits = limits
        self.proxies = proxies
        self.balancers = balancers or TrustedProxies()
        self.counter.total = limits.max_connections
        self.counter.per_address = limits.max_connections_per_address
        rate = limits.connection_rate_per_address
        self._rates.configure(RATE_BURST_SECONDS * rate, 1 / rate)

    async def serve(self, shutdown_trigger: Callable[[], Awaitable[None]]) -> None:
        """Serve until ``shutdown_trigger`` returns, then close gracefully."""
        self._spare = os.open(os.devnull, os.O_RDONLY)
        accepting = [asyncio.create_task(self._accept(sock)) for sock in self.sockets]
        try:
            await shutdown_trigger()
        finally:
            for task in accepting:
                task.cancel()
            await asyncio.gather(*accepting, return_exceptions=True)
            for sock in self.sockets:
                sock.close()
            # Hypercorn closes idle connections once their context is terminated.
            self._stopping = True
            for context in list(self._contexts):
                context.end()
            if self._tasks:
                await self._wind_down()
            os.close(self._spare)

    async def _wind_down(self) -> None:
        """Wait out the graceful timeout for connections to end, then reset the rest.

        A reset connection ends as a lost one, the way Hypercorn expects;
        cancelled mid-way, its task group logs a traceback (a WebSocket whose
        peer never answered the close, say). Only a connection that still will
        not end, one in its TLS handshake for instance, is cancelled.
        """
        grace = self.config.graceful_timeout
        _, pending = await asyncio.wait(set(self._tasks), timeout=grace)
        for task in pending:
            self._tasks[task].abort()
        if pending:
            _, pending = await asyncio.wait(pending, timeout=RESET_GRACE)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    # -- accepting -----------------------------------------------------------

    async def _accept(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        sock.setblocking(False)
        while True:
            try:
                conn, address = await loop.sock_accept(sock)
            except OSError as exc:
                if exc.errno not in _OUT_OF_FDS:
                    log.debug("accept failed", extra={"why": repr(exc)})
                    continue
                self._out_of_fds(sock, exc)
                await asyncio.sleep(FD_PAUSE)
                continue
            peer = address[0] if isinstance(address, tuple) else UNIX_PEER
            self._admit(conn, peer)

    def _admit(self, conn: socket.socket, peer: str) -> None:
        trusted = self.proxies.trusts(peer)
        balanced = bool(self.balancers) and self.balancers.trusts(peer)
        key = address_key(peer)
        # A trusted proxy or a balancer carries many clients' connections: only the
        # total cap applies (a balancer's client is limited once its header names it).
        exempt = trusted or balanced
        why = None if exempt or self._rates.take(key, time.monotonic()) else "rate"
        why = why or self.counter.admit(key, per_address=not exempt)
        if why is not None:
            self.metrics.connections_refused[why].inc()
            _refuse(conn)
            return
        self.metrics.connections_open.inc()
        if not balanced:
            self.metrics.connections_accepted.inc()
        connection = Connection(peer, key, trusted)
        connection.on_closed = lambda: self._release(connection.key)
        task = asyncio.get_running_loop().create_task(self._serve(conn, connection, balanced))
        self._tasks[task] = connection
        task.add_done_callback(self._forget)

    def _out_of_fds(self, sock: socket.socket, exc: OSError) -> None:
        """Refuse the waiting client through the spare descriptor; log once per interval."""
        self._fd_events += 1
        self.metrics.connections_refused["fds"].inc()
        if self._spare is not None:
            os.close(self._spare)
            self._spare = None
            with contextlib.suppress(OSError):
                conn, _ = sock.accept()
                _refuse(conn)
            with contextlib.suppress(OSError):
                self._spare = os.open(os.devnull, os.O_RDONLY)
        now = time.monotonic()
        if now - self._fd_logged >= FD_LOG_INTERVAL:
            log.error(
                "out of file descriptors: refusing connections",
                extra={
                    "why": exc.strerror,
                    "refused_since_last": self._fd_events,
                    "open": self.counter.open,
                    "hint": "lower max_connections or raise LimitNOFILE",
                },
            )
            self._fd_logged, self._fd_events = now, 0

    def _alert_copy(self, conn: socket.socket) -> socket.socket | None:
        """A copy of ``conn``'s descriptor, to send a TLS alert through if the handshake fails.

        asyncio closes a socket whose handshake failed without sending the alert
        OpenSSL wrote. Each copy is a descriptor the connection cap does not
        count, so at most ALERT_COPIES are held: past them, and when short of
        descriptors, the alert is what goes, not the connection.
        """
        if self._alert_copies >= ALERT_COPIES:
            return None
        try:
            copy = conn.dup()
        except OSError:
            return None
        self._alert_copies += 1
        return copy

    def _forget(self, task: asyncio.Task[None]) -> None:
        self._tasks.pop(task, None)

    def _release(self, key: str) -> None:
        self.counter.release(key)
        self.metrics.connections_open.dec()

    # -- serving -------------------------------------------------------------

    async def _serve(self, conn: socket.socket, connection: Connection, balanced: bool) -> None:
        loop = asyncio.get_running_loop()
        if conn.family in (socket.AF_INET, socket.AF_INET6):
            # asyncio sets this only on sockets whose proto says TCP, which an
            # accepted socket does not when its listener was made with proto 0;
            # without it an answer's second write waits for a delayed ACK (~40 ms).
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if balanced and not await self._believe_header(conn, connection):
            connection.closed()
            return
        spare = self._alert_copy(conn) if self.ssl_context is not None else None
        handed_over = False
        try:
            opening = _Opening(connection)
            try:
                transport, _ = await loop.connect_accepted_socket(
                    lambda: opening,
                    conn,
                    ssl=self.ssl_context,
                    ssl_handshake_timeout=(
                        self.limits.tls_handshake_timeout if self.ssl_context else None
                    ),
                )
            except (OSError, TimeoutError) as exc:  # ssl.SSLError is an OSError
                self.metrics.tls_handshake_failures.inc()
                log.debug("handshake failed", extra={"peer": connection.peer, "why": repr(exc)})
                if spare is not None and isinstance(exc, ssl.SSLError):
                    _send_alert(spare, exc)
                conn.close()
                return
            finally:
                if spare is not None:
                    spare.close()
                    self._alert_copies -= 1
            connection.transport = transport
            ssl_object = transport.get_extra_info("ssl_object")
            if ssl_object is not None and ssl_object.selected_alpn_protocol() == "h2":
                await self._serve_hypercorn(transport, opening, connection, h2=True)
                return
            try:
                line = await asyncio.wait_for(opening.first_line(), self.config.keep_alive_timeout)
            except TimeoutError:
                transport.close()  # nothing asked of it: an idle or slowloris connection
                return
            if line is None:
                return
            if self.bridges is not None and is_bridge_upgrade(line):
                handed_over = True
                self.bridges.take_over(transport, bytes(opening.received), connection)
            elif line.startswith(H2_PREFACE_LINE):
                # HTTP/2 with prior knowledge, on a listener without TLS.
                await self._serve_hypercorn(transport, opening, connection, h2=True)
            else:
                handed_over = await self._serve_http1(transport, opening, connection)
        except OSError as exc:  # ssl.SSLError included: the peer broke off or misbehaved
            log.debug("connection ended badly", extra={"peer": connection.peer, "why": repr(exc)})
        except Exception as exc:
            # Hypercorn failing on what a client sent (HTTP/2 data for a stream
            # whose handler already ended, say): that connection is lost, no
            # other. Errors of the relay's own app are logged by Hypercorn.
            self._failures(time.monotonic(), peer=connection.peer, why=repr(exc)[:300])
            log.debug("connection failed", exc_info=True, extra={"peer": connection.peer})
        finally:
            # Usually done already, when the socket closed; Hypercorn's task can
            # outlive it by up to keep_alive_timeout. A bridge's connection is the
            # bridge endpoint's to give back.
            if not handed_over:
                connection.closed()

    async def _believe_header(self, conn: socket.socket, connection: Connection) -> bool:
        """Read a balancer's PROXY header and make the client it names the connection's
        peer, within that client's caps; False when the connection was refused."""
        try:
            header = await asyncio.wait_for(
                read_proxy_header(conn), self.limits.proxy_header_timeout
            )
        except (ProxyHeaderError, OSError, TimeoutError) as exc:
            self.metrics.connections_refused["proxy_protocol"].inc()
            said = "timeout" if isinstance(exc, TimeoutError) else str(exc) or repr(exc)
            self._proxy_drops(time.monotonic(), peer=connection.peer, why=said)
            _refuse(conn)
            return False
        if header.source is not None:
            client, key = header.source, address_key(header.source)
            trusted = self.proxies.trusts(client)
            why = None if trusted or self._rates.take(key, time.monotonic()) else "rate"
            why = why or self.counter.move(connection.key, key, per_address=not trusted)
            if why is not None:
                self.metrics.connections_refused[why].inc()
                _refuse(conn)
                return False
            connection.peer, connection.key, connection.trusted = client, key, trusted
        # Without a source (a LOCAL header: the balancer's own health check) the
        # connection stays the balancer's.
        self.metrics.connections_accepted.inc()
        return True

    async def _serve_http1(
        self, transport: asyncio.BaseTransport, opening: _Opening, connection: Connection
    ) -> bool:
        """Serve an HTTP/1.1 connection (appliance/http1.py), what was read of it first;
        True if a bridge's upgrade later on it took it over."""
        config = self.config
        access = config.accesslog if isinstance(config.accesslog, logging.Logger) else None
        settings = HTTP1Settings(
            keep_alive_timeout=config.keep_alive_timeout,
            max_requests=config.keep_alive_max_requests,
            access_log=access,
        )
        upgrade = (
            None if self.bridges is None else _BridgeUpgrade(self.bridges, transport, connection)
        )
        protocol = HTTP1Connection(
            self.asgi, settings, {STATE_KEY: connection}, connection.closed, upgrade
        )
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        if self._stopping:
            protocol.end()
        self._contexts.add(protocol)
        try:
            cast(asyncio.ReadTransport, transport).resume_reading()
            if opening.received:
                protocol.data_received(bytes(opening.received))
            await protocol.done
        finally:
            self._contexts.discard(protocol)
        return protocol.handed_over

    async def _serve_hypercorn(
        self,
        transport: asyncio.BaseTransport,
        opening: _Opening,
        connection: Connection,
        h2: bool,
    ) -> None:
        """Hand the connection to Hypercorn, with what was read of it so far."""
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=2**16)
        protocol = _Protocol(reader, connection)
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        if opening.received:
            reader.feed_data(bytes(opening.received))
        cast(asyncio.ReadTransport, transport).resume_reading()
        writer = asyncio.StreamWriter(
            cast(asyncio.WriteTransport, transport), protocol, reader, loop
        )
        source: Any = reader
        if h2:
            source = _GuardedReader(reader, self._guard(), self._tripped(connection))
        context = _ConnectionContext()
        if self._stopping:
            context.end()
        connection.on_lost = context.end
        self._contexts.add(context)
        try:
            server = TCPServer(
                self.app, loop, self.config, context, {STATE_KEY: connection}, source, writer
            )
            await server.run()
        finally:
            self._contexts.discard(context)

    def _guard(self) -> H2Guard:
        limits = self.limits
        # Hypercorn sends GOAWAY after h2_max_streams; streams already on
        # their way then (up to its concurrency limit) are still fair.
        return H2Guard(
            limits.h2_max_streams + 2 * self.config.h2_max_concurrent_streams,
            limits.h2_reset_burst,
            1 / limits.h2_reset_rate,
            time.monotonic(),
        )

    def _tripped(self, connection: Connection) -> Callable[[str], None]:
        def trip(why: str) -> None:
            self.metrics.h2_guard_trips[why].inc()
            self._h2_closes(time.monotonic(), peer=connection.peer, why=why)
            connection.abort()

        return trip


_LINGER_RESET = struct.pack("ii", 1, 0)


async def read_proxy_header(sock: socket.socket) -> ProxyHeader:
    """Read a PROXY header from the non-blocking ``sock``, and not one byte past it.

    What the peer sent is looked at with ``MSG_PEEK`` and only the header's
    bytes are taken, so the TLS handshake (or HTTP) that follows finds its
    first byte still in the socket. Raises :class:`ProxyHeaderError` for
    anything else, :class:`ConnectionError` if the peer closes first.
    """
    loop = asyncio.get_running_loop()
    received = b""
    while True:
        await _readable(loop, sock)
        try:
            peeked = sock.recv(PROXY_PEEK_BYTES, socket.MSG_PEEK)
        except BlockingIOError:
            continue
        if not peeked:
            raise ConnectionResetError("closed before its PROXY header")
        header = parse_proxy_header(received + peeked)
        if header is not None:
            # The rest of the header is in the socket already: recv takes it whole.
            sock.recv(header.length - len(received))
            return header
        sock.recv(len(peeked))  # all of it is header (parse's promise)
        received += peeked


async def _readable(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
    """Wait until ``sock`` has something to read (or its peer closed)."""
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(sock.fileno(), wake)
    try:
        await ready
    finally:
        loop.remove_reader(sock.fileno())


#: TLS alert descriptions (RFC 8446 §6.2) for the handshake failures a client
#: should be told about, by OpenSSL's reason for them.
_ALERTS = {
    "UNSUPPORTED_PROTOCOL": 70,  # protocol_version: a TLS 1.2 client at a TLS 1.3-only relay
    "VERSION_TOO_LOW": 70,
    "NO_SHARED_CIPHER": 40,  # handshake_failure
    "NO_SUITABLE_SIGNATURE_ALGORITHM": 40,
    "NO_SHARED_GROUPS": 40,
}


def _send_alert(conn: socket.socket, error: ssl.SSLError) -> None:
    """Send the fatal alert OpenSSL chose for ``error`` (asyncio drops it), best effort.

    A plaintext alert record: content type 21, legacy version TLS 1.2, length
    2, level fatal (2), description. Sent so a client, a proxy in front or an
    operator with ``openssl s_client`` sees why, rather than a bare EOF.
    """
    description = _ALERTS.get(error.reason or "")
    if description is None:
        return
    with contextlib.suppress(OSError):
        conn.setblocking(False)
        conn.send(bytes((21, 3, 3, 0, 2, 2, description)))


def _refuse(conn: socket.socket) -> None:
    """Close an accepted socket with a reset: the client learns at once, and no TIME_WAIT."""
    with contextlib.suppress(OSError):
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    conn.close()
