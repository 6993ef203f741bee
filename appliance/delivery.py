"""Per-tenant delivery to bridges as a state machine, without I/O.

One :class:`TenantDelivery` per tenant decides which webhook goes to which
connection and when; the hub (appliance/hub.py) feeds it events and carries
out the actions it returns: :class:`Send` a frame, :class:`Fetch` rows from
the store, :class:`StoreAck` a row.

Rules (PROTOCOL.md §2, and our choices where it is silent):

- Several bridges of one tenant may connect. The **newest** connection is the
  active one and receives webhooks; older ones stand by, and the next newest
  takes over when the active one goes. Newest wins because a bridge that
  reconnects after a network change is usually the live one, while its old
  connection may be half-open for a while yet.
- Whenever the active connection changes, everything in memory is dropped and
  reloaded from the store, which is the truth: unacked webhooks are sent again
  in order of receipt, with ``attempt`` raised.
- At most ``window`` webhooks are in flight unacked on the active connection.
- A nacked webhook is sent again after a backoff that doubles per attempt
  (``backoff`` seconds at first, at most :data:`MAX_BACKOFF`).
- Webhooks committed while the tenant is caught up go straight to memory; a
  tenant that is behind (no bridge, or a slow one) reads them back from the
  store in pages, so memory stays bounded however long the queue.
"""

from __future__ import annotations

import heapq
from collections.abc import Hashable, Iterable
from dataclasses import dataclass

from appliance import protocol
from appliance.store import Delivery

MAX_BACKOFF = 60.0


@dataclass(frozen=True, slots=True)
class Send:
    """Send ``frame`` on ``connection``; row ``seq`` has one more attempt."""

    connection: Hashable
    frame: protocol.Webhook
    seq: int


@dataclass(frozen=True, slots=True)
class Fetch:
    """Load up to ``limit`` unacked rows with ``seq > after``, then call :meth:`TenantDelivery.loaded`."""

    after: int
    limit: int
    generation: int


@dataclass(frozen=True, slots=True)
class StoreAck:
    """Mark row ``seq`` delivered in the store."""

    seq: int


Action = Send | Fetch | StoreAck


