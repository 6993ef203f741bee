"""The public listener's hot paths as plain ASGI, in front of the Quart app.

``POST /webhook/{tenant}`` and the ``/bridge`` WebSocket are served here;
everything else falls through to Quart. They bypass Quart's per-request
machinery on purpose: measured on these machines, Quart's request handling
alone costs about half of Hypercorn's ceiling, which would put the relay
below a bare FastAPI peer (README, "Performance").

A webhook is answered in this order (PROTOCOL.md §1): method, tenant, body
(size limit and read deadline), signature over the raw bytes, body shape,
then the durable write, awaited up to the acknowledgement deadline.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
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
        """Answer one webhook request (PROTOCOL.md §1)."""
        started = time.perf_counter()
        relay = self.relay
        tenant_id = scope["path"][len(WEBHOOK_PREFIX) :]
        outcome = "accepted"
        events = delivery = None
        try:
            if scope["method"] != "POST":
                raise MethodNotAllowed
            tenant = relay.tenants.get(tenant_id)
            if tenant is None:
                raise UnknownTenant
            body = await self._read_body(scope, receive)
            claimed = _header(scope, b"x-line-signature")
            if not signature.verify(tenant.secret, body, claimed):
                raise InvalidSignature
            events = payload.count_events(body)
            if events == 0:
                outcome = "verify"
            else:
                assert claimed is not None
                future = relay.store.append(tenant_id, body, claimed, int(time.time() * 1000))
                remaining = relay.config.ack_deadline_ms / 1000 - (time.perf_counter() - started)
                if not await wait_until(future, remaining):
                    raise Overloaded
                try:
                    stored = future.result()
                except StoreError as exc:
                    outcome = "store_error"
                    raise Overloaded from exc
                if stored is None:
                    outcome = "duplicate"
                else:
                    delivery = stored.id
            await send({"type": "http.response.start", "status": 200, "headers": _OK_HEADERS})
            await send({"type": "http.response.body", "body": b"{}"})
            status = 200
        except RelayError as error:
            if outcome not in ("store_error",):
                outcome = _OUTCOME_OF.get(type(error), error.code)
            status, headers, body_out = response_for(error)
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body_out})
        elapsed = time.perf_counter() - started
        metrics = relay.metrics
        metrics.ack_seconds.observe(elapsed)
        metrics.outcome[outcome].inc()
        if elapsed * 1000 > relay.config.budget_ms:
            metrics.over_budget.inc()
        relay.access_log.write(
            "webhook",
            {
                # Only a well-formed id is logged: nothing else from the URL.
                "tenant": tenant_id if TENANT_ID.fullmatch(tenant_id) else None,
                "status": status,
                "outcome": outcome,
                "ms": round(elapsed * 1000, 2),
                "events": events,
                "delivery": delivery,
                "http": scope.get("http_version"),
            },
        )

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes:
        limit = self.relay.config.max_body_bytes
        length = _header(scope, b"content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            raise BodyTooLarge
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
                    if size > limit:
                        raise BodyTooLarge
                    chunks.append(chunk)
                    if not message.get("more_body", False):
                        break
        except TimeoutError as exc:
            raise BodyTimeout from exc
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
