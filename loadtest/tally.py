"""What a run counted: requests, answers, latencies and delivery markers.

Every process keeps a :class:`Tally`; worker processes send theirs to the
master as deltas (:meth:`Tally.take` and :meth:`Tally.to_wire`), which the
master merges, so accepted and delivered markers are compared across all
workers and a delivery that lands on another worker than its sender still
counts once. Latencies go into millisecond histograms: exact enough for a
one-second budget, small enough to ship every second.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

#: The file in the report directory where the master leaves the merged tally for the command.
TALLY_FILE = "tally.json"


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

    def answered(self, status: int, ms: float, marker: str) -> None:
        """Record an HTTP answer: a 200 accepts ``marker``, anything else is an error."""
        self.requests += 1
        self.statuses[str(status)] += 1
        self.ack.add(ms)
        if status == 200:
            self.accepted += 1
            self._accept(marker)
        else:
            self.errors += 1

    def failed(self, reason: str, ms: float) -> None:
        """Record a request that got no HTTP answer at all (connection error, timeout)."""
        self.requests += 1
        self.errors += 1
        self.statuses[reason] += 1
        self.ack.add(ms)

    def delivered_one(self, marker: str | None, e2e_ms: float | None) -> None:
        """Record a delivery a bridge received; ``marker`` None means the body was not ours.

        The end-to-end time counts for the first delivery of a marker this
        tally sees; a redelivery of an already matched marker is kept apart
        in ``unmatched`` (it never counts as a loss).
        """
        self.deliveries += 1
        if marker is None:
            self.bad_deliveries += 1
            return
        if e2e_ms is not None and marker not in self.unmatched:
            self.e2e.add(e2e_ms)
        self._deliver(marker)

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
        for marker in other.waiting:
            self._accept(marker)
        for marker in other.unmatched:
            self._deliver(marker)

    def take(self) -> Tally:
        """Return everything counted so far and start again from zero (a worker's delta)."""
        delta = Tally(
            self.requests,
            self.errors,
            self.statuses,
            self.ack,
            self.e2e,
            self.accepted,
            self.matched,
            self.waiting,
            self.unmatched,
            self.deliveries,
            self.bad_deliveries,
        )
        self.requests = self.errors = self.accepted = self.matched = 0
        self.deliveries = self.bad_deliveries = 0
        self.statuses = Counter()
        self.ack = Histogram()
        self.e2e = Histogram()
        self.waiting = set()
        self.unmatched = set()
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
        }

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> Tally:
        """The inverse of :meth:`to_wire`."""
        return cls(
            requests=int(data["requests"]),
            errors=int(data["errors"]),
            statuses=Counter({str(k): int(v) for k, v in data["statuses"].items()}),
            ack=Histogram.from_wire(data["ack"]),
            e2e=Histogram.from_wire(data["e2e"]),
            accepted=int(data["accepted"]),
            matched=int(data["matched"]),
            waiting=set(data["waiting"]),
            unmatched=set(data["unmatched"]),
            deliveries=int(data["deliveries"]),
            bad_deliveries=int(data["bad_deliveries"]),
        )
