"""What a run counted: requests, answers, latencies and delivery markers.

Every process keeps a :class:`Tally`; worker processes send theirs to the
master as deltas (:meth:`Tally.take` and :meth:`Tally.to_wire`), which the
master merges, so accepted and delivered markers are compared across all
workers and a delivery that lands on another worker than its sender still
counts once. Latencies go into millisecond histograms: exact enough for a
one-second budget, small enough to ship every second. What happened when,
and on which node, goes into :class:`Buckets`: the per-second series the
report charts (webhooks posted apart from deliveries to bridges) and the
counts per target.

The bot's side of a run is counted here alone: deliveries and their
end-to-end times, the simulated bridges' connections (opened, failed or
dropped, churned, bad frames) and their calls to the simulated Messaging
API. Locust's own statistics hold the webhooks LINE's platform posts and
nothing else, so every table and chart of Locust's is about webhooks.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

#: The file in the report directory where the master leaves the merged tally for the command.
TALLY_FILE = "tally.json"

#: Series of :attr:`Tally.timeline`, counted by the Unix second they happened in.
POSTED = "posted"  # webhook requests sent (by the second they were sent)
FAILED = "failed"  # of those, the ones not answered 200
DELIVERED = "delivered"  # first deliveries a bridge received (attempt 1)
REDELIVERED = "redelivered"  # deliveries the relay sent again (attempt > 1)
SERIES = (POSTED, FAILED, DELIVERED, REDELIVERED)
#: Counts of :attr:`Tally.by_target`, by a target's index in the run's target lists.
ACCEPTED = "accepted"
#: Kinds of :attr:`Tally.bridge_events`.
CONNECT = "connect"  # a bridge connection was opened (the upgrade succeeded)
CHURN = "churn"  # a bridge dropped its connection on purpose (``--churn``), to reconnect
BAD_FRAME = "bad frame"  # a frame that is not the protocol's, or a hello naming another tenant
BRIDGE_EVENTS = (CONNECT, CHURN, BAD_FRAME)


@dataclass(slots=True)
class Histogram:
    """Counts of samples by whole milliseconds, rounded up (1.2 ms counts as 2)."""

    counts: Counter[int] = field(default_factory=Counter)

    def add(self, ms: float) -> None:
        """Record one sample of ``ms`` milliseconds (negative clock skew counts as 0)."""
        self.counts[max(0, math.ceil(ms))] += 1

    def merge(self, other: Histogram) -> None:
        """Add ``other``'s samples to this one."""
        self.counts.update(other.counts)

    @property
    def total(self) -> int:
        """The number of samples."""
        return sum(self.counts.values())

    def percentile(self, q: float) -> int | None:
        """The nearest-rank ``q``-th percentile (0 < q <= 100) in ms, None without samples."""
        total = self.total
        if total == 0:
            return None
        rank = max(1, math.ceil(q / 100 * total))
        seen = 0
        for ms in sorted(self.counts):
            seen += self.counts[ms]
            if seen >= rank:
                return ms
        return max(self.counts)

    def count_over(self, limit_ms: float) -> int:
        """How many samples took longer than ``limit_ms``."""
        return sum(c for ms, c in self.counts.items() if ms > limit_ms)

    def to_wire(self) -> dict[str, int]:
        """A JSON-able form (keys are strings in JSON)."""
        return {str(ms): c for ms, c in self.counts.items()}

    @classmethod
    def from_wire(cls, data: dict[str, int]) -> Histogram:
        """The inverse of :meth:`to_wire`."""
        return cls(Counter({int(ms): int(c) for ms, c in data.items()}))


@dataclass(slots=True)
class Buckets:
    """Counts by name and by an integer key: a Unix second, or a target's index."""

    counts: dict[str, Counter[int]] = field(default_factory=dict)

    def add(self, name: str, key: int, n: int = 1) -> None:
        """Count ``n`` more under ``name`` and ``key``."""
        self.counts.setdefault(name, Counter())[key] += n

    def get(self, name: str, key: int) -> int:
        """The count under ``name`` and ``key`` (0 when none)."""
        return self.counts.get(name, Counter())[key]

    def total(self, name: str) -> int:
        """Everything counted under ``name``."""
        return sum(self.counts.get(name, Counter()).values())

    def keys(self) -> list[int]:
        """Every key counted under any name, in order."""
        return sorted({key for counter in self.counts.values() for key in counter})

    def merge(self, other: Buckets) -> None:
        """Add ``other``'s counts to these."""
        for name, counter in other.counts.items():
            self.counts.setdefault(name, Counter()).update(counter)

    def to_wire(self) -> dict[str, dict[str, int]]:
        """A JSON-able form (keys are strings in JSON)."""
        return {name: {str(k): n for k, n in c.items()} for name, c in self.counts.items()}

    @classmethod
    def from_wire(cls, data: dict[str, dict[str, int]]) -> Buckets:
        """The inverse of :meth:`to_wire`."""
        return cls(
            {
                str(name): Counter({int(k): int(n) for k, n in counter.items()})
                for name, counter in data.items()
            }
        )


