"""The public listener's app, as plain ASGI.

``POST /webhook/{tenant}`` is served here, the ``/bridge`` WebSocket by the
bridge endpoint (appliance/bridges.py), and everything else is a JSON 404.
No framework sits on this path: measured on these machines, Quart's request
handling alone costs about half of Hypercorn's ceiling (README,
"Performance"), and a 404 that reads the request's body first keeps
Hypercorn's HTTP/2 connections whole (a stream's data arriving after its
handler ended breaks the connection in Hypercorn 0.18).

A webhook is answered in this order (PROTOCOL.md §1): body (size limit and
read deadline), method, tenant, signature over the raw bytes, body shape,
then the durable write, awaited up to the acknowledgement deadline.

Every answer is sent within ``send_timeout``: a peer that will not take it
(an HTTP/2 client that keeps its flow-control window shut) has its
connection dropped, instead of holding a handler and a socket forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

from appliance import payload, signature
from appliance.bridges import BridgeEndpoint, is_bridge_path
from appliance.config import RelayConfig
from appliance.console.board import Board, LocalBoard, process_name
from appliance.errors import (
    BodyTimeout,
    BodyTooLarge,
    InvalidSignature,
    MethodNotAllowed,
    NotFound,
    Overloaded,
    QueueFull,
    RelayError,
    StoreError,
    UnknownTenant,
    response_for,
)
from appliance.hub import Hub
from appliance.listener import connection_of
from appliance.logs import AccessLog
from appliance.metrics import Metrics
from appliance.proxies import TrustedProxies
from appliance.store import Store, wait_until
from appliance.tenants import TENANT_ID, TenantDirectory
from appliance.webhooks import Webhooks

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

#: An oversized HTTP/1 body up to this many bytes (or 4 times ``max_body_bytes``
#: if more) is drained after its 413, so the answer reaches a client that reads
#: only once it has sent everything (see Ingress._refuse_oversized).
DRAIN_BYTES = 16 * 1024 * 1024
WEBHOOK_PREFIX = "/webhook/"
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
    """What the hot paths share: config, tenants, store, hub, metrics, trusted proxies;
    and the operator's view of stored webhooks."""

    def __init__(
        self,
        config: RelayConfig,
        tenants: TenantDirectory,
        store: Store,
        hub: Hub,
        metrics: Metrics,
        board: Board | None = None,
    ) -> None:
        self.config = config
        self.tenants = tenants
        self.store = store
        self.hub = hub
        self.metrics = metrics
        self.access_log = AccessLog()
        self.proxies = TrustedProxies(config.trusted_proxies)
        #: Stored webhooks for operators (the admin API, the console).
        self.webhooks = Webhooks(store, hub)
        #: Where this process posts its bridges for a console any process answers.
        self.board = board or LocalBoard(process_name(None))

    def configure(self, config: RelayConfig) -> None:
        """Apply a reloaded config to what the hot paths share."""
        self.config = config
        self.proxies = TrustedProxies(config.trusted_proxies)
        self.hub.configure(
            config.bridge_window,
            config.bridge_window_v2,
            config.bridge_window_bytes,
            config.nack_backoff,
            config.send_timeout,
        )


