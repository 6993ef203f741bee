"""Prometheus metrics of the relay, on their own registry.

Served on the admin listener only. Label values are bound once here so the
hot path does no label lookups.

With several processes sharing the admin port (``linerelay serve --workers
N``), a scrape reaches whichever process accepts it, so each must answer for
all: prometheus-client's multiprocess mode. The supervisor sets
``PROMETHEUS_MULTIPROC_DIR`` before this module's library is imported; every
process then writes its counters, histograms and gauges to files there, and
each process's registry serves the sum of the files (MultiProcessCollector)
plus what is the same in every process (the build, the store's queues). The
per-tenant bridge series, which only the process holding a bridge knows, are
written to the files by every process each housekeeping round
(:meth:`Metrics.publish_bridges`).
"""

from __future__ import annotations

import datetime
import logging
import os
import platform
import time
from collections import defaultdict
from collections.abc import Collection, Iterable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from appliance import version
from appliance.errors import StoreError
from appliance.protocol import PROTOCOLS

if TYPE_CHECKING:
    from appliance.hub import Hub
    from appliance.store import Store
    from appliance.tenants import TenantDirectory

log = logging.getLogger(__name__)

#: Where the processes of ``--workers`` write their samples (prometheus-client's name).
MULTIPROC_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"

#: Buckets around the one-second budget, with detail where a healthy relay answers.
ACK_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.8, 1.0, 2.0, 5.0)

OUTCOMES = (
    "accepted",  # stored, 200
    "duplicate",  # a retry of a stored body, 200
    "verify",  # "events": [], 200, nothing queued
    "invalid_signature",
    "malformed_body",
    "unknown_tenant",
    "body_too_large",
    "body_timeout",
    "method_not_allowed",
    "overloaded",  # not committed before the ack deadline
    "queue_full",
    "store_error",
    "malformed_request",  # Content-Length with Transfer-Encoding: refused, connection closed
)


#: What a family's samples add to its name: counters, histograms (and gauges: none).
_SAMPLE_SUFFIXES = ("", "_total", "_bucket", "_count", "_sum")


