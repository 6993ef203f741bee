"""What the console shows of the running relay: tenants, their bridges, the budget.

Read from the relay's own state (tenants, the store's queue depths, the hub's
connections, the Prometheus metrics), never from a webhook's body. The
figures are drawn once a second at most, however many consoles poll
(:class:`Overview`), so an open console costs the hot path a bounded amount
(README, "Performance": the console's cost).

A relay of several processes (``--workers``, several nodes on Redis) is drawn
whole whichever process answers: the bridges other processes serve come from
the board (:mod:`appliance.console.board`), the answers from every worker's
metrics (:meth:`~appliance.metrics.Metrics.combined`).

Acks per second are measured here, on the reading side: each read notes the
active connection's ack count, and the rate is the change over the last
:data:`RATE_WINDOW` seconds of reads. The hot path only bumps a counter.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from appliance.console.board import BoardError, BridgeFacts, merged
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

    #: The relay process serving it (:func:`appliance.console.board.process_name`).
    served_by: str
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
    #: The process that drew it.
    drawn_by: str = ""
    #: Several processes serve this relay: bridges are drawn from every one's posts.
    shared: bool = False
    #: False when other processes' bridges could not be read (Redis unreachable).
    bridges_known: bool = True

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


#: The families the glance reads (as exported, without ``_total``).
ACK_SECONDS = "linerelay_webhook_ack_seconds"
WEBHOOKS = "linerelay_webhooks"
OVER_BUDGET = "linerelay_webhooks_over_budget"


def glance_of(relay: Relay) -> Glance:
    """The answer-time histogram and the over-budget count, from the relay's metrics
    (every worker's, with ``--workers``)."""
    cumulative: list[tuple[float, int]] = []
    answers = over_budget = 0
    by_outcome: dict[str, int] = {}
    for family in relay.metrics.combined((ACK_SECONDS, WEBHOOKS, OVER_BUDGET)):
        for sample in family.samples:
            if sample.name == f"{ACK_SECONDS}_bucket":
                cumulative.append((float(sample.labels["le"]), int(sample.value)))
            elif sample.name == f"{ACK_SECONDS}_count":
                answers = int(sample.value)
            elif sample.name == f"{OVER_BUDGET}_total":
                over_budget = int(sample.value)
            elif sample.name == f"{WEBHOOKS}_total":
                by_outcome[sample.labels["outcome"]] = int(sample.value)
    budget = relay.config.budget_ms / 1000
    return Glance(
        buckets=buckets_of(cumulative, budget),
        answers=answers,
        over_budget=over_budget,
        budget_ms=relay.config.budget_ms,
        outcomes=tuple((name, by_outcome[name]) for name in OUTCOMES if by_outcome.get(name)),
        unavailable=sum(by_outcome.get(name, 0) for name in UNAVAILABLE),
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


def tenant_views(
    relay: Relay,
    bridges: Mapping[str, BridgeFacts],
    rates: AckRates,
    oldest: Mapping[str, int] | None,
    now: float,
) -> tuple[TenantView, ...]:
    """Every known tenant with its queue and bridge, by id. ``bridges``: the active
    bridge of each tenant that has one; ``oldest``: the store's oldest unacked receipt
    time per tenant (None: unknown); ``now``: Unix seconds."""
    directory = relay.tenants.by_id
    depths = relay.store.depths()
    views = []
    for tenant in sorted(directory.keys() | depths.keys()):
        received = None if oldest is None else oldest.get(tenant)
        age = None if received is None else max(0.0, now - received / 1000)
        facts = bridges.get(tenant)
        views.append(
            TenantView(
                tenant,
                depths.get(tenant, 0),
                age,
                None if facts is None else view_of(tenant, facts, rates, now),
                removed=tenant not in directory,
            )
        )
    rates.keep_only(v.id for v in views if v.bridge is not None)
    return tuple(views)


def view_of(tenant: str, facts: BridgeFacts, rates: AckRates, now: float) -> BridgeView:
    """``tenant``'s bridge as the console shows it, from the facts its process posted
    (or this process's own) and the ack counts seen before; ``now``: Unix seconds."""
    return BridgeView(
        served_by=facts.served_by,
        connected_at=facts.connected_at,
        protocol=facts.protocol,
        peer=facts.peer,
        in_flight=facts.in_flight,
        window=facts.window,
        last_ack_age=None if facts.last_ack_at is None else max(0.0, now - facts.last_ack_at),
        acks_per_second=rates.rate(
            tenant, (facts.served_by, facts.connected_at), facts.acks, facts.taken_at
        ),
        acks=facts.acks,
        redeliveries=facts.redeliveries,
        standby=facts.standby,
    )


def local_bridges(relay: Relay, name: str, now: float) -> dict[str, BridgeFacts]:
    """The active bridge of each tenant this process serves, as facts taken at ``now``
    (Unix seconds); ``name`` is this process's (:func:`~appliance.console.board.process_name`)."""
    # Imported here: the hub imports the store and the metrics, which this module's
    # importers (the CLI's) need not load.
    from appliance.hub import BridgeConnection  # noqa: PLC0415

    monotonic = time.monotonic()
    bridges = {}
    for tenant in {c.tenant for c in relay.hub.connections}:
        state = relay.hub.delivery_of(tenant)
        active = None if state is None else state.active
        if state is None or not isinstance(active, BridgeConnection):
            continue
        last_ack = None if active.last_ack is None else now - (monotonic - active.last_ack)
        bridges[tenant] = BridgeFacts(
            served_by=name,
            taken_at=now,
            connected_at=active.connected_at,
            protocol=active.protocol,
            peer=active.peer,
            in_flight=state.in_flight,
            window=state.window,
            last_ack_at=last_ack,
            acks=active.acks,
            redeliveries=active.redeliveries,
            standby=len(state.connections) - 1,
        )
    return bridges


class Overview:
    """The console's view of the relay, drawn at most once per :data:`SNAPSHOT_SECONDS`:
    the snapshot, and each tenant's recent webhooks (a store read each). The
    bridges other processes of the relay serve come from its board
    (``relay.board``)."""

    def __init__(self, relay: Relay, clock: Callable[[], float] = time.monotonic) -> None:
        self.relay = relay
        self.board = relay.board
        self.rates = AckRates()
        self._clock = clock
        self._snapshot: Snapshot | None = None
        self._drawn_at = 0.0
        # One drawing at a time: polls arriving together share it.
        self._drawing = asyncio.Lock()
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

    async def snapshot(self) -> Snapshot:
        """The current snapshot, drawn again if the last is older than a second."""
        async with self._drawing:
            if self._snapshot is None or self._clock() - self._drawn_at >= SNAPSHOT_SECONDS:
                await self._redraw()
            assert self._snapshot is not None
            return self._snapshot

    async def tenant(self, tenant: str) -> TenantView | None:
        """``tenant``'s row, None if the relay knows no such tenant. A tenant added
        since the snapshot was drawn has the snapshot drawn again at once."""
        for view in (await self.snapshot()).tenants:
            if view.id == tenant:
                return view
        if self.relay.tenants.get(tenant) is None and not self.relay.store.depth(tenant):
            return None
        async with self._drawing:
            await self._redraw()
            assert self._snapshot is not None
            return next((v for v in self._snapshot.tenants if v.id == tenant), None)

    async def _redraw(self) -> None:
        relay = self.relay
        started = self._clock()
        try:
            oldest: dict[str, int] | None = relay.store.oldest()
        except StoreError as exc:
            log.warning("console: queue ages unknown", extra={"why": str(exc)})
            oldest = None
        posted: dict[str, BridgeFacts] = {}
        bridges_known = True
        if self.board.shared:
            try:
                posted = await self.board.read()
            except BoardError as exc:
                log.warning("console: other processes' bridges unknown", extra={"why": str(exc)})
                bridges_known = False
        wall = time.time()
        # A tenant served here and by another process too (a take-over within a post's
        # lifetime): the newer connection is the active one.
        bridges = merged([posted, local_bridges(relay, self.board.name, wall)])
        self._snapshot = Snapshot(
            taken_at=wall,
            tenants=tenant_views(relay, bridges, self.rates, oldest, wall),
            glance=glance_of(relay),
            ages_known=oldest is not None,
            drawn_by=self.board.name,
            shared=self.board.shared,
            bridges_known=bridges_known,
        )
        self._drawn_at = started
