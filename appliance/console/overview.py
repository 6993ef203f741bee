"""What the console shows of the running relay: tenants, their bridges, the budget.

Read from the relay's own state (tenants, the store's queue depths, the hub's
connections, the Prometheus metrics), never from a webhook's body. The
figures are drawn once a second at most, however many consoles poll
(:class:`Overview`), so an open console costs the hot path a bounded amount
(README, "Performance": the console's cost).

Acks per second are measured here, on the reading side: each read notes the
active connection's ack count, and the rate is the change over the last
:data:`RATE_WINDOW` seconds of reads. The hot path only bumps a counter.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client.registry import Collector

from appliance.errors import StoreError
from appliance.metrics import OUTCOMES
from appliance.webhooks import WebhookRecord, WebhookState

if TYPE_CHECKING:
    from appliance.ingress import Relay

log = logging.getLogger(__name__)

#: Seconds a drawn snapshot is reused for by every console that polls.
SNAPSHOT_SECONDS = 1.0
#: Acks per second are the change over about this many seconds of reads.
RATE_WINDOW = 10.0
#: A rate needs reads at least this far apart.
RATE_MIN_SPAN = 1.0
#: Outcomes answered 503 (PROTOCOL.md §1), counted together at a glance.
UNAVAILABLE = ("overloaded", "queue_full", "store_error")


@dataclass(frozen=True, slots=True)
class BridgeView:
    """A tenant's active bridge connection, as the console shows it."""

    connected_at: float  # Unix seconds
    protocol: int
    peer: str
    in_flight: int
    window: int
    #: Seconds since the latest ack on this connection; None before the first.
    last_ack_age: float | None
    #: None until two reads far enough apart have been made.
    acks_per_second: float | None
    acks: int
    redeliveries: int
    #: Older connections of the tenant standing by (PROTOCOL.md §2: the newest is active).
    standby: int


@dataclass(frozen=True, slots=True)
class TenantView:
    """One tenant's row: its queue and its bridge."""

    id: str
    depth: int
    #: Age in seconds of the oldest unacked webhook; None when none is queued or the
    #: store could not say (:attr:`Snapshot.ages_known`).
    oldest_age: float | None
    bridge: BridgeView | None
    #: Removed from the tenants file, its queue not yet purged.
    removed: bool = False


@dataclass(frozen=True, slots=True)
class Bucket:
    """One bar of the answer-time histogram: answers in ``(low, high]`` seconds."""

    low: float
    high: float  # inf for the last bar
    count: int
    over_budget: bool

    @property
    def open_ended(self) -> bool:
        """The last bar: everything slower than the largest bound."""
        return self.high == math.inf


@dataclass(frozen=True, slots=True)
class Glance:
    """The budget at a glance: the answer-time histogram and what went over."""

    buckets: tuple[Bucket, ...]
    answers: int
    over_budget: int
    budget_ms: int
    outcomes: tuple[tuple[str, int], ...]  # nonzero outcomes, in OUTCOMES order
    unavailable: int  # answered 503

    @property
    def largest(self) -> int:
        """The tallest bar, for scaling (at least 1)."""
        return max([b.count for b in self.buckets] + [1])


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything the overview draws, taken at one moment."""

    taken_at: float  # Unix seconds
    tenants: tuple[TenantView, ...]
    glance: Glance
    ages_known: bool

    @property
    def bridges(self) -> int:
        """Tenants with a connected bridge."""
        return sum(1 for t in self.tenants if t.bridge is not None)


@dataclass(frozen=True, slots=True)
class _Read:
    at: float
    records: list[WebhookRecord]


class AckRates:
    """Acks per second of each tenant's active bridge, from the counts reads see.

    Samples are kept per tenant, at least :data:`RATE_MIN_SPAN` apart, for
    about :data:`RATE_WINDOW` seconds; a new connection starts afresh.
    """

    def __init__(self) -> None:
        self._samples: dict[str, tuple[object, deque[tuple[float, int]]]] = {}

    def rate(self, tenant: str, connection: object, acks: int, now: float) -> float | None:
        """The rate of ``tenant``'s bridge ``connection`` (any key naming it), whose ack
        count is ``acks`` at ``now`` (monotonic seconds); None until known."""
        entry = self._samples.get(tenant)
        if entry is None or entry[0] != connection or now - entry[1][-1][0] > 3 * RATE_WINDOW:
            # A new connection, or nobody looked for a long while: start afresh
            # rather than average over minutes nobody saw.
            self._samples[tenant] = (connection, deque([(now, acks)]))
            return None
        samples = entry[1]
        if now - samples[-1][0] >= RATE_MIN_SPAN:
            samples.append((now, acks))
        while len(samples) > 2 and now - samples[1][0] >= RATE_WINDOW:
            samples.popleft()
        start, counted = samples[0]
        if now - start < RATE_MIN_SPAN:
            return None
        return max(0, acks - counted) / (now - start)

    def keep_only(self, tenants: Iterable[str]) -> None:
        """Forget tenants no longer connected."""
        live = set(tenants)
        for tenant in [t for t in self._samples if t not in live]:
            del self._samples[tenant]


def glance_of(relay: Relay) -> Glance:
    """The answer-time histogram and the over-budget count, from the relay's metrics."""
    metrics = relay.metrics
    cumulative: list[tuple[float, int]] = []
    answers = 0
    for family in metrics.ack_seconds.collect():
        for sample in family.samples:
            if sample.name.endswith("_bucket"):
                cumulative.append((float(sample.labels["le"]), int(sample.value)))
            elif sample.name.endswith("_count"):
                answers = int(sample.value)
    budget = relay.config.budget_ms / 1000
    return Glance(
        buckets=buckets_of(cumulative, budget),
        answers=answers,
        over_budget=int(_counter(metrics.over_budget)),
        budget_ms=relay.config.budget_ms,
        outcomes=tuple(
            (name, int(_counter(metrics.outcome[name])))
            for name in OUTCOMES
            if _counter(metrics.outcome[name])
        ),
        unavailable=sum(int(_counter(metrics.outcome[name])) for name in UNAVAILABLE),
    )