class Metrics:
    """Every metric the relay exports."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        #: The directory shared by several processes' samples, or None for one process.
        self.shared = os.environ.get(MULTIPROC_DIR_ENV) or None
        # Shared: the metrics below live in the files, which the registry serves.
        r = None if self.shared else self.registry
        #: Every process's samples summed, for :meth:`combined` (None: one process).
        self._everyone: Collector | None = None
        if self.shared:
            self._everyone = MultiProcessCollector(None, self.shared)  # type: ignore[no-untyped-call]
            self.registry.register(self._everyone)
        self.ack_seconds = Histogram(
            "linerelay_webhook_ack_seconds",
            "Time from a webhook request's start to its answer.",
            buckets=ACK_BUCKETS,
            registry=r,
        )
        webhooks = Counter(
            "linerelay_webhooks", "Webhook requests by outcome.", ["outcome"], registry=r
        )
        self.outcome = {name: webhooks.labels(name) for name in OUTCOMES}
        self.over_budget = Counter(
            "linerelay_webhooks_over_budget",
            "Webhook answers slower than the budget (budget_ms).",
            registry=r,
        )
        # The same in every process, and not kept in files: each process serves its own.
        info = "The relay's version and the Python it runs on."
        Info("linerelay_build", info, registry=self.registry).info(
            {"version": version(), "python": platform.python_version()}
        )
        self.bridges_connected = Gauge(
            "linerelay_bridges_connected",
            "Bridge WebSockets currently open.",
            registry=r,
            multiprocess_mode="livesum",
        )
        #: Bridge connections accepted per tenant, exported by :meth:`track_tenants`.
        self.bridge_connects: defaultdict[str, int] = defaultdict(int)
        self.bridge_rejected = Counter(
            "linerelay_bridge_auth_failures", "Bridge upgrades refused for a bad token.", registry=r
        )
        self.deliveries = Counter(
            "linerelay_deliveries", "Webhooks sent to a bridge for the first time.", registry=r
        )
        self.redeliveries = Counter(
            "linerelay_redeliveries", "Webhooks sent to a bridge again (attempt > 1).", registry=r
        )
        self.acks = Counter("linerelay_acks", "Acks received from bridges.", registry=r)
        self.nacks = Counter("linerelay_nacks", "Nacks received from bridges.", registry=r)
        frames = Counter(
            "linerelay_bridge_frames_rejected",
            "Bridge frames ignored as malformed.",
            ["reason"],
            registry=r,
        )
        self.frame_rejected = {k: frames.labels(k) for k in ("malformed", "binary", "unknown_id")}
        self.expired = Counter(
            "linerelay_webhooks_expired",
            "Webhooks dropped unacked after max_unacked_age (each also logged).",
            registry=r,
        )
        self.commit_seconds = Histogram(
            "linerelay_store_commit_seconds",
            "Time to write and fsync one group-commit batch.",
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
            registry=r,
        )
        self.batch_size = Histogram(
            "linerelay_store_batch_size",
            "Operations per group-commit batch.",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
            registry=r,
        )
        reloads = Counter(
            "linerelay_tls_reloads", "Certificate reloads by result.", ["result"], registry=r
        )
        self.tls_reload = {k: reloads.labels(k) for k in ("ok", "failed")}
        self.connections_open = Gauge(
            "linerelay_connections_open",
            "Public connections open.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.connections_accepted = Counter(
            "linerelay_connections_accepted",
            "Public connections admitted (before their TLS handshake).",
            registry=r,
        )
        refused = Counter(
            "linerelay_connections_refused",
            "Public connections refused before TLS: over the total or per-address cap, "
            "over the per-address rate, out of file descriptors, or from a load balancer "
            "without a valid PROXY protocol header (proxy_protocol).",
            ["reason"],
            registry=r,
        )
        self.connections_refused = {
            k: refused.labels(k) for k in ("total", "per_address", "rate", "fds", "proxy_protocol")
        }
        self.tls_handshake_failures = Counter(
            "linerelay_tls_handshake_failures",
            "TLS handshakes that failed or timed out.",
            registry=r,
        )
        trips = Counter(
            "linerelay_h2_connections_closed",
            "HTTP/2 connections closed for abuse (rapid reset, stream flood).",
            ["reason"],
            registry=r,
        )
        self.h2_guard_trips = {k: trips.labels(k) for k in ("rapid_reset", "too_many_streams")}
        timeouts = Counter(
            "linerelay_send_timeouts",
            "Connections dropped because the peer did not take an answer or a bridge "
            "frame within send_timeout.",
            ["kind"],
            registry=r,
        )
        self.send_timeouts = {k: timeouts.labels(k) for k in ("answer", "bridge")}
        bridge_refused = Counter(
            "linerelay_bridge_refused",
            "Bridge upgrades answered 429: an address after repeated bad tokens "
            "(auth_lockout) or a tenant reconnecting too often (reconnect_rate).",
            ["reason"],
            registry=r,
        )
        self.bridge_refused = {
            k: bridge_refused.labels(k) for k in ("auth_lockout", "reconnect_rate")
        }
        self._registry = r
        self.certificate_expiry: Gauge | None = None
        if self.shared:
            self._bridge_connected = Gauge(
                "linerelay_bridge_connected",
                _BRIDGE_CONNECTED,
                ["tenant", "protocol"],
                registry=None,
                multiprocess_mode="livemax",
            )
            self._bridge_connects = Counter(
                "linerelay_bridge_connects", _BRIDGE_CONNECTS, ["tenant"], registry=None
            )
            #: Each tenant's bridge_connects as last written to the files.
            self._published: dict[str, int] = {}

    def combined(self, names: Collection[str]) -> list[Metric]:
        """The metric families ``names`` (as exported, without ``_total``), summed over
        every process of ``--workers``: this process's own when it is alone."""
        if self._everyone is not None:
            return [m for m in self._everyone.collect() if m.name in names]
        # A restricted registry keeps the samples named, so it is given their names too.
        samples = [n + suffix for n in names for suffix in _SAMPLE_SUFFIXES]
        restricted = self.registry.restricted_registry(samples)
        return [m for m in restricted.collect() if m.name in names]

    def served_certificate(self, not_after: datetime.datetime) -> None:
        """Export when the served certificate's leaf expires (start and every reload).

        Made at the first call: a relay serving plain HTTP behind a proxy has no
        certificate, and a 0 would read as one that expired in 1970.
        """
        if self.certificate_expiry is None:
            self.certificate_expiry = Gauge(
                "linerelay_tls_certificate_expiry_timestamp_seconds",
                "When the leaf of the certificate the public listener serves expires, Unix "
                "seconds (set at start and on every reload; absent without TLS).",
                registry=self._registry,
                multiprocess_mode="livemostrecent",
            )
        self.certificate_expiry.set(not_after.timestamp())

    def track_tenants(self, tenants: TenantDirectory, store: Store, hub: Hub) -> None:
        """Export every known tenant's queue and bridges, read at each scrape."""
        collector = _Tenants(tenants, store, hub, self.bridge_connects, bridges=not self.shared)
        self.registry.register(collector)

    def publish_bridges(
        self, tenants: Iterable[str], connected: Collection[tuple[str, int]]
    ) -> None:
        """Write this process's per-tenant bridge series to the shared files (several
        processes only): which (tenant, protocol) bridges it holds (``connected``), and
        each tenant's connects."""
        if not self.shared:
            return
        for tenant in {*tenants, *self.bridge_connects}:
            for number in PROTOCOLS:
                live = float((tenant, number) in connected)
                self._bridge_connected.labels(tenant, str(number)).set(live)
            count = self.bridge_connects.get(tenant, 0)
            # Labelled even at zero, as one process's collector shows every tenant.
            self._bridge_connects.labels(tenant).inc(count - self._published.get(tenant, 0))
            self._published[tenant] = count

    def track_store(self, store: Store) -> None:
        """Export whether the store can be used now (``linerelay_store_up``), read at each scrape."""
        self.registry.register(_StoreHealth(store))

    def observe_batch(self, size: int, seconds: float) -> None:
        """Record one store batch: its size and the time to write and fsync it."""
        self.batch_size.observe(size)
        self.commit_seconds.observe(seconds)


