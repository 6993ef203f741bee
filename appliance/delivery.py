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
- At most ``window`` webhooks are in flight unacked on the active connection,
  and no more than ``window_bytes`` of bodies (at least one is always sent):
  memory per tenant stays bounded however large the webhooks.
- An ack or nack counts only for a webhook sent on the connection that sends
  it (PROTOCOL.md §2); a bridge cannot ack away webhooks it never received.
- A nacked webhook is sent again after a backoff that doubles per attempt
  (``backoff`` seconds at first, at most :data:`MAX_BACKOFF`).
- Webhooks committed while the tenant is caught up go straight to memory; a
  tenant that is behind (no bridge, or a slow one) reads them back from the
  store in pages of bounded size, so memory stays bounded however long the queue.
"""

from __future__ import annotations

import heapq
from collections.abc import Hashable, Iterable
from dataclasses import dataclass

from appliance import protocol
from appliance.store import Delivery

MAX_BACKOFF = 60.0
#: Ids remembered per connection as sent and not yet answered, in windows; a
#: bridge answering older ones than that gets them again instead. Ids in flight
#: are always remembered.
SENT_MEMORY = 4


@dataclass(frozen=True, slots=True)
class Send:
    """Send ``frame`` on ``connection``; row ``seq`` has one more attempt."""

    connection: Hashable
    frame: protocol.Webhook
    seq: int


@dataclass(frozen=True, slots=True)
class Fetch:
    """Load up to ``limit`` unacked rows (``max_bytes`` of bodies) with ``seq > after``,
    then call :meth:`TenantDelivery.loaded`."""

    after: int
    limit: int
    generation: int
    max_bytes: int | None = None


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
        "_inflight_bytes",
        "_loaded_upto",
        "_missed",
        "_ready",
        "_ready_bytes",
        "_retry",
        "_sent",
        "backoff",
        "connections",
        "tenant",
        "window",
        "window_bytes",
    )

    def __init__(
        self,
        tenant: str,
        window: int,
        backoff: float = 1.0,
        window_bytes: int = 4 * 1024 * 1024,
    ) -> None:
        self.tenant = tenant
        self.window = window
        self.window_bytes = window_bytes
        self.backoff = backoff
        self.connections: list[Hashable] = []  # oldest first; the last is active
        # Loaded, not sent, in seq order; at most 2 * window long, so a list's
        # pop(0) is cheap, and an idle tenant does not pay for an empty deque.
        self._ready: list[Delivery] = []
        self._ready_bytes = 0
        self._inflight: dict[int, Delivery] = {}  # sent on the active connection
        self._inflight_bytes = 0
        # Per connection, the ids sent on it and not yet answered: what its acks may name.
        self._sent: dict[Hashable, dict[str, int]] = {}
        self._retry: list[tuple[float, int, Delivery]] = []  # (due, seq, delivery) heap
        self._loaded_upto = 0  # highest seq in memory or known handled
        # A commit was notified while a Fetch was out: its page may have been read
        # before that row existed, so an empty page does not prove the tenant caught up.
        self._missed = False
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
        self._sent.pop(connection, None)
        if connection in self.connections:
            self.connections.remove(connection)
        if not was_active:
            return []
        self._reset()
        return self._pump(now)

    def committed(self, delivery: Delivery, now: float) -> list[Action]:
        """The store committed a new webhook for this tenant."""
        if (
            self.active is None
            or not self._caught_up
            or delivery.seq <= self._loaded_upto
            or len(self._ready) >= 2 * self.window
            or self._ready_bytes >= self.window_bytes
        ):
            # Not kept in memory: the store has it, and a Fetch will find it.
            self._caught_up = False
            self._missed = self._missed or self._fetching
            return self._pump(now)
        self._append_ready(delivery)
        return self._pump(now)

    def loaded(self, rows: list[Delivery], fetch: Fetch, now: float) -> list[Action]:
        """Rows arrived for ``fetch``; stale ones (from before a reset) are dropped.

        A page shorter than its limit, in rows and in bytes, is the end of the
        queue (:meth:`appliance.store.Store.pending`): the tenant is caught up
        unless a commit came in meanwhile.
        """
        if fetch.generation != self._generation:
            return []
        self._fetching = False
        size = sum(len(row.body) for row in rows)
        complete = len(rows) < fetch.limit and (fetch.max_bytes is None or size < fetch.max_bytes)
        for row in rows:
            if row.seq <= self._loaded_upto:
                continue
            if self._ready and self._ready_bytes >= self.window_bytes:
                complete = False  # the rest stays in the store for the next Fetch
                break
            self._append_ready(row)
        self._caught_up = complete and not self._missed
        return self._pump(now)

    def ack(self, connection: Hashable, delivery_id: str, now: float) -> list[Action] | None:
        """``connection`` acked ``delivery_id``; None if that id was not sent on it.

        The ack stands even if the webhook has since been sent again on a
        newer connection: the bridge that acked it has it.
        """
        seq = self._sent.get(connection, {}).pop(delivery_id, None)
        if seq is None:
            return None
        delivery = self._inflight.pop(seq, None)
        if delivery is not None:
            self._inflight_bytes -= len(delivery.body)
        else:
            self._discard(seq)
        return [StoreAck(seq), *self._pump(now)]

    def nack(self, connection: Hashable, delivery_id: str, now: float) -> list[Action] | None:
        """``connection`` refused ``delivery_id``: send it again after a backoff.

        None if that id was not sent on it. A nack from a connection that is
        no longer active changes nothing: the webhook is being sent again anyway.
        """
        seq = self._sent.get(connection, {}).get(delivery_id)
        if seq is None:
            return None
        delivery = self._inflight.get(seq) if connection == self.active else None
        if delivery is None:
            return []
        del self._inflight[seq]
        self._inflight_bytes -= len(delivery.body)
        delay = min(MAX_BACKOFF, self.backoff * 2 ** max(0, delivery.attempts - 1))
        heapq.heappush(self._retry, (now + delay, seq, delivery))
        return self._pump(now)

    def reload(self, now: float) -> list[Action]:
        """Rows were deleted under this tenant (an operator's purge): forget what is in
        memory and read the queue again from the store. Acks of webhooks already sent
        still count."""
        self._reset()
        return self._pump(now)

    def tick(self, now: float) -> list[Action]:
        """Time passed: send nacked webhooks whose backoff is over."""
        return self._pump(now)

    def expired(self, seqs: Iterable[int], now: float) -> list[Action]:
        """The store expired these rows: stop delivering them."""
        for seq in seqs:
            delivery = self._inflight.pop(seq, None)
            if delivery is not None:
                self._inflight_bytes -= len(delivery.body)
            self._discard(seq)
        return self._pump(now)

    # -- internals -----------------------------------------------------------

    def _append_ready(self, delivery: Delivery) -> None:
        self._ready.append(delivery)
        self._ready_bytes += len(delivery.body)
        self._loaded_upto = delivery.seq

    def _reset(self) -> None:
        self._ready.clear()
        self._ready_bytes = 0
        self._inflight.clear()
        self._inflight_bytes = 0
        self._retry.clear()
        self._loaded_upto = 0
        self._caught_up = False
        self._fetching = False
        self._missed = False
        self._generation += 1

    def _discard(self, seq: int) -> bool:
        """Drop ``seq`` from the ready queue or the retry heap; True if it was there."""
        for delivery in self._ready:
            if delivery.seq == seq:
                self._ready.remove(delivery)
                self._ready_bytes -= len(delivery.body)
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
        sent = self._sent.setdefault(connection, {})
        while len(self._inflight) < self.window:
            retry = bool(self._retry) and self._retry[0][0] <= now
            if retry:
                delivery = self._retry[0][2]
            elif self._ready:
                delivery = self._ready[0]
            else:
                break
            # No more than window_bytes in flight, unless this webhook goes alone.
            if self._inflight and self._inflight_bytes + len(delivery.body) > self.window_bytes:
                break
            if retry:
                heapq.heappop(self._retry)
            else:
                self._ready.pop(0)
                self._ready_bytes -= len(delivery.body)
            delivery.attempts += 1
            self._inflight[delivery.seq] = delivery
            self._inflight_bytes += len(delivery.body)
            sent[delivery.id] = delivery.seq
            actions.append(Send(connection, _frame(delivery), delivery.seq))
        excess = len(sent) - SENT_MEMORY * self.window
        if excess > 0:
            # The oldest ids go first, but never one in flight: its ack must count,
            # or it would hold a place in the window until the bridge reconnects.
            for old in [i for i, seq in sent.items() if seq not in self._inflight][:excess]:
                del sent[old]
        if not self._ready and not self._caught_up and not self._fetching:
            self._fetching = True
            self._missed = False
            actions.append(
                Fetch(self._loaded_upto, 2 * self.window, self._generation, self.window_bytes)
            )
        return actions


def _frame(delivery: Delivery) -> protocol.Webhook:
    return protocol.Webhook(
        id=delivery.id,
        tenant=delivery.tenant,
        body=delivery.body.decode("utf-8"),
        signature=delivery.signature,
        received_at=delivery.received_at,
        attempt=delivery.attempts,
        replay=delivery.replay_of is not None,
    )