class Ingress:
    """The public ASGI app: webhooks here, bridges to ``bridges``, anything else 404."""

    def __init__(self, relay: Relay, bridges: BridgeEndpoint) -> None:
        self.relay = relay
        self.bridges = bridges

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        kind = scope["type"]
        if kind == "http" and path.startswith(WEBHOOK_PREFIX):
            await self.webhook(scope, receive, send)
        elif kind == "websocket" and is_bridge_path(path):
            await self.bridge(scope, receive, send)
        elif kind == "http":
            await self.not_found(scope, receive, send)
        elif kind == "websocket":
            await receive()  # websocket.connect
            await self._within_deadline(scope, send, [{"type": "websocket.close", "code": 1008}])

    # -- answers -------------------------------------------------------------

    async def not_found(self, scope: Scope, receive: Receive, send: Send) -> None:
        """404 for any other path, once its body is read (or found too large)."""
        try:
            await self._read_body(scope, receive)
        except BodyTooLarge as error:
            await self._refuse_oversized(scope, receive, send, error, NotFound())
            return
        except RelayError:
            pass  # a body that never came: the answer is the same
        await self._refuse(scope, send, NotFound())

    async def _within_deadline(self, scope: Scope, send: Send, messages: list[Message]) -> None:
        """Send ``messages`` within ``send_timeout``, else drop the connection."""
        try:
            async with asyncio.timeout(self.relay.config.send_timeout):
                for message in messages:
                    await send(message)
        except TimeoutError:
            self.relay.metrics.send_timeouts["answer"].inc()
            connection = connection_of(scope)
            if connection is not None:
                connection.abort()
        except OSError as exc:  # ssl.SSLError included: a TLS peer that already closed
            log.debug("client gone before the answer", extra={"why": repr(exc)})

    async def _respond(
        self,
        scope: Scope,
        send: Send,
        status: int,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        kind: str = "http",
    ) -> None:
        """Send a whole response (``kind`` "websocket.http" before a refused upgrade)."""
        await self._within_deadline(
            scope,
            send,
            [
                {"type": f"{kind}.response.start", "status": status, "headers": headers},
                {"type": f"{kind}.response.body", "body": body},
            ],
        )

    async def _refuse(self, scope: Scope, send: Send, error: RelayError) -> None:
        """Answer a request refused before its body is read (counted if it was a webhook)."""
        if scope.get("path", "").startswith(WEBHOOK_PREFIX):
            self.relay.metrics.outcome[_OUTCOME_OF.get(type(error), error.code)].inc()
        status, headers, body = response_for(error)
        headers.append((b"content-length", str(len(body)).encode()))
        await self._respond(scope, send, status, headers, body)

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
            await self._respond(scope, send, 200, _OK_HEADERS, b"{}")
        except BodyTooLarge as error:
            result.outcome = _OUTCOME_OF[BodyTooLarge]
            status = error.status
            await self._refuse_oversized(scope, receive, send, error)
        except RelayError as error:
            result.outcome = result.outcome or _OUTCOME_OF.get(type(error), error.code)
            status, headers, body_out = response_for(error)
            await self._respond(scope, send, status, headers, body_out)
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
                "client": self._client(scope),
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
        if claimed is None or not (
            signature.verify(tenant.secret, body, claimed)
            # In a secret rotation's grace, the old secret too (appliance/tenants.py).
            or tenant.verifies_with_previous_secret(body, claimed)
        ):
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
        """The whole body, or :class:`BodyTooLarge` once it is known to be over the limit."""
        limit = self.relay.config.max_body_bytes
        length = _header(scope, b"content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            hopeless = not length.isdigit() or int(length) > _drain_bytes(limit)
            raise BodyTooLarge(unread=True, hopeless=hopeless)
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
                    more = message.get("more_body", False)
                    if size > limit:
                        raise BodyTooLarge(unread=more)
                    chunks.append(chunk)
                    if not more:
                        break
        except TimeoutError as exc:
            raise BodyTimeout from exc
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def _refuse_oversized(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        error: BodyTooLarge,
        answer: RelayError | None = None,
    ) -> None:
        """Answer ``answer`` (the 413 by default) at once, then read the rest of the
        body and drop it.

        A client may wait for an early answer before it sends the body, so
        the 413 goes out first; but a connection closed on a client still
        sending is reset, and the reset can destroy the 413 before the
        client reads it. So the answer's bytes go out complete (its
        Content-Length is met) while the response is held open until the
        rest of the body is drained within ``body_timeout`` (HTTP/1: up to
        :data:`DRAIN_BYTES`); then the connection can carry
        the next request. An HTTP/1 body declared larger than that is
        answered with the connection closed. HTTP/2 streams are drained
        whole: flow control and the deadline bound them, and Hypercorn drops
        the connection when data arrives for a stream whose handler ended.
        """
        status, headers, body = response_for(answer or error)
        headers.append((b"content-length", str(len(body)).encode()))
        http1 = scope.get("http_version") != "2"
        if not error.unread or (error.hopeless and http1):
            if http1 and error.unread:
                headers.append((b"connection", b"close"))
            await self._respond(scope, send, status, headers, body)
            return
        start = {"type": "http.response.start", "status": status, "headers": headers}
        partial = {"type": "http.response.body", "body": body, "more_body": True}
        await self._within_deadline(scope, send, [start, partial])
        budget = _drain_bytes(self.relay.config.max_body_bytes) if http1 else 1 << 62
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.relay.config.body_timeout):
                while budget > 0:
                    message = await receive()
                    budget -= len(message.get("body", b""))
                    if message["type"] != "http.request" or not message.get("more_body"):
                        break
        await self._within_deadline(scope, send, [{"type": "http.response.body", "body": b""}])

    # -- bridges -------------------------------------------------------------

    async def bridge(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A bridge WebSocket that came through Hypercorn (HTTP/2 extended CONNECT):
        the bridge endpoint's (HTTP/1.1 upgrades reach it straight from the listener)."""
        connection = connection_of(scope)
        await self.bridges.serve_asgi(
            scope,
            receive,
            send,
            self._client(scope),
            connection.abort if connection is not None else lambda: None,
        )

    def _client(self, scope: Scope) -> str:
        """The client address to believe: the socket's peer, or, from a trusted proxy,
        what its X-Forwarded-For says (appliance/proxies.py)."""
        connection = connection_of(scope)
        if connection is None:
            client = scope.get("client")
            return str(client[0]) if client else "?"
        return connection.client(_header(scope, b"x-forwarded-for"), self.relay.proxies)


def _drain_bytes(limit: int) -> int:
    """How much of an oversized HTTP/1 body is drained after its 413."""
    return max(DRAIN_BYTES, 4 * limit)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None
