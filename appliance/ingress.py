"""The public listener's hot paths as plain ASGI, in front of the Quart app.

``POST /webhook/{tenant}`` and the ``/bridge`` WebSocket are served here;
everything else falls through to Quart. They bypass Quart's per-request
machinery on purpose: measured on these machines, Quart's request handling
alone costs about half of Hypercorn's ceiling, which would put the relay
below a bare FastAPI peer (README, "Performance").

A webhook is answered in this order (PROTOCOL.md §1): body (size limit and
read deadline), method, tenant, signature over the raw bytes, body shape,
then the durable write, awaited up to the acknowledgement deadline.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

from appliance import payload, signature
from appliance.config import RelayConfig
from appliance.errors import (
    BodyTimeout,
    BodyTooLarge,
    InvalidSignature,
    MethodNotAllowed,
    Overloaded,
    QueueFull,
    RelayError,
    StoreError,
    UnknownTenant,
    response_for,
)
from appliance.hub import BridgeConnection, Hub
from appliance.logs import AccessLog
from appliance.metrics import Metrics
from appliance.store import Store, wait_until
from appliance.tenants import TENANT_ID, TenantDirectory

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

WEBHOOK_PREFIX = "/webhook/"
BRIDGE_PATH = "/bridge"
_OK_HEADERS = [(b"content-type", b"application/json"), (b"content-length", b"2")]

_OUTCOME_OF = {
    InvalidSignature: "invalid_signature",
    UnknownTenant: "unknown_tenant",
    BodyTooLarge: "body_too_large",
    BodyTimeout: "body_timeout",
    MethodNotAllowed: "method_not_allowed",
    QueueFull: "queue_full",
    Overloaded: "overloaded",
}


@dataclass(slots=True)
class _Result:
    """What one webhook request came to, for its metrics and log line."""

    outcome: str | None = None  # None: accepted, or decided by the error raised
    events: int | None = None
    delivery: str | None = None


class Relay:
    """What the hot paths share: config, tenants, store, hub, metrics."""

    def __init__(
        self,
        config: RelayConfig,
        tenants: TenantDirectory,
        store: Store,
        hub: Hub,
        metrics: Metrics,
    ) -> None:
        self.config = config
        self.tenants = tenants
        self.store = store
        self.hub = hub
        self.metrics = metrics
        self.bridges: set[BridgeConnection] = set()
        self.access_log = AccessLog()


class Ingress:
    """ASGI middleware: webhooks and bridges here, anything else to ``fallback``."""

    def __init__(self, relay: Relay, fallback: ASGIApp) -> None:
        self.relay = relay
        self.fallback = fallback

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        if scope["type"] == "http" and path.startswith(WEBHOOK_PREFIX):
            await self.webhook(scope, receive, send)
        elif scope["type"] == "websocket" and (
            path == BRIDGE_PATH or path.startswith(BRIDGE_PATH + "/")
        ):
            await self.bridge(scope, receive, send)
        else:
            await self.fallback(scope, receive, send)

    # -- webhooks ------------------------------------------------------------

    async def webhook(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer one webhook request (PROTOCOL.md §1), then count and log it."""
        started = time.perf_counter()
        relay = self.relay
        tenant_id = scope["path"][len(WEBHOOK_PREFIX) :]
        result = _Result()
        try:
            await self._accept(scope, receive, tenant_id, started, result)
            status = 200
            await _respond(send, 200, _OK_HEADERS, b"{}")
        except RelayError as error:
            result.outcome = result.outcome or _OUTCOME_OF.get(type(error), error.code)
            status, headers, body_out = response_for(error)
            closing = isinstance(error, BodyTooLarge) and not error.keep_alive
            if closing and scope.get("http_version") in ("1.0", "1.1"):
                headers.append((b"connection", b"close"))
            await _respond(send, status, headers, body_out)
        elapsed = time.perf_counter() - started
        metrics = relay.metrics
        metrics.ack_seconds.observe(elapsed)
        metrics.outcome[result.outcome or "accepted"].inc()
        if elapsed * 1000 > relay.config.budget_ms:
            metrics.over_budget.inc()
        relay.access_log.write(
            "webhook",
            {
                # Only a well-formed id is logged: nothing else from the URL.
                "tenant": tenant_id if TENANT_ID.fullmatch(tenant_id) else None,
                "status": status,
                "outcome": result.outcome or "accepted",
                "ms": round(elapsed * 1000, 2),
                "events": result.events,
                "delivery": result.delivery,
                "http": scope.get("http_version"),
            },
        )

    async def _accept(
        self, scope: Scope, receive: Receive, tenant_id: str, started: float, result: _Result
    ) -> None:
        """Check and store one webhook, filling ``result``; raises :class:`RelayError`."""
        relay = self.relay
        # The body is read first, whatever the answer will be: answered before
        # its body is read, an HTTP/1.1 request leaves a connection that
        # Hypercorn must close, and a keep-alive client (LINE's) loses the
        # request it sends next on it.
        body = await self._read_body(scope, receive)
        if scope["method"] != "POST":
            raise MethodNotAllowed
        tenant = relay.tenants.get(tenant_id)
        if tenant is None:
            raise UnknownTenant
        claimed = _header(scope, b"x-line-signature")
        if claimed is None or not signature.verify(tenant.secret, body, claimed):
            raise InvalidSignature
        result.events = payload.count_events(body)
        if result.events == 0:
            result.outcome = "verify"
            return
        future = relay.store.append(tenant_id, body, claimed, int(time.time() * 1000))
        remaining = relay.config.ack_deadline_ms / 1000 - (time.perf_counter() - started)
        if not await wait_until(future, remaining):
            raise Overloaded
        try:
            stored = future.result()
        except StoreError as exc:
            result.outcome = "store_error"
            raise Overloaded from exc
        if stored is None:
            result.outcome = "duplicate"
        else:
            result.delivery = stored.id

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes:
        """The whole body, or :class:`BodyTooLarge` once it is known to be over the limit.

        HTTP/1.x: answered at once (from Content-Length when it is given) and
        the connection closed, as the unread rest of the body would otherwise
        be taken for the next request. HTTP/2: the rest of the stream is read
        and dropped (within ``body_timeout``) before the 413, so the client is
        not left blocked on flow control and its connection stays usable.
        """
        limit = self.relay.config.max_body_bytes
        http2 = scope.get("http_version") == "2"
        length = _header(scope, b"content-length")
        if not http2 and length is not None and (not length.isdigit() or int(length) > limit):
            raise BodyTooLarge(keep_alive=False)
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(self.relay.config.body_timeout):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        raise BodyTimeout
                    chunk = message.get("body", b"")
                    size += len(chunk)
                    if size > limit and not http2:
                        raise BodyTooLarge(keep_alive=False)
                    if size <= limit:
                        chunks.append(chunk)
                    if not message.get("more_body", False):
                        break
        except TimeoutError as exc:
            raise BodyTooLarge() if size > limit else BodyTimeout() from exc
        if size > limit:
            raise BodyTooLarge
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    # -- bridges -------------------------------------------------------------

    async def bridge(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one bridge WebSocket (PROTOCOL.md §2)."""
        relay = self.relay
        message = await receive()
        if message["type"] != "websocket.connect":
            return
        token = _bearer(_header(scope, b"authorization"))
        path_token = scope["path"][len(BRIDGE_PATH) + 1 :]
        tenant = relay.tenants.authenticate(token or path_token)
        if tenant is None:
            relay.metrics.bridge_rejected.inc()
            log.warning("bridge refused: bad token", extra={"peer": _peer(scope)})
            body = b'{"error": "invalid_token"}'
            await send(
                {
                    "type": "websocket.http.response.start",
                    "status": 401,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()),
                        (b"www-authenticate", b"Bearer"),
                    ],
                }
            )
            await send({"type": "websocket.http.response.body", "body": body})
            return
        await send({"type": "websocket.accept"})

        connection = BridgeConnection(tenant.id, send, _peer(scope))
        relay.bridges.add(connection)
        relay.hub.attach(connection)
        try:
            while True:
                message = await receive()
                if message["type"] != "websocket.receive":
                    break
                text = message.get("text")
                relay.hub.receive(connection, text if text is not None else message["bytes"])
        finally:
            relay.bridges.discard(connection)
            relay.hub.detach(connection)


async def _respond(
    send: Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes
) -> None:
    """Send a whole response; a client already gone is not an error of ours."""
    try:
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
    except OSError as exc:  # ssl.SSLError included: a TLS peer that already closed
        log.debug("client gone before the answer", extra={"status": status, "why": repr(exc)})


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


def _bearer(value: str | None) -> str | None:
    if value is None:
        return None
    scheme, _, credentials = value.partition(" ")
    return credentials.strip() if scheme.lower() == "bearer" else None


def _peer(scope: Scope) -> str:
    client = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else "?"
