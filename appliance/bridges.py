"""The ``/bridge`` endpoint (PROTOCOL.md §2): who may connect, and the WebSockets under the hub.

A bridge upgrade is authenticated before it is accepted: a bad token is 401,
and an address that failed too often, or a tenant reconnecting too often, is
429 with ``Retry-After`` (:meth:`BridgeEndpoint.authenticate`). Protocol 2 is
chosen when the bridge offers the ``linerelay.v2`` subprotocol.

Two WebSocket implementations carry bridges, behind the hub's
:class:`appliance.hub.BridgeTransport`:

- **python-websockets** for HTTP/1.1 upgrades, which is what bridges use: the
  listener (appliance/listener.py) sees the request line and hands the
  connection here. Through its settings it declines permessage-deflate
  (``extensions=None``: bridge frames are short JSON that gains nothing, and
  a zlib context costs ~110 KB a connection), pings every ``ping_interval``
  and drops a peer that answers none within ``bridge_idle_timeout``, and
  limits frame sizes; it costs about half the memory per idle bridge of the
  path through Hypercorn (README, "Performance").
- **Hypercorn's ASGI WebSocket** for what arrives through Hypercorn (HTTP/2
  extended CONNECT, RFC 8441: no stock bridge client speaks it), with
  Hypercorn's stock behaviour and its supported settings only
  (``websocket_ping_interval``, ``read_timeout``; appliance/server.py). Its
  costs, accepted for a rare path rather than patched away: Hypercorn accepts
  permessage-deflate when the client offers it, so such a bridge carries a
  zlib context; and a WebSocket's ping task sleeps out its interval before it
  sees its stream closed, so a bridge that closes its WebSocket but keeps the
  HTTP/2 connection open leaves the task there up to ``ping_interval``. (When
  the connection itself ends, or the relay stops, the listener's
  per-connection context ends the task at once: appliance/listener.py.)
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any

from hypercorn.utils import UnexpectedMessageError
from websockets.asyncio.server import Server, ServerConnection
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.protocol import State
from websockets.server import ServerProtocol
from websockets.typing import Subprotocol

from appliance import protocol
from appliance.config import RelayConfig
from appliance.errors import InvalidToken, RelayError, TooManyRequests, response_for
from appliance.hub import BridgeConnection, Hub
from appliance.limits import KeyedBuckets, address_key, retry_after
from appliance.listener import Connection, reset
from appliance.logs import Throttle
from appliance.metrics import Metrics
from appliance.proxies import TrustedProxies
from appliance.tenants import TenantDirectory, hash_token

log = logging.getLogger(__name__)

BRIDGE_PATH = "/bridge"

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]


def is_bridge_path(path: str) -> bool:
    """Whether ``path`` (no query) is the bridge endpoint: ``/bridge`` or ``/bridge/{token}``."""
    return path == BRIDGE_PATH or path.startswith(BRIDGE_PATH + "/")


class BridgeEndpoint:
    """Authenticates bridge upgrades and serves accepted ones to the hub."""

    def __init__(
        self,
        config: RelayConfig,
        tenants: TenantDirectory,
        hub: Hub,
        metrics: Metrics,
        proxies: TrustedProxies,
    ) -> None:
        self.tenants = tenants
        self.hub = hub
        self.metrics = metrics
        self.proxies = proxies
        #: Failed bridge authentications per client address (IPv6: per /64).
        self.auth_failures = KeyedBuckets(config.bridge_auth_burst, config.bridge_auth_interval)
        #: Bridge connections per tenant: a reconnect storm is its own tenant's problem.
        self.connects = KeyedBuckets(config.bridge_connect_burst, config.bridge_connect_interval)
        self._auth_log = Throttle(log, logging.WARNING, "bridge authentication failures")
        self.config = config
        self._server: _Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def configure(self, config: RelayConfig, proxies: TrustedProxies) -> None:
        """Apply a reloaded config."""
        self.config = config
        self.proxies = proxies
        self.auth_failures.configure(config.bridge_auth_burst, config.bridge_auth_interval)
        self.connects.configure(config.bridge_connect_burst, config.bridge_connect_interval)

    # -- who may connect ------------------------------------------------------

    def authenticate(self, path: str, authorization: str | None, client: str) -> tuple[str, bytes]:
        """The tenant a bridge upgrade serves, and the digest of the token it gave;
        raises :class:`InvalidToken`, or :class:`TooManyRequests` for an address
        locked out after repeated bad tokens or a tenant reconnecting too often
        (PROTOCOL.md §2)."""
        key = address_key(client)
        now = time.monotonic()
        locked = self.auth_failures.blocked_for(key, now)
        if locked > 0:
            # No token is checked for a locked-out address: guessing gains it nothing.
            self.metrics.bridge_refused["auth_lockout"].inc()
            raise TooManyRequests(retry_after(locked))
        token = _bearer(authorization) or path[len(BRIDGE_PATH) + 1 :]
        tenant = self.tenants.authenticate(token)
        if tenant is None:
            self.auth_failures.take(key, now)
            self.metrics.bridge_rejected.inc()
            self._auth_log(now, peer=client)
            raise InvalidToken
        if not self.connects.take(tenant.id, now):
            self.metrics.bridge_refused["reconnect_rate"].inc()
            raise TooManyRequests(retry_after(self.connects.blocked_for(tenant.id, now)))
        return tenant.id, hash_token(token)

    async def session(
        self,
        tenant: str,
        transport: Any,
        peer: str,
        version: int,
        frames: Any,
        token_hash: bytes = b"",
    ) -> None:
        """Serve one accepted bridge: attach it to the hub, feed it what it sends."""
        bridge = BridgeConnection(
            tenant,
            transport,
            peer,
            protocol=version,
            send_timeout=self.config.send_timeout,
            on_timeout=self.hub.send_timed_out,
            token_hash=token_hash,
        )
        self.hub.attach(bridge)
        try:
            async for data in frames:
                self.hub.receive(bridge, data)
        finally:
            self.hub.detach(bridge)

    # -- python-websockets (HTTP/1.1 upgrades handed over by the listener) ----

    async def start(self) -> None:
        """Get ready to take connections (needs the running loop)."""
        self._server = _Server(_never, self._handle, _WEBSOCKETS_LOG)

    async def stop(self, grace: float) -> None:
        """Wait up to ``grace`` seconds for bridge connections to end, then cut the rest."""
        if self._server is not None:
            self._server.serving = False
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    def take_over(
        self, transport: asyncio.BaseTransport, received: bytes, connection: Connection
    ) -> None:
        """Serve the connection ``transport`` (whose first bytes were ``received``)
        as a bridge's WebSocket."""
        assert self._server is not None, "BridgeEndpoint.start() first"
        config = self.config
        ws = _BridgeSocket(
            ServerProtocol(
                subprotocols=[Subprotocol(protocol.SUBPROTOCOL_V2)],
                select_subprotocol=_select_subprotocol,
                extensions=None,
                max_size=protocol.MAX_BRIDGE_FRAME_BYTES,
                logger=_WEBSOCKETS_LOG,
            ),
            self._server,
            connection,
            ping_interval=config.ping_interval,
            # A peer that answers no ping is dropped within bridge_idle_timeout.
            ping_timeout=config.bridge_idle_timeout - config.ping_interval,
            close_timeout=5,
        )
        transport.set_protocol(ws)
        ws.connection_made(transport)
        ws.data_received(received)
        if hasattr(transport, "resume_reading"):
            transport.resume_reading()

    async def _handle(self, ws: ServerConnection) -> None:
        assert isinstance(ws, _BridgeSocket)
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            async with asyncio.timeout(self.config.body_timeout):
                await ws.handshake(self._process_request, server_header=None)
            if ws.protocol.state is not State.OPEN or ws.tenant is None:
                ws.transport.close()  # refused: the answer is written first
                return
            ws.start_keepalive()
            # python-websockets keeps the handshake's response, headers and all, for the
            # connection's life (~1.5 KB a bridge, bench/idle_bridges.py); nothing reads it.
            ws.response = None
            version = 2 if ws.subprotocol == protocol.SUBPROTOCOL_V2 else 1
            await self.session(
                ws.tenant, _WebsocketsTransport(ws), ws.peer, version, _frames(ws), ws.token_hash
            )
        except (TimeoutError, OSError, ConnectionClosed) as exc:
            log.debug("bridge connection ended", extra={"why": repr(exc)})
            ws.transport.abort()
        finally:
            ws.record.closed()
            self._tasks.discard(task)

    def _process_request(self, ws: ServerConnection, request: Request) -> Response | None:
        assert isinstance(ws, _BridgeSocket)
        path = request.path.partition("?")[0]
        client = ws.record.client(request.headers.get("X-Forwarded-For"), self.proxies)
        ws.peer = client
        try:
            if not is_bridge_path(path):
                raise _NotFound
            ws.tenant, ws.token_hash = self.authenticate(
                path, request.headers.get("Authorization"), client
            )
        except RelayError as error:
            return _refusal(ws, error)
        return None

    # -- Hypercorn's ASGI WebSocket ------------------------------------------

    async def serve_asgi(
        self,
        scope: Scope,
        receive: Callable[[], Awaitable[Message]],
        send: Callable[[Message], Awaitable[None]],
        client: str,
        abort: Callable[[], None],
    ) -> None:
        """Serve one bridge WebSocket that came through Hypercorn (PROTOCOL.md §2)."""
        message = await receive()
        if message["type"] != "websocket.connect":
            return
        headers = dict(scope["headers"])
        authorization = headers.get(b"authorization", b"").decode("latin-1") or None
        try:
            tenant, token_hash = self.authenticate(scope["path"], authorization, client)
        except RelayError as error:
            status, response_headers, body = response_for(error)
            response_headers.append((b"content-length", str(len(body)).encode()))
            start = {"type": "websocket.http.response.start", "status": status}
            await send({**start, "headers": response_headers})
            await send({"type": "websocket.http.response.body", "body": body})
            return
        offered = scope.get("subprotocols") or ()
        version = 2 if protocol.SUBPROTOCOL_V2 in offered else 1
        accept: Message = {"type": "websocket.accept"}
        if version == 2:
            accept["subprotocol"] = protocol.SUBPROTOCOL_V2
        await send(accept)
        transport = _ASGITransport(send, abort)
        await self.session(tenant, transport, client, version, _asgi_frames(receive), token_hash)