class TenantDelivery:
    """Which of a tenant's webhooks go where, and when."""

    __slots__ = (
        "_caught_up",
        "_fetching",
        "_generation",
        "_inflight",
        "_loaded_upto",
        "_max_committed",
        "_ready",
        "_retry",
        "backoff",
        "connections",
        "tenant",
        "window",
    )

    def __init__(self, tenant: str, window: int, backoff: float = 1.0) -> None:
        self.tenant = tenant
        self.window = window
        self.backoff = backoff
        self.connections: list[Hashable] = []  # oldest first; the last is active
        # Loaded, not sent, in seq order; at most 2 * window long, so a list's
        # pop(0) is cheap, and an idle tenant does not pay for an empty deque.
        self._ready: list[Delivery] = []
        self._inflight: dict[int, Delivery] = {}  # sent on the active connection
        self._retry: list[tuple[float, int, Delivery]] = []  # (due, seq, delivery) heap
        self._loaded_upto = 0  # highest seq in memory or known handled
        self._max_committed = 0  # highest seq the store reported committed
        self._caught_up = False
        self._fetching = False
        self._generation = 0

    # -- queries -------------------------------------------------------------

    @property
    def active(self) -> Hashable | None:
        """The connection that receives webhooks, if any."""
        return self.connections[-1] if self.connections else None

    @property
    def in_flight(self) -> int:
        """Webhooks sent and not yet acked on the active connection."""
        return len(self._inflight)

    def next_due(self) -> float | None:
        """When the earliest nacked webhook may be sent again, if any."""
        return self._retry[0][0] if self._retry else None

    # -- events --------------------------------------------------------------

    def connect(self, connection: Hashable, now: float) -> list[Action]:
        """A bridge connected: it becomes the active connection."""
        self.connections.append(connection)
        self._reset()
        return self._pump(now)

    def disconnect(self, connection: Hashable, now: float) -> list[Action]:
        """A bridge went away; if it was active, the next newest takes over."""
        was_active = connection == self.active
        if connection in self.connections:
            self.connections.remove(connection)
        if not was_active:
            return []
        self._reset()
        return self._pump(now)

    def committed(self, delivery: Delivery, now: float) -> list[Action]:
        """The store committed a new webhook for this tenant."""
        self._max_committed = max(self._max_committed, delivery.seq)
        if (
            self.active is None
            or not self._caught_up
            or delivery.seq <= self._loaded_upto
            or len(self._ready) >= 2 * self.window
        ):
            # Not kept in memory: the store has it, and a Fetch will find it.
            self._caught_up = False
            return self._pump(now)
        self._ready.append(delivery)
        self._loaded_upto = delivery.seq
        return self._pump(now)

    def loaded(self, rows: list[Delivery], limit: int, generation: int, now: float) -> list[Action]:
        """Rows arrived for a :class:`Fetch`; stale ones (from before a reset) are dropped."""
        if generation != self._generation:
            return []
        self._fetching = False
        for row in rows:
            if row.seq > self._loaded_upto:
                self._ready.append(row)
                self._loaded_upto = row.seq
        self._caught_up = len(rows) < limit and self._loaded_upto >= self._max_committed
        return self._pump(now)

    def ack(self, seq: int, now: float) -> list[Action]:
        """A bridge acked row ``seq``; unknown ids are ignored."""
        if self._inflight.pop(seq, None) is None and not self._discard(seq):
            return []
        return [StoreAck(seq), *self._pump(now)]

    def nack(self, seq: int, now: float) -> list[Action]:
        """A bridge refused row ``seq``: send it again after a backoff."""
        delivery = self._inflight.pop(seq, None)
        if delivery is None:
            return []
        delay = min(MAX_BACKOFF, self.backoff * 2 ** max(0, delivery.attempts - 1))
        heapq.heappush(self._retry, (now + delay, seq, delivery))
        return self._pump(now)

    def tick(self, now: float) -> list[Action]:
        """Time passed: send nacked webhooks whose backoff is over."""
        return self._pump(now)

    def expired(self, seqs: Iterable[int], now: float) -> list[Action]:
        """The store expired these rows: stop delivering them."""
        for seq in seqs:
            self._inflight.pop(seq, None)
            self._discard(seq)
        return self._pump(now)

    # -- internals -----------------------------------------------------------

    def _reset(self) -> None:
        self._ready.clear()
        self._inflight.clear()
        self._retry.clear()
        self._loaded_upto = 0
        self._caught_up = False
        self._fetching = False
        self._generation += 1

    def _discard(self, seq: int) -> bool:
        """Drop ``seq`` from the ready queue or the retry heap; True if it was there."""
        for delivery in self._ready:
            if delivery.seq == seq:
                self._ready.remove(delivery)
                return True
        for i, (_, retry_seq, _) in enumerate(self._retry):
            if retry_seq == seq:
                self._retry.pop(i)
                heapq.heapify(self._retry)
                return True
        return False

    def _pump(self, now: float) -> list[Action]:
        connection = self.active
        if connection is None:
            return []
        actions: list[Action] = []
        while len(self._inflight) < self.window:
            if self._retry and self._retry[0][0] <= now:
                delivery = heapq.heappop(self._retry)[2]
            elif self._ready:
                delivery = self._ready.pop(0)
            else:
                break
            delivery.attempts += 1
            self._inflight[delivery.seq] = delivery
            actions.append(Send(connection, _frame(delivery), delivery.seq))
        if not self._ready and not self._caught_up and not self._fetching:
            self._fetching = True
            actions.append(Fetch(self._loaded_upto, 2 * self.window, self._generation))
        return actions


def _frame(delivery: Delivery) -> protocol.Webhook:
    return protocol.Webhook(
        id=delivery.id,
        tenant=delivery.tenant,
        body=delivery.body.decode("utf-8"),
        signature=delivery.signature,
        received_at=delivery.received_at,
        attempt=delivery.attempts,
    )
