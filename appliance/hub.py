"""The bridge hub: WebSocket connections from bridges, fed by the store.

Thin asyncio around :class:`appliance.delivery.TenantDelivery`. Each
connection has an outbox drained by its own sender task, so the state machine
never waits on a slow socket; the store's commit callback pushes new webhooks
to connected bridges at once (no polling). Protocol 2 connections get what
one event made ready (a group commit, an ack) as one ``webhooks`` frame.

The hub knows a connection only through a :class:`BridgeTransport` (send a
text frame, close, abort), so the WebSocket under it may be python-websockets
or Hypercorn's (appliance/bridges.py), and tests need neither.

A bridge that stops reading cannot make the relay hold more than its window:
the outbox only ever holds frames of webhooks in flight (bounded by
``window`` and ``window_bytes``), a connection that stops being active has
its unsent frames dropped (its successor gets them), and a frame the peer
does not take within ``send_timeout`` drops the connection.

With a store shared by several processes (Redis), a tenant's bridges are
served by one process at a time: the one where its newest connection landed
(:meth:`appliance.store.Store.claim`). When another process takes the tenant
over, this one's connections of it are *parked*: open, greeted, sent nothing.
When that process gives the tenant up (its bridge went) or dies, the store
hands it back and the parked connections are served again, the newest active,
with every unacked webhook sent again in order. On one process (SQLite) no
tenant is ever parked.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from appliance import protocol
from appliance.delivery import Action, Fetch, Send, StoreAck, TenantDelivery
from appliance.logs import Throttle
from appliance.metrics import Metrics
from appliance.store import Delivery, Store

log = logging.getLogger(__name__)

#: Close codes the relay uses (4000-4999 is the application range).
CLOSE_TENANT_REMOVED = 4404
CLOSE_TOKEN_ROTATED = 4401
CLOSE_SHUTDOWN = 1001
#: Seconds before a failed store read for a bridge is tried again.
FETCH_RETRY = 1.0


class BridgeTransport(Protocol):
    """What the hub needs of a bridge's WebSocket."""

    async def send(self, text: str) -> None:
        """Send one text frame; returns once the transport took it.

        Raises :class:`ConnectionError` when the WebSocket is already closed.
        """

    async def close(self, code: int) -> None:
        """Close the WebSocket with ``code`` (:class:`ConnectionError` as for ``send``)."""

    def abort(self) -> None:
        """Drop the connection now, unsent data and all."""


class BridgeConnection:
    """One open bridge WebSocket and its queue of frames to send.

    A task drains the queue only while there is something to send: an idle
    bridge holds no task of its own (bench/idle_bridges.py counts the bytes).
    """

    __slots__ = (
        "_close_code",
        "_closed",
        "_drain",
        "_on_timeout",
        "_outbox",
        "acks",
        "connected_at",
        "last_ack",
        "peer",
        "protocol",
        "redeliveries",
        "send_timeout",
        "tenant",
        "token_hash",
        "transport",
    )

    def __init__(
        self,
        tenant: str,
        transport: BridgeTransport,
        peer: str,
        protocol: int = 1,
        send_timeout: float = 10.0,
        on_timeout: Callable[[BridgeConnection], None] = lambda _: None,
        token_hash: bytes = b"",
    ) -> None:
        self.tenant = tenant
        #: The digest of the token the bridge logged in with: which of its tenant's
        #: tokens it holds, checked again when they change (a rotation, a grace's end).
        self.token_hash = token_hash
        self.transport = transport
        self.peer = peer
        self.protocol = protocol
        self.send_timeout = send_timeout
        self._on_timeout = on_timeout
        # A list, not a deque: an empty deque costs 760 bytes, and idle bridges are many.
        self._outbox: list[str] = []
        self._drain: asyncio.Task[None] | None = None
        self._closed = False
        self._close_code: int | None = None
        # What the console shows of a bridge (appliance/console): plain fields the
        # hot path bumps, read only when a page is drawn.
        self.connected_at = time.time()
        self.acks = 0
        self.last_ack: float | None = None  # time.monotonic() of the latest ack
        self.redeliveries = 0

    def push(self, text: str) -> None:
        """Queue a frame for sending."""
        if not self._closed:
            self._outbox.append(text)
            self._start_drain()

    def drop_unsent(self) -> None:
        """Forget frames not yet handed to the socket (another connection gets them)."""
        self._outbox.clear()

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
            async with asyncio.timeout(None) as deadline:
                loop = asyncio.get_running_loop()
                while self._outbox and not self._closed:
                    deadline.reschedule(loop.time() + self.send_timeout)
                    await self.transport.send(self._outbox.pop(0))
                if self._close_code is not None and not self._closed:
                    self._closed = True
                    deadline.reschedule(loop.time() + self.send_timeout)
                    await self.transport.close(self._close_code)
        except TimeoutError:
            # The peer stopped reading: its frames would pile up in memory.
            self._closed = True
            self._outbox.clear()
            self._on_timeout(self)
            self.transport.abort()
        except (OSError, RuntimeError) as exc:
            # The peer vanished mid-send; the receive side sees the disconnect.
            log.debug("bridge send failed", extra={"tenant": self.tenant, "why": repr(exc)})
            self._closed = True
        finally:
            self._drain = None