#: python-websockets' own lines (one per handshake and close) are debug detail.
_WEBSOCKETS_LOG = logging.getLogger("appliance.bridges.websockets")


class _Server(Server):
    """python-websockets' server bookkeeping, for connections the relay's listener accepts.

    ``is_serving`` is what a handshake checks before it accepts; there is no
    asyncio server behind this one to ask.
    """

    serving = True

    def is_serving(self) -> bool:
        return self.serving


class _NotFound(RelayError):
    status = 404
    code = "not_found"


class _BridgeSocket(ServerConnection):
    """python-websockets' server connection, with what the relay knows of it."""

    def __init__(
        self, protocol: ServerProtocol, server: Server, record: Connection, **kwargs: Any
    ) -> None:
        super().__init__(protocol, server, **kwargs)
        self.record = record
        self.peer = record.peer
        self.tenant: str | None = None
        self.token_hash = b""


class _WebsocketsTransport:
    """:class:`appliance.hub.BridgeTransport` over a python-websockets connection."""

    __slots__ = ("_ws",)

    def __init__(self, ws: ServerConnection) -> None:
        self._ws = ws

    async def send(self, text: str) -> None:
        try:
            await self._ws.send(text)
        except ConnectionClosed as exc:  # the bridge closed while a frame was queued
            raise ConnectionError(str(exc)) from exc

    async def close(self, code: int) -> None:
        try:
            await self._ws.close(code)
        except ConnectionClosed as exc:
            raise ConnectionError(str(exc)) from exc

    def abort(self) -> None:
        reset(self._ws.transport)