@dataclass(slots=True)
class Tally:
    """One process's (or the merged) counts of a run.

    Markers are matched as they come: an accepted marker waits in
    ``waiting`` until a delivery of it shows up, a delivery whose acceptance
    is not known yet (the bridge can be faster than the HTTP answer, or on
    another worker) waits in ``unmatched``. Matched pairs leave only a count
    behind, so a long soak run keeps only what is in flight in memory.
    """

    requests: int = 0
    errors: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    ack: Histogram = field(default_factory=Histogram)
    e2e: Histogram = field(default_factory=Histogram)
    accepted: int = 0
    matched: int = 0
    waiting: set[str] = field(default_factory=set)
    unmatched: set[str] = field(default_factory=set)
    deliveries: int = 0
    bad_deliveries: int = 0
    #: Of :attr:`deliveries`, those the relay marked ``attempt > 1``.
    redeliveries: int = 0
    #: :data:`BRIDGE_EVENTS` by kind.
    bridge_events: Counter[str] = field(default_factory=Counter)
    #: Bridge connections that failed to open or broke, by reason (the exception's type).
    connection_failures: Counter[str] = field(default_factory=Counter)
    #: Simulated bridges' Messaging API calls: their times by call name (``reply``, ...).
    gateway: dict[str, Histogram] = field(default_factory=dict)
    #: Of those, the ones that failed (no answer, or not 2xx), by call name.
    gateway_failures: Counter[str] = field(default_factory=Counter)
    #: :data:`SERIES` by Unix second.
    timeline: Buckets = field(default_factory=Buckets)
    #: Webhooks posted and accepted by the target they went to, deliveries by
    #: the bridge target they came from (indexes into the run's target lists).
    by_target: Buckets = field(default_factory=Buckets)

    def answered(
        self, status: int, ms: float, marker: str, *, target: int = 0, sent_at: float | None = None
    ) -> None:
        """Record an HTTP answer: a 200 accepts ``marker``, anything else is an error.

        ``target`` is the index of the target the request went to; ``sent_at``
        the Unix time it was sent, for the timeline (None: not charted).
        """
        self.requests += 1
        self.statuses[str(status)] += 1
        self.ack.add(ms)
        self._posted(target, sent_at, ok=status == 200)
        if status == 200:
            self.accepted += 1
            self._accept(marker)
        else:
            self.errors += 1

    def failed(
        self, reason: str, ms: float, *, target: int = 0, sent_at: float | None = None
    ) -> None:
        """Record a request that got no HTTP answer at all (connection error, timeout)."""
        self.requests += 1
        self.errors += 1
        self.statuses[reason] += 1
        self.ack.add(ms)
        self._posted(target, sent_at, ok=False)

    def _posted(self, target: int, sent_at: float | None, *, ok: bool) -> None:
        self.by_target.add(POSTED, target)
        if ok:
            self.by_target.add(ACCEPTED, target)
        if sent_at is not None:
            self.timeline.add(POSTED, int(sent_at))
            if not ok:
                self.timeline.add(FAILED, int(sent_at))

    def delivered_one(
        self,
        marker: str | None,
        e2e_ms: float | None,
        *,
        redelivery: bool = False,
        target: int = 0,
        at: float | None = None,
    ) -> None:
        """Record a delivery a bridge received; ``marker`` None means the body was not ours.

        The end-to-end time counts for the first delivery of a marker this
        tally sees; a redelivery of an already matched marker is kept apart
        in ``unmatched`` (it never counts as a loss). ``redelivery`` says the
        relay marked it ``attempt > 1``, ``target`` is the index of the bridge
        target it came through, ``at`` the Unix time it arrived (None: not
        charted).
        """
        self.deliveries += 1
        if redelivery:
            self.redeliveries += 1
        self.by_target.add(DELIVERED, target)
        if at is not None:
            self.timeline.add(REDELIVERED if redelivery else DELIVERED, int(at))
        if marker is None:
            self.bad_deliveries += 1
            return
        if e2e_ms is not None and marker not in self.unmatched:
            self.e2e.add(e2e_ms)
        self._deliver(marker)

    def bridge_event(self, kind: str) -> None:
        """Record one of :data:`BRIDGE_EVENTS` on a simulated bridge's connection."""
        self.bridge_events[kind] += 1

    def connection_failed(self, reason: str) -> None:
        """Record a bridge connection that could not open or broke, for ``reason``."""
        self.connection_failures[reason] += 1

    def gateway_call(self, name: str, ms: float, *, ok: bool) -> None:
        """Record one Messaging API call a simulated bridge made, its time and whether it worked."""
        self.gateway.setdefault(name, Histogram()).add(ms)
        if not ok:
            self.gateway_failures[name] += 1

    @property
    def counted(self) -> bool:
        """Whether anything at all was counted (a worker sends no empty deltas)."""
        return bool(
            self.requests
            or self.deliveries
            or self.bridge_events
            or self.connection_failures
            or self.gateway
        )

    def _accept(self, marker: str) -> None:
        if marker in self.unmatched:
            self.unmatched.discard(marker)
            self.matched += 1
        else:
            self.waiting.add(marker)

    def _deliver(self, marker: str) -> None:
        if marker in self.waiting:
            self.waiting.discard(marker)
            self.matched += 1
        else:
            self.unmatched.add(marker)

    def merge(self, other: Tally) -> None:
        """Add ``other`` (another process's delta) into this tally, matching markers across both."""
        self.requests += other.requests
        self.errors += other.errors
        self.statuses.update(other.statuses)
        self.ack.merge(other.ack)
        self.e2e.merge(other.e2e)
        self.accepted += other.accepted
        self.matched += other.matched
        self.deliveries += other.deliveries
        self.bad_deliveries += other.bad_deliveries
        self.redeliveries += other.redeliveries
        self.bridge_events.update(other.bridge_events)
        self.connection_failures.update(other.connection_failures)
        for name, times in other.gateway.items():
            self.gateway.setdefault(name, Histogram()).merge(times)
        self.gateway_failures.update(other.gateway_failures)
        self.timeline.merge(other.timeline)
        self.by_target.merge(other.by_target)
        for marker in other.waiting:
            self._accept(marker)
        for marker in other.unmatched:
            self._deliver(marker)

    def take(self) -> Tally:
        """Return everything counted so far and start again from zero (a worker's delta)."""
        delta = dataclasses.replace(self)
        # Every field back to its default, so no count a new field adds can be forgotten here.
        fresh = Tally()
        for f in dataclasses.fields(self):
            setattr(self, f.name, getattr(fresh, f.name))
        return delta

    @property
    def pending(self) -> int:
        """Accepted webhooks no bridge has reported yet."""
        return len(self.waiting)

    def to_wire(self) -> dict[str, Any]:
        """A JSON-able form, for Locust's worker -> master messages and the run file."""
        return {
            "requests": self.requests,
            "errors": self.errors,
            "statuses": dict(self.statuses),
            "ack": self.ack.to_wire(),
            "e2e": self.e2e.to_wire(),
            "accepted": self.accepted,
            "matched": self.matched,
            "waiting": sorted(self.waiting),
            "unmatched": sorted(self.unmatched),
            "deliveries": self.deliveries,
            "bad_deliveries": self.bad_deliveries,
            "redeliveries": self.redeliveries,
            "bridge_events": dict(self.bridge_events),
            "connection_failures": dict(self.connection_failures),
            "gateway": {name: times.to_wire() for name, times in self.gateway.items()},
            "gateway_failures": dict(self.gateway_failures),
            "timeline": self.timeline.to_wire(),
            "by_target": self.by_target.to_wire(),
        }

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> Tally:
        """The inverse of :meth:`to_wire`."""
        return cls(
            requests=int(data["requests"]),
            errors=int(data["errors"]),
            statuses=_counter(data["statuses"]),
            ack=Histogram.from_wire(data["ack"]),
            e2e=Histogram.from_wire(data["e2e"]),
            accepted=int(data["accepted"]),
            matched=int(data["matched"]),
            waiting=set(data["waiting"]),
            unmatched=set(data["unmatched"]),
            deliveries=int(data["deliveries"]),
            bad_deliveries=int(data["bad_deliveries"]),
            redeliveries=int(data["redeliveries"]),
            bridge_events=_counter(data["bridge_events"]),
            connection_failures=_counter(data["connection_failures"]),
            gateway={str(k): Histogram.from_wire(v) for k, v in data["gateway"].items()},
            gateway_failures=_counter(data["gateway_failures"]),
            timeline=Buckets.from_wire(data["timeline"]),
            by_target=Buckets.from_wire(data["by_target"]),
        )


def _counter(data: dict[str, int]) -> Counter[str]:
    return Counter({str(k): int(v) for k, v in data.items()})