class Hub:
    """Routes committed webhooks to bridges and bridge acks to the store.

    :attr:`connections` is the one registry of open bridge connections.
    """

    def __init__(
        self,
        store: Store,
        metrics: Metrics,
        window: int = 64,
        backoff: float = 1.0,
        window_bytes: int = 4 * 1024 * 1024,
        window_v2: int = 256,
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.window = window
        self.window_v2 = window_v2
        self.window_bytes = window_bytes
        self.backoff = backoff
        self.connections: set[BridgeConnection] = set()
        self._tenants: dict[str, TenantDelivery] = {}
        # Connections of tenants another process serves, oldest first.
        self._parked: dict[str, list[BridgeConnection]] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._bad_frames = Throttle(log, logging.INFO, "bad bridge frames")
        self._send_timeouts = Throttle(log, logging.INFO, "bridges dropped: not reading")
        store.subscribe(self._on_commit)
        store.watch_ownership(self._ownership_changed)

    def configure(
        self, window: int, window_v2: int, window_bytes: int, backoff: float, send_timeout: float
    ) -> None:
        """New limits for every tenant, connected ones included (config reload).

        A smaller window applies as acks come in: nothing already sent is taken back.
        """
        self.window, self.window_v2 = window, window_v2
        self.window_bytes, self.backoff = window_bytes, backoff
        for connection in self.connections:
            connection.send_timeout = send_timeout
        for state in self._tenants.values():
            state.window = self._window_of(state.active)
            state.window_bytes, state.backoff = window_bytes, backoff
            self._run(state, state.tick(time.monotonic()))

    def _window_of(self, connection: object) -> int:
        """The window of ``connection``'s protocol (a tenant's active connection sets it)."""
        if isinstance(connection, BridgeConnection) and connection.protocol >= 2:
            return self.window_v2
        return self.window

    def _state(self, tenant: str) -> TenantDelivery:
        state = self._tenants.get(tenant)
        if state is None:
            state = self._tenants[tenant] = TenantDelivery(
                tenant, self.window, self.backoff, self.window_bytes
            )
        return state

    # -- connections ---------------------------------------------------------

    def attach(self, connection: BridgeConnection) -> None:
        """A bridge authenticated: greet it and make it the tenant's active connection."""
        window = self._window_of(connection)
        hello = protocol.Hello(
            tenant=connection.tenant, window=window, protocol=connection.protocol
        )
        connection.push(protocol.encode(hello, connection.protocol))
        self.connections.add(connection)
        self.metrics.bridges_connected.inc()
        self.metrics.bridge_connects[connection.tenant] += 1
        state = self._state(connection.tenant)
        # The newest connection anywhere is served: parked ones here stand by behind it.
        state.connections[:0] = self._parked.pop(connection.tenant, [])
        self.store.claim(connection.tenant)
        previous = state.active
        if isinstance(previous, BridgeConnection):
            # Its unsent frames go to the new connection; keeping them would
            # let a bridge that stopped reading hold a window per connection.
            previous.drop_unsent()
        log.info(
            "bridge connected",
            extra={
                "tenant": connection.tenant,
                "peer": connection.peer,
                "protocol": connection.protocol,
                "standby": len(state.connections),
            },
        )
        state.window = window
        self._run(state, state.connect(connection, time.monotonic()))

    def detach(self, connection: BridgeConnection) -> None:
        """A bridge went away: hand its unacked webhooks to the next connection."""
        connection.close()
        if connection not in self.connections:
            return
        self.connections.discard(connection)
        self.metrics.bridges_connected.dec()
        tenant = connection.tenant
        state = self._tenants.get(tenant)
        log.info("bridge disconnected", extra={"tenant": tenant, "peer": connection.peer})
        parked = self._parked.get(tenant)
        if parked is not None and connection in parked:
            parked.remove(connection)
            if not parked:
                del self._parked[tenant]
                self.store.release(tenant)
            return
        if state is None:
            return
        actions = state.disconnect(connection, time.monotonic())
        state.window = self._window_of(state.active)
        self._run(state, actions)
        if not state.connections:
            self._forget(tenant)
            self.store.release(tenant)

    def send_timed_out(self, connection: BridgeConnection) -> None:
        """``connection`` did not take a frame within its send timeout; it is being dropped."""
        self.metrics.send_timeouts["bridge"].inc()
        self._send_timeouts(time.monotonic(), tenant=connection.tenant, peer=connection.peer)

    def receive(self, connection: BridgeConnection, data: str | bytes) -> None:
        """A frame arrived from ``connection``; malformed ones are counted and ignored."""
        if isinstance(data, bytes):
            self.metrics.frame_rejected["binary"].inc()
            return
        try:
            frame = protocol.decode(data)
        except protocol.FrameError as exc:
            self.metrics.frame_rejected["malformed"].inc()
            self._bad_frames(time.monotonic(), tenant=connection.tenant, why=str(exc))
            return
        if not isinstance(frame, protocol.Ack | protocol.Nack):
            return  # hello/webhook from a bridge, or an unknown type: ignored by design
        state = self._tenants.get(connection.tenant)
        now = time.monotonic()
        actions: list[Action] | None = None
        if state is not None and isinstance(frame, protocol.Ack):
            actions = self._acks(state, connection, frame.ids, now)
        elif state is not None and isinstance(frame, protocol.Nack):
            actions = state.nack(connection, frame.id, now)
            if actions is not None:
                self.metrics.nacks.inc()
                log.info(
                    "bridge nack",
                    extra={
                        "tenant": connection.tenant,
                        "delivery": frame.id,
                        "reason": frame.reason,
                    },
                )
        if actions is None or state is None:
            # Not an id sent on this connection (PROTOCOL.md §2): ignored.
            self.metrics.frame_rejected["unknown_id"].inc()
            return
        self._run(state, actions)

    def _acks(
        self, state: TenantDelivery, connection: BridgeConnection, ids: Sequence[str], now: float
    ) -> list[Action] | None:
        """The actions for acks of ``ids``; None if none was sent on ``connection``."""
        actions: list[Action] | None = None
        for delivery_id in ids:
            acked = state.ack(connection, delivery_id, now)
            if acked is None:
                self.metrics.frame_rejected["unknown_id"].inc()
                continue
            self.metrics.acks.inc()
            connection.acks += 1
            actions = (actions or []) + acked
        if actions is not None:
            connection.last_ack = now
        return actions

    def close_tenant(self, tenant: str, why: str) -> list[BridgeConnection]:
        """Stop serving ``tenant`` (removed or token rotated); returns its connections to close."""
        state = self._tenants.get(tenant)
        parked = self._parked.pop(tenant, [])
        if state is None and not parked:
            return []
        log.info("closing tenant bridges", extra={"tenant": tenant, "why": why})
        connections = list(parked)
        if state is not None:
            connections += [c for c in state.connections if isinstance(c, BridgeConnection)]
        self._forget(tenant)
        self.store.release(tenant)
        return connections

    def delivery_of(self, tenant: str) -> TenantDelivery | None:
        """``tenant``'s delivery state while a bridge of it is connected; for reading only
        (the console shows its window in flight)."""
        return self._tenants.get(tenant)

    def of_tenant(self, tenant: str) -> list[BridgeConnection]:
        """The open connections of ``tenant``."""
        return [c for c in self.connections if c.tenant == tenant]

    def reload(self, tenant: str) -> None:
        """Rows of ``tenant`` were deleted (an operator's purge): stop delivering them."""
        state = self._tenants.get(tenant)
        if state is not None:
            self._run(state, state.reload(time.monotonic()))

    def expired(self, tenant: str, seqs: Sequence[int]) -> None:
        """The store expired rows of ``tenant``: stop delivering them."""
        state = self._tenants.get(tenant)
        if state is not None:
            self._run(state, state.expired(seqs, time.monotonic()))

    def _ownership_changed(self, tenant: str, serving: bool) -> None:
        """Another process took ``tenant`` (park its connections here), or gave it
        back (serve them again: the newest active, unacked webhooks resent in order)."""
        if not serving:
            state = self._tenants.get(tenant)
            if state is None:
                if tenant not in self._parked:
                    self.store.release(tenant)  # nothing here to stand by
                return
            parked = [c for c in state.connections if isinstance(c, BridgeConnection)]
            for connection in parked:
                connection.drop_unsent()
            self._forget(tenant)
            if parked:
                self._parked[tenant] = parked
                log.info("bridges standing by", extra={"tenant": tenant, "count": len(parked)})
            return
        parked = self._parked.pop(tenant, [])
        if not parked or tenant in self._tenants:
            if not parked and tenant not in self._tenants:
                self.store.release(tenant)  # they went meanwhile
            return
        state = self._state(tenant)
        state.connections.extend(parked[:-1])
        state.window = self._window_of(parked[-1])
        log.info("bridges served again", extra={"tenant": tenant, "count": len(parked)})
        self._run(state, state.connect(parked[-1], time.monotonic()))

    # -- store side ----------------------------------------------------------

    def _on_commit(self, deliveries: Sequence[Delivery]) -> None:
        now = time.monotonic()
        # Each tenant's share of the batch in one go: one frame per connection in protocol 2.
        by_tenant: dict[str, list[Action]] = {}
        for delivery in deliveries:
            state = self._tenants.get(delivery.tenant)
            if state is not None:
                by_tenant.setdefault(delivery.tenant, []).extend(state.committed(delivery, now))
        for tenant, actions in by_tenant.items():
            self._run(self._tenants[tenant], actions)

    async def _fetch(self, state: TenantDelivery, action: Fetch) -> None:
        while True:
            try:
                rows = await self.store.pending(
                    state.tenant, action.after, action.limit, action.max_bytes
                )
                break
            except Exception as exc:
                # An empty page would read as "caught up": try again instead.
                log.warning(
                    "store read failed; retrying", extra={"tenant": state.tenant, "why": str(exc)}
                )
                await asyncio.sleep(FETCH_RETRY)
                if self._tenants.get(state.tenant) is not state:
                    return
        if self._tenants.get(state.tenant) is state:
            self._run(state, state.loaded(rows, action, time.monotonic()))

    # -- carrying out actions ------------------------------------------------

    def _run(self, state: TenantDelivery, actions: list[Action]) -> None:
        sent: list[int] = []
        batch: list[protocol.Webhook] = []
        batch_to: BridgeConnection | None = None
        for action in actions:
            if isinstance(action, Send):
                connection = action.connection
                assert isinstance(connection, BridgeConnection)
                sent.append(action.seq)
                if action.frame.attempt == 1:
                    self.metrics.deliveries.inc()
                else:
                    self.metrics.redeliveries.inc()
                    connection.redeliveries += 1
                if connection.protocol < 2:
                    connection.push(protocol.encode(action.frame))
                    continue
                if batch_to is not connection:
                    _push_batch(batch_to, batch)
                    batch, batch_to = [], connection
                batch.append(action.frame)
            elif isinstance(action, StoreAck):
                self.store.ack(state.tenant, action.seq)
            else:
                task = asyncio.get_running_loop().create_task(self._fetch(state, action))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        _push_batch(batch_to, batch)
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


def _push_batch(connection: BridgeConnection | None, frames: list[protocol.Webhook]) -> None:
    """Queue ``frames`` for a protocol 2 ``connection`` as one ``webhooks`` frame."""
    if connection is not None and frames:
        connection.push(protocol.encode(protocol.Webhooks(tuple(frames)), 2))