class _ASGITransport:
    """:class:`appliance.hub.BridgeTransport` over an ASGI WebSocket."""

    __slots__ = ("_abort", "_send")

    def __init__(self, send: Callable[[Message], Awaitable[None]], abort: Callable[[], None]):
        self._send = send
        self._abort = abort

    async def send(self, text: str) -> None:
        try:
            await self._send({"type": "websocket.send", "text": text})
        except UnexpectedMessageError as exc:  # Hypercorn's answer once the socket closed
            raise ConnectionError(str(exc)) from exc

    async def close(self, code: int) -> None:
        try:
            await self._send({"type": "websocket.close", "code": code})
        except UnexpectedMessageError as exc:
            raise ConnectionError(str(exc)) from exc

    def abort(self) -> None:
        self._abort()


async def _frames(ws: ServerConnection) -> Any:
    """What a python-websockets bridge sends, until it closes."""
    try:
        async for data in ws:
            yield data
    except ConnectionClosed:
        return


async def _asgi_frames(receive: Callable[[], Awaitable[Message]]) -> Any:
    """What an ASGI bridge sends, until it disconnects."""
    while True:
        message = await receive()
        if message["type"] != "websocket.receive":
            return
        text = message.get("text")
        yield text if text is not None else message["bytes"]


def _select_subprotocol(_: ServerProtocol, offered: Sequence[Subprotocol]) -> Subprotocol | None:
    """Protocol 2 if the bridge offers it; otherwise protocol 1, whatever else it offers."""
    return Subprotocol(protocol.SUBPROTOCOL_V2) if protocol.SUBPROTOCOL_V2 in offered else None


def _refusal(ws: ServerConnection, error: RelayError) -> Response:
    """The HTTP answer to a refused upgrade, from the one table in appliance.errors."""
    status, extra, body = response_for(error)
    plain = ws.respond(status, "")  # Date and Connection: close, as python-websockets sends
    headers = Headers(
        (name, value)
        for name, value in plain.headers.raw_items()
        if name.lower() not in ("content-type", "content-length")
    )
    for name, value in extra:
        headers[name.decode()] = value.decode()
    headers["Content-Length"] = str(len(body))
    return Response(plain.status_code, plain.reason_phrase, headers, body)


def _bearer(value: str | None) -> str | None:
    if value is None:
        return None
    scheme, _, credentials = value.partition(" ")
    return credentials.strip() if scheme.lower() == "bearer" else None


async def _never() -> asyncio.Server:
    """python-websockets' Server wants a way to listen; the relay's listener does that."""
    raise RuntimeError("the relay's listener accepts bridge connections")
