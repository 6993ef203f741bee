"""Prometheus metrics of one relay process, on their own registry.

Served on the admin listener only. Label values are bound once here so the
hot path does no label lookups.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

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


class Metrics:
    """Every metric the relay exports."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
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
        self.bridges_connected = Gauge(
            "linerelay_bridges_connected", "Bridge WebSockets currently open.", registry=r
        )
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
            "linerelay_connections_open", "Public connections open.", registry=r
        )
        self.connections_accepted = Counter(
            "linerelay_connections_accepted",
            "Public connections admitted (before their TLS handshake).",
            registry=r,
        )
        refused = Counter(
            "linerelay_connections_refused",
            "Public connections refused before TLS: over the total or per-address cap, "
            "over the per-address rate, or out of file descriptors.",
            ["reason"],
            registry=r,
        )
        self.connections_refused = {
            k: refused.labels(k) for k in ("total", "per_address", "rate", "fds")
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
        self.certificate_expiry = Gauge(
            "linerelay_tls_certificate_expiry_timestamp_seconds",
            "When the leaf of the certificate the public listener serves expires, Unix "
            "seconds (set at start and on every reload; absent without TLS).",
            registry=None,
        )
        self._expiry_registered = False

    def served_certificate(self, not_after: datetime.datetime) -> None:
        """Export when the served certificate's leaf expires (start and every reload).

        Registered at the first call: a relay serving plain HTTP behind a proxy
        has no certificate, and a 0 would read as one that expired in 1970.
        """
        if not self._expiry_registered:
            self.registry.register(self.certificate_expiry)
            self._expiry_registered = True
        self.certificate_expiry.set(not_after.timestamp())

    def track_queue_depth(self, depths: Callable[[], dict[str, int]]) -> None:
        """Export ``depths()`` (unacked webhooks per tenant) at each scrape."""
        self.registry.register(_QueueDepth(depths))

    def observe_batch(self, size: int, seconds: float) -> None:
        """Record one store batch: its size and the time to write and fsync it."""
        self.batch_size.observe(size)
        self.commit_seconds.observe(seconds)


class _QueueDepth(Collector):
    """Unacked webhooks per tenant, read from the store at scrape time."""

    def __init__(self, depths: Callable[[], dict[str, int]]) -> None:
        self._depths = depths

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "linerelay_queue_depth", "Unacked webhooks per tenant.", labels=["tenant"]
        )
        for tenant, depth in sorted(self._depths().items()):
            family.add_metric([tenant], depth)
        yield family