def buckets_of(cumulative: Iterable[tuple[float, int]], budget: float) -> tuple[Bucket, ...]:
    """Bars from Prometheus's cumulative ``(le, count)`` buckets, lowest first; a bar is
    over budget when its answers may have been slower than ``budget`` seconds."""
    bars = []
    low, below = 0.0, 0
    for high, count in sorted(cumulative):
        bars.append(Bucket(low, high, count - below, high > budget))
        low, below = high, count
    return tuple(bars)


def _counter(counter: Collector) -> float:
    """A counter's value through prometheus-client's public ``collect()``."""
    for family in counter.collect():
        for sample in family.samples:
            if sample.name.endswith("_total"):
                return float(sample.value)
    return 0.0


def tenant_views(
    relay: Relay, rates: AckRates, now: float, oldest: Mapping[str, int] | None, now_ms: float
) -> tuple[TenantView, ...]:
    """Every known tenant with its queue and bridge, by id; ``oldest`` is the store's
    oldest unacked receipt time per tenant (None: unknown)."""
    directory = relay.tenants.by_id
    depths = relay.store.depths()
    views = []
    for tenant in sorted(directory.keys() | depths.keys()):
        received = None if oldest is None else oldest.get(tenant)
        age = None if received is None else max(0.0, (now_ms - received) / 1000)
        views.append(
            TenantView(
                tenant,
                depths.get(tenant, 0),
                age,
                _bridge_view(relay, tenant, rates, now),
                removed=tenant not in directory,
            )
        )
    rates.keep_only(v.id for v in views if v.bridge is not None)
    return tuple(views)


def _bridge_view(relay: Relay, tenant: str, rates: AckRates, now: float) -> BridgeView | None:
    # Imported here: the hub imports the store and the metrics, which this module's
    # importers (the CLI's) need not load.
    from appliance.hub import BridgeConnection  # noqa: PLC0415

    state = relay.hub.delivery_of(tenant)
    active = None if state is None else state.active
    if state is None or not isinstance(active, BridgeConnection):
        return None
    key = (id(active), active.connected_at)
    return BridgeView(
        connected_at=active.connected_at,
        protocol=active.protocol,
        peer=active.peer,
        in_flight=state.in_flight,
        window=state.window,
        last_ack_age=None if active.last_ack is None else max(0.0, now - active.last_ack),
        acks_per_second=rates.rate(tenant, key, active.acks, now),
        acks=active.acks,
        redeliveries=active.redeliveries,
        standby=len(state.connections) - 1,
    )


class Overview:
    """The console's view of the relay, drawn at most once per :data:`SNAPSHOT_SECONDS`:
    the snapshot, and each tenant's recent webhooks (a store read each)."""

    def __init__(self, relay: Relay, clock: Callable[[], float] = time.monotonic) -> None:
        self.relay = relay
        self.rates = AckRates()
        self._clock = clock
        self._snapshot: Snapshot | None = None
        self._drawn_at = 0.0
        self._recent: dict[tuple[str, WebhookState | None, int], _Read] = {}

    async def recent(
        self, tenant: str, state: WebhookState | None, limit: int
    ) -> list[WebhookRecord]:
        """``tenant``'s latest webhooks (newest first), read again at most once a second."""
        now = self._clock()
        key = (tenant, state, limit)
        read = self._recent.get(key)
        if read is None or now - read.at >= SNAPSHOT_SECONDS:
            # Expired reads go as new ones come: only what is being watched is kept.
            self._recent = {k: r for k, r in self._recent.items() if now - r.at < SNAPSHOT_SECONDS}
            records = await self.relay.webhooks.list(tenant=tenant, state=state, limit=limit)
            read = self._recent[key] = _Read(now, records)
        return read.records

    def snapshot(self) -> Snapshot:
        """The current snapshot, drawn again if the last is older than a second."""
        now = self._clock()
        if self._snapshot is None or now - self._drawn_at >= SNAPSHOT_SECONDS:
            self._snapshot = self._draw(now)
            self._drawn_at = now
        return self._snapshot

    def tenant(self, tenant: str) -> TenantView | None:
        """``tenant``'s row, None if the relay knows no such tenant. A tenant added
        since the snapshot was drawn has the snapshot drawn again at once."""
        for view in self.snapshot().tenants:
            if view.id == tenant:
                return view
        if self.relay.tenants.get(tenant) is None and not self.relay.store.depth(tenant):
            return None
        now = self._clock()
        self._snapshot, self._drawn_at = self._draw(now), now
        return next((v for v in self._snapshot.tenants if v.id == tenant), None)

    def _draw(self, now: float) -> Snapshot:
        relay = self.relay
        wall = time.time()
        try:
            oldest: dict[str, int] | None = relay.store.oldest()
        except StoreError as exc:
            log.warning("console: queue ages unknown", extra={"why": str(exc)})
            oldest = None
        return Snapshot(
            taken_at=wall,
            tenants=tenant_views(relay, self.rates, now, oldest, wall * 1000),
            glance=glance_of(relay),
            ages_known=oldest is not None,
        )
