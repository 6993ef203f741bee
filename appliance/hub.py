"""The bridge hub: WebSocket connections from bridges, fed by the store.

Thin asyncio around :class:`appliance.delivery.TenantDelivery`. Each
connection has an outbox drained by its own sender task, so the state machine
never waits on a slow socket; the store's commit callback pushes new webhooks
to connected bridges at once (no polling).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from appliance import protocol
from appliance.delivery import Action, Fetch, Send, StoreAck, TenantDelivery
from appliance.metrics import Metrics
from appliance.store import Delivery, Store, parse_delivery_id

log = logging.getLogger(__name__)

ASGISend = Callable[[dict[str, Any]], Awaitable[None]]

#: Close codes the relay uses (4000-4999 is the application range).
CLOSE_TENANT_REMOVED = 4404
CLOSE_TOKEN_ROTATED = 4401
CLOSE_SHUTDOWN = 1001


class BridgeConnection:
    """One open bridge WebSocket and its queue of frames to send.

    A task drains the queue only while there is something to send: an idle
    bridge holds no task of its own (bench/idle_bridges.py counts the bytes).
    """

    __slots__ = ("_close_code", "_closed", "_drain", "_outbox", "_send", "peer", "tenant")

    def __init__(self, tenant: str, send: ASGISend, peer: str) -> None:
        self.tenant = tenant
        self.peer = peer
        self._send = send  # the connection's ASGI send
        # A list, not a deque: an empty deque costs 760 bytes, and idle bridges are many.
        self._outbox: list[str] = []
        self._drain: asyncio.Task[None] | None = None
        self._closed = False
        self._close_code: int | None = None

    def push(self, text: str) -> None:
        """Queue a frame for sending."""
        if not self._closed:
            self._outbox.append(text)
            self._start_drain()

    def close(self) -> None:
        """Stop sending: the socket is gone."""
        self._closed = True
        self._outbox.clear()
        if self._drain is not None:
            self._drain.cancel()

    def terminate(self, code: int) -> None:
        """Close the WebSocket with ``code`` once queued frames are out."""
        self._close_code = code
        self._start_drain()

    def _start_drain(self) -> None:
        if self._drain is None and not self._closed:
            self._drain = asyncio.get_running_loop().create_task(self._run_drain())

    async def _run_drain(self) -> None:
        try:
            while self._outbox and not self._closed:
                await self._send({"type": "websocket.send", "text": self._outbox.pop(0)})
            if self._close_code is not None and not self._closed:
                self._closed = True
                await self._send({"type": "websocket.close", "code": self._close_code})
        except (OSError, RuntimeError) as exc:
            # The peer vanished mid-send; the receive side sees the disconnect.
            log.info("bridge send failed", extra={"tenant": self.tenant, "why": repr(exc)})
            self._closed = True
        finally:
            self._drain = None


class Hub:
    """Routes committed webhooks to bridges and bridge acks to the store."""

    def __init__(
        self, store: Store, metrics: Metrics, window: int = 64, backoff: float = 1.0
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.window = window
        self.backoff = backoff
        self._tenants: dict[str, TenantDelivery] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        store.subscribe(self._on_commit)

    def _state(self, tenant: str) -> TenantDelivery:
        state = self._tenants.get(tenant)
        if state is None:
            state = self._tenants[tenant] = TenantDelivery(tenant, self.window, self.backoff)
        return state

    # -- connections ---------------------------------------------------------

    def attach(self, connection: BridgeConnection) -> None:
        """A bridge authenticated: greet it and make it the tenant's active connection."""
        connection.push(
            protocol.encode(protocol.Hello(tenant=connection.tenant, window=self.window))
        )
        self.metrics.bridges_connected.inc()
        state = self._state(connection.tenant)
        log.info(
            "bridge connected",
            extra={
                "tenant": connection.tenant,
                "peer": connection.peer,
                "standby": len(state.connections),
            },
        )
        self._run(state, state.connect(connection, time.monotonic()))

    def detach(self, connection: BridgeConnection) -> None:
        """A bridge went away: hand its unacked webhooks to the next connection."""
        connection.close()
        self.metrics.bridges_connected.dec()
        state = self._tenants.get(connection.tenant)
        log.info(
            "bridge disconnected", extra={"tenant": connection.tenant, "peer": connection.peer}
        )
        if state is None:
            return
        self._run(state, state.disconnect(connection, time.monotonic()))
        if not state.connections:
            self._forget(connection.tenant)

    def receive(self, connection: BridgeConnection, data: str | bytes) -> None:
        """A frame arrived from ``connection``; malformed ones are counted and ignored."""
        if isinstance(data, bytes):
            self.metrics.frame_rejected["binary"].inc()
            return
        try:
            frame = protocol.decode(data)
        except protocol.FrameError as exc:
            self.metrics.frame_rejected["malformed"].inc()
            log.warning("bad bridge frame", extra={"tenant": connection.tenant, "why": str(exc)})
            return
        if not isinstance(frame, protocol.Ack | protocol.Nack):
            return  # hello/webhook from a bridge, or an unknown type: ignored by design
        seq = parse_delivery_id(frame.id)
        state = self._tenants.get(connection.tenant)
        if seq is None or state is None:
            self.metrics.frame_rejected["unknown_id"].inc()
            return
        now = time.monotonic()
        if isinstance(frame, protocol.Ack):
            self.metrics.acks.inc()
            self._run(state, state.ack(seq, now))
        else:
            self.metrics.nacks.inc()
            log.info(
                "bridge nack",
                extra={"tenant": connection.tenant, "delivery": frame.id, "reason": frame.reason},
            )
            self._run(state, state.nack(seq, now))

    def close_tenant(self, tenant: str, why: str) -> list[BridgeConnection]:
        """Stop serving ``tenant`` (removed or token rotated); returns its connections to close."""
        state = self._tenants.get(tenant)
        if state is None:
            return []
        log.info("closing tenant bridges", extra={"tenant": tenant, "why": why})
        connections = [c for c in state.connections if isinstance(c, BridgeConnection)]
        self._forget(tenant)
        return connections

    def expired(self, tenant: str, seqs: Sequence[int]) -> None:
        """The store expired rows of ``tenant``: stop delivering them."""
        state = self._tenants.get(tenant)
        if state is not None:
            self._run(state, state.expired(seqs, time.monotonic()))

    # -- store side ----------------------------------------------------------

    def _on_commit(self, deliveries: Sequence[Delivery]) -> None:
        now = time.monotonic()
        for delivery in deliveries:
            state = self._tenants.get(delivery.tenant)
            if state is not None:
                self._run(state, state.committed(delivery, now))

    async def _fetch(self, state: TenantDelivery, action: Fetch) -> None:
        try:
            rows = await self.store.pending(state.tenant, action.after, action.limit)
        except Exception:
            log.exception("store read failed", extra={"tenant": state.tenant})
            rows = []
        if self._tenants.get(state.tenant) is state:
            self._run(state, state.loaded(rows, action.limit, action.generation, time.monotonic()))

    # -- carrying out actions ------------------------------------------------

    def _run(self, state: TenantDelivery, actions: list[Action]) -> None:
        sent: list[int] = []
        for action in actions:
            if isinstance(action, Send):
                assert isinstance(action.connection, BridgeConnection)
                action.connection.push(protocol.encode(action.frame))
                sent.append(action.seq)
                if action.frame.attempt == 1:
                    self.metrics.deliveries.inc()
                else:
                    self.metrics.redeliveries.inc()
            elif isinstance(action, StoreAck):
                self.store.ack(state.tenant, action.seq)
            else:
                task = asyncio.get_running_loop().create_task(self._fetch(state, action))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        self.store.mark_sent(sent)
        self._arm_timer(state)

    def _arm_timer(self, state: TenantDelivery) -> None:
        due = state.next_due()
        timer = self._timers.pop(state.tenant, None)
        if timer is not None:
            timer.cancel()
        if due is not None:
            delay = max(0.0, due - time.monotonic())
            self._timers[state.tenant] = asyncio.get_running_loop().call_later(
                delay, lambda: self._run(state, state.tick(time.monotonic()))
            )

    def _forget(self, tenant: str) -> None:
        self._tenants.pop(tenant, None)
        timer = self._timers.pop(tenant, None)
        if timer is not None:
            timer.cancel()
