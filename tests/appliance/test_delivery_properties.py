"""The delivery state machine (:class:`appliance.delivery.TenantDelivery`) under any
sequence of events, checked against a model of the store and the bridges.

The machine drives one tenant with random events: bridges connect (fresh
connection ids) and disconnect (the active one or a standby), webhooks commit,
Fetch actions are answered late, out of order, from the store as it was when
the Fetch was issued or as it is now, or not at all before a take-over makes
them stale; acks and nacks come from the active connection, a standby or a
stranger, with ids sent on that connection, ids of other rows or made-up ids;
time passes; rows expire. The ids remembered per connection (SENT_MEMORY) are
scaled down with the window so that short runs reach that bound. It plays the
hub's part: every Send marks the row
sent in the model store (``mark_sent``) and every StoreAck acks it.

Properties checked after every event, and at quiescence in :meth:`teardown`:

- Sends go to the active connection only, carry the row as stored, and the
  n-th send of a row says ``attempt: n`` (so after a take-over every unacked
  row comes again with its attempt raised).
- At most ``window`` webhooks in flight, and at most ``window_bytes`` of their
  bodies unless a single webhook is in flight (one always goes).
- Within one active period, first sends go in seq order; the only sends out of
  order are retries of webhooks nacked in that period, not before their backoff.
- A StoreAck only for an id sent on the connection that acks it, and only for
  that id's row; an ack or nack of a webhook in flight on the active connection
  always counts.
- At most one Fetch outstanding per generation; a stale one changes nothing; an
  empty page read after the last commit ends the fetching (no Fetch loop).
- Nothing is lost: at quiescence (every fetch answered, retries due, everything
  in flight acked) every row in the model store has been acked.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from appliance import delivery
from appliance.delivery import MAX_BACKOFF, Action, Fetch, Send, StoreAck, TenantDelivery
from appliance.store import Delivery
from tests.support.properties import examples

TENANT = "t"
SENT_MEMORY = delivery.SENT_MEMORY
SIZES = st.sampled_from([1, 10, 40, 100, 150, 400])


@dataclass
class Row:
    """A row of the model store."""

    seq: int
    id: str
    body: bytes
    attempts: int = 0  # what mark_sent counted
    state: str = "queued"  # queued, acked or expired

    def delivery(self) -> Delivery:
        """The row as the store hands it out: a fresh object every time."""
        return Delivery(self.seq, self.id, TENANT, self.body, "sig", 1000 + self.seq, self.attempts)


@dataclass
class Outstanding:
    """A Fetch not yet answered, and the page the store would have given when it was issued."""

    fetch: Fetch
    page_then: list[Delivery]
    commits_since: int = 0


@dataclass
class Period:
    """One stretch of one connection being active (one generation)."""

    connection: str
    highest_first_send: int = 0
    inflight: dict[int, int] = field(default_factory=dict)  # seq -> body size
    retry_due: dict[int, float] = field(default_factory=dict)  # nacked seq -> due time


class DeliveryMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.state = TenantDelivery(TENANT, 1)
        self.window = 1
        self.window_bytes = 1
        self.backoff = 1.0
        self.now = 1000.0
        self.rows: dict[int, Row] = {}
        self.by_id: dict[str, int] = {}
        self.next_seq = 1
        self.connections: list[str] = []  # oldest first, as the machine keeps them
        self.gone: list[str] = []
        self.connection_count = 0
        self.generation = 0
        self.period: Period | None = None
        # Per connection: ids sent on it that it has not acked (what its acks may name).
        self.open_ids: dict[str, dict[str, int]] = {}
        self.fetches: list[Outstanding] = []
        self.sends_of: dict[int, int] = {}

    @initialize(
        window=st.integers(1, 4),
        window_bytes=st.sampled_from([1, 120, 300, 1000, 10_000]),
        backoff=st.sampled_from([0.5, 1.0, 3.0]),
        memory=st.sampled_from([1, 2, delivery.SENT_MEMORY]),
    )
    def setup(self, window: int, window_bytes: int, backoff: float, memory: int) -> None:
        self.window, self.window_bytes, self.backoff = window, window_bytes, backoff
        self.state = TenantDelivery(TENANT, window, backoff, window_bytes)
        # The ids remembered per connection (SENT_MEMORY windows) are scaled down too,
        # so that runs of a few dozen events reach that bound.
        delivery.SENT_MEMORY = memory

    # -- the model store ---------------------------------------------------------

    def page(self, fetch: Fetch) -> list[Delivery]:
        """What SQLiteStore.pending answers for ``fetch`` from the model store now."""
        rows = [
            r for seq, r in sorted(self.rows.items()) if r.state == "queued" and seq > fetch.after
        ]
        page: list[Delivery] = []
        total = 0
        for row in rows[: fetch.limit]:
            # The page ends with the row that takes it to max_bytes or past.
            if fetch.max_bytes is not None and total >= fetch.max_bytes:
                break
            total += len(row.body)
            page.append(row.delivery())
        return page

    # -- carrying out and checking actions ----------------------------------------

    def run(self, actions: list[Action] | None) -> None:
        for action in actions or []:
            if isinstance(action, Send):
                self.sent(action)
            elif isinstance(action, Fetch):
                assert action.generation == self.generation
                assert self.period is not None, "a Fetch with no connection to fill"
                assert not any(o.fetch.generation == action.generation for o in self.fetches), (
                    "two Fetches outstanding for one generation"
                )
                self.fetches.append(Outstanding(action, self.page(action)))
            else:
                raise AssertionError(f"{action} outside an ack")

    def sent(self, send: Send) -> None:
        period = self.period
        assert period is not None
        assert send.connection == period.connection == self.state.active
        row = self.rows[send.seq]
        frame = send.frame
        assert (frame.id, frame.tenant, frame.body.encode(), frame.signature) == (
            row.id,
            TENANT,
            row.body,
            "sig",
        )
        assert frame.received_at == 1000 + row.seq
        # The n-th send of a row says attempt n: after a take-over, attempt is raised.
        self.sends_of[row.seq] = self.sends_of.get(row.seq, 0) + 1
        assert frame.attempt == self.sends_of[row.seq] == row.attempts + 1
        row.attempts += 1  # the hub's mark_sent
        # The window, in webhooks and in bytes (a single webhook always goes).
        flying = sum(period.inflight.values())
        assert len(period.inflight) < self.window, "window full"
        assert not period.inflight or flying + len(row.body) <= self.window_bytes, (
            f"{flying} + {len(row.body)} bytes in flight, window_bytes {self.window_bytes}"
        )
        assert row.seq not in period.inflight
        # Order: first sends in seq order; retries only of rows nacked here, once due.
        if row.seq in period.retry_due:
            assert self.now >= period.retry_due.pop(row.seq), "retry before its backoff"
        else:
            assert row.seq > period.highest_first_send, "sent out of order"
            period.highest_first_send = row.seq
        period.inflight[row.seq] = len(row.body)
        self.open_ids.setdefault(send.connection, {})[row.id] = row.seq

    def new_period(self) -> None:
        self.generation += 1
        self.period = Period(self.connections[-1]) if self.connections else None

    # -- events --------------------------------------------------------------------

    @rule()
    def connect(self) -> None:
        self.connection_count += 1
        connection = f"c{self.connection_count}"
        self.connections.append(connection)
        self.new_period()
        self.run(self.state.connect(connection, self.now))

    @precondition(lambda self: self.connections or self.gone)
    @rule(data=st.data())
    def disconnect(self, data: st.DataObject) -> None:
        connection = data.draw(st.sampled_from(self.connections + self.gone))
        was_active = bool(self.connections) and connection == self.connections[-1]
        if connection in self.connections:
            self.connections.remove(connection)
            self.gone.append(connection)
        self.open_ids.pop(connection, None)
        actions = self.state.disconnect(connection, self.now)
        if was_active:
            self.new_period()
            self.run(actions)
        else:
            assert actions == [], "a standby leaving changed something"

    @rule(batch=st.lists(st.tuples(SIZES, st.integers(1, 3)), min_size=1, max_size=4))
    def commit(self, batch: list[tuple[int, int]]) -> None:
        """A batch of webhooks commits; seqs skip numbers, as other tenants' rows take them."""
        for size, gap in batch:
            seq = self.next_seq
            self.next_seq += gap
            row = Row(seq, f"d-{seq:04x}", bytes([65 + seq % 26]) * size)
            self.rows[seq] = row
            self.by_id[row.id] = seq
            for outstanding in self.fetches:
                outstanding.commits_since += 1
            self.run(self.state.committed(row.delivery(), self.now))

    @precondition(lambda self: self.fetches)
    @rule(data=st.data())
    def load(self, data: st.DataObject) -> None:
        """Answer an outstanding Fetch, in any order, with the store as it was or as it is."""
        outstanding = self.fetches.pop(data.draw(st.integers(0, len(self.fetches) - 1)))
        fresh = data.draw(st.booleans(), label="from the store as it is now")
        self.answer(outstanding, fresh)

    def answer(self, outstanding: Outstanding, fresh: bool) -> None:
        rows = self.page(outstanding.fetch) if fresh else outstanding.page_then
        actions = self.state.loaded(rows, outstanding.fetch, self.now)
        if outstanding.fetch.generation != self.generation:
            assert actions == [], "a stale page changed something"
        elif not rows and not outstanding.commits_since:
            # An empty page read after the last commit proves the tenant caught up.
            assert not any(isinstance(a, Fetch) for a in actions), "fetching again for nothing"
        self.run(actions)

    def answerer(self, data: st.DataObject) -> tuple[str, str]:
        """Who answers (active, standby, gone, stranger) and which id (theirs or not)."""
        who = self.connections + self.gone + ["stranger"]
        connection = data.draw(st.sampled_from(who), label="from")
        ids = sorted(self.open_ids.get(connection, {}))
        others = [*sorted(self.by_id), "d-ffff", ""]
        delivery_id = data.draw(
            st.sampled_from(ids) if ids else st.sampled_from(others), label="id"
        )
        if ids and data.draw(st.booleans(), label="another id"):
            delivery_id = data.draw(st.sampled_from(others), label="id")
        return connection, delivery_id

    def in_flight_here(self, connection: str, delivery_id: str) -> bool:
        period = self.period
        seq = self.by_id.get(delivery_id)
        return period is not None and connection == period.connection and seq in period.inflight

    @rule(data=st.data())
    def ack(self, data: st.DataObject, answer: tuple[str, str] | None = None) -> None:
        connection, delivery_id = answer or self.answerer(data)
        expected_seq = self.open_ids.get(connection, {}).get(delivery_id)
        must_count = self.in_flight_here(connection, delivery_id) and expected_seq is not None
        actions = self.state.ack(connection, delivery_id, self.now)
        if actions is None:
            assert not must_count, "an ack for a webhook in flight on the active connection"
            self.open_ids.get(connection, {}).pop(delivery_id, None)  # forgotten by design
            return
        assert expected_seq is not None, "a StoreAck for an id not sent on that connection"
        assert actions[0] == StoreAck(expected_seq)
        assert not any(isinstance(a, StoreAck) for a in actions[1:])
        del self.open_ids[connection][delivery_id]
        row = self.rows[expected_seq]
        if row.state == "queued":
            row.state = "acked"
        if self.period is not None:
            self.period.inflight.pop(expected_seq, None)
            self.period.retry_due.pop(expected_seq, None)
        self.run(actions[1:])

    @rule(data=st.data())
    def nack(self, data: st.DataObject, answer: tuple[str, str] | None = None) -> None:
        connection, delivery_id = answer or self.answerer(data)
        known = delivery_id in self.open_ids.get(connection, {})
        must_count = self.in_flight_here(connection, delivery_id) and known
        actions = self.state.nack(connection, delivery_id, self.now)
        if actions is None:
            assert not must_count, "a nack for a webhook in flight on the active connection"
            self.open_ids.get(connection, {}).pop(delivery_id, None)
            return
        assert known, "a nack counted for an id not sent on that connection"
        assert not any(isinstance(a, StoreAck) for a in actions)
        if must_count:
            assert self.period is not None
            seq = self.by_id[delivery_id]
            del self.period.inflight[seq]
            delay = min(MAX_BACKOFF, self.backoff * 2 ** max(0, self.sends_of[seq] - 1))
            self.period.retry_due[seq] = self.now + delay
        else:
            assert actions == [], "a nack not in flight on the active connection changed something"
        self.run(actions)

    @precondition(lambda self: self.period is not None and self.period.inflight)
    @rule(data=st.data(), nack=st.booleans())
    def answer_in_flight(self, data: st.DataObject, nack: bool) -> None:
        """The active bridge acks or nacks one of its webhooks in flight (the common case,
        given a rule of its own so that long runs of it happen)."""
        assert self.period is not None
        seq = data.draw(st.sampled_from(sorted(self.period.inflight)))
        connection, delivery_id = self.period.connection, self.rows[seq].id
        if nack:
            self.nack(data, (connection, delivery_id))
        else:
            self.ack(data, (connection, delivery_id))

    @rule(seconds=st.sampled_from([0.0, 0.25, 0.5, 1.0, 2.0, 7.0, 61.0]))
    def tick(self, seconds: float) -> None:
        self.now += seconds
        self.run(self.state.tick(self.now))

    @precondition(lambda self: any(r.state == "queued" for r in self.rows.values()))
    @rule(data=st.data())
    def expire(self, data: st.DataObject) -> None:
        queued = [seq for seq, r in sorted(self.rows.items()) if r.state == "queued"]
        seqs = data.draw(st.lists(st.sampled_from(queued), min_size=1, unique=True))
        for seq in seqs:
            self.rows[seq].state = "expired"
            if self.period is not None:
                self.period.inflight.pop(seq, None)
                self.period.retry_due.pop(seq, None)
        self.run(self.state.expired(seqs, self.now))

    # -- invariants ------------------------------------------------------------------

    @invariant()
    def the_newest_connection_is_active(self) -> None:
        assert self.state.active == (self.connections[-1] if self.connections else None)

    @invariant()
    def in_flight_is_what_was_sent_and_not_answered(self) -> None:
        inflight = self.period.inflight if self.period is not None else {}
        assert self.state.in_flight == len(inflight)
        assert len(inflight) <= self.window

    def teardown(self) -> None:
        """Quiescence: answer every fetch, let every backoff pass, ack everything in flight
        from the active connection; then nothing may be left unacked in the store."""
        try:
            self.quiesce()
        finally:
            delivery.SENT_MEMORY = SENT_MEMORY

    def quiesce(self) -> None:
        if not self.connections:
            self.connect()
        for _ in range(4 * len(self.rows) + 10):
            busy = bool(self.fetches)
            for _ in range(len(self.fetches) + len(self.rows) + 10):
                if not self.fetches:
                    break
                self.answer(self.fetches.pop(0), fresh=True)
            assert not self.fetches, "Fetches never end"
            self.now += 2 * MAX_BACKOFF
            self.run(self.state.tick(self.now))
            assert self.period is not None
            active = self.period.connection
            for seq in sorted(self.period.inflight):
                busy = True
                actions = self.state.ack(active, self.rows[seq].id, self.now)
                assert actions is not None, "an ack for a webhook in flight was ignored"
                assert actions[0] == StoreAck(seq)
                if self.rows[seq].state == "queued":
                    self.rows[seq].state = "acked"
                del self.period.inflight[seq]
                self.open_ids[active].pop(self.rows[seq].id, None)
                self.run(actions[1:])
            if not busy:
                break
        lost = [seq for seq, r in sorted(self.rows.items()) if r.state == "queued"]
        assert not lost, f"never delivered: {lost}"


DeliveryMachine.TestCase.settings = examples(200, stateful_step_count=50)
test_delivery_state_machine = DeliveryMachine.TestCase