class _StoreHealth(Collector):
    """``linerelay_store_up``: 1 while the store answers, 0 while it cannot be reached
    (Redis down or restarting: webhooks are answered 503, ``/readyz`` says why)."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "linerelay_store_up", "1 while the store can be used, else 0 (see /readyz)."
        )
        up.add_metric([], 0.0 if self._store.health() else 1.0)
        yield up


_BRIDGE_CONNECTED = "1 while a bridge of the tenant speaking the protocol is connected, else 0."
_BRIDGE_CONNECTS = "Bridge connections accepted per tenant (a flapping bridge counts fast)."


class _Tenants(Collector):
    """Per-tenant series, read at scrape time: one for every known tenant, zeros included.

    A series that vanished at zero could not tell an empty queue from a relay
    that stopped exporting it, and ``increase()`` misses a counter's first
    step unless the counter was seen at 0 before it. ``bridges=False`` (several
    processes): the bridge series come from the shared files instead.
    """

    def __init__(
        self,
        tenants: TenantDirectory,
        store: Store,
        hub: Hub,
        connects: dict[str, int],
        bridges: bool = True,
    ) -> None:
        self._tenants = tenants
        self._store = store
        self._hub = hub
        self._connects = connects
        self._bridges = bridges

    def collect(self) -> Iterator[Metric]:
        depths = self._store.depths()
        # A removed tenant keeps its series while its queue is purged.
        names = sorted(self._tenants.by_id.keys() | depths.keys())
        connected = {(c.tenant, c.protocol) for c in self._hub.connections}
        now_ms = time.time() * 1000
        try:
            oldest: dict[str, int] | None = self._store.oldest()
        except StoreError as exc:
            # Absent rather than 0: a 0 would say the queues are fresh.
            log.warning("metrics: queue ages unknown", extra={"why": str(exc)})
            oldest = None
        depth = GaugeMetricFamily(
            "linerelay_queue_depth", "Unacked webhooks per tenant.", labels=["tenant"]
        )
        age = GaugeMetricFamily(
            "linerelay_queue_oldest_age_seconds",
            "Age of each tenant's oldest unacked webhook (0 when none is queued).",
            labels=["tenant"],
        )
        bridge = GaugeMetricFamily(
            "linerelay_bridge_connected", _BRIDGE_CONNECTED, labels=["tenant", "protocol"]
        )
        connects = CounterMetricFamily(
            "linerelay_bridge_connects", _BRIDGE_CONNECTS, labels=["tenant"]
        )
        for tenant in names:
            depth.add_metric([tenant], depths.get(tenant, 0))
            if oldest is not None:
                received = oldest.get(tenant)
                seconds = 0.0 if received is None else max(0.0, (now_ms - received) / 1000)
                age.add_metric([tenant], seconds)
            for number in PROTOCOLS:
                bridge.add_metric([tenant, str(number)], float((tenant, number) in connected))
            connects.add_metric([tenant], self._connects.get(tenant, 0))
        yield depth
        if oldest is not None:
            yield age
        if self._bridges:
            yield bridge
            yield connects
