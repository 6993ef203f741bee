"""The relay's own view of a run, from its Prometheus ``/metrics`` (PROTOCOL.md §3).

The harness scrapes the admin listener before and after a run and reports
the difference: how many webhooks the relay counted by outcome, its own
acknowledgement-time histogram (server side, so without the network and
the load generator's queueing) and how many bridges it saw connected.
With several nodes their counters are added up (:func:`combine`) before the
difference is taken, so the percentile comes from all nodes' buckets.
Parsing, adding and differencing are pure; :func:`scrape` is the only I/O.
"""

from __future__ import annotations

import math
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

ACK_HISTOGRAM = "linerelay_webhook_ack_seconds"
WEBHOOKS_TOTAL = "linerelay_webhooks_total"
BRIDGES_CONNECTED = "linerelay_bridges_connected"


class MetricsError(ValueError):
    """The text is not Prometheus exposition format."""


@dataclass(frozen=True, slots=True)
class RelayMetrics:
    """The relay's counters at one moment."""

    #: Cumulative ack-time bucket counts by upper bound in seconds (``le``).
    ack_buckets: dict[float, float] = field(default_factory=dict)
    ack_count: float = 0.0
    webhooks: dict[str, float] = field(default_factory=dict)
    bridges_connected: float | None = None


def parse(text: str) -> RelayMetrics:
    """Pick the relay's metrics out of an exposition text; missing ones stay empty."""
    buckets: dict[float, float] = {}
    webhooks: dict[str, float] = {}
    count = 0.0
    bridges: float | None = None
    try:
        families = list(text_string_to_metric_families(text))
    except (ValueError, TypeError) as exc:
        raise MetricsError(f"not Prometheus text: {exc}") from exc
    for family in families:
        for sample in family.samples:
            if sample.name == ACK_HISTOGRAM + "_bucket":
                le = float(sample.labels.get("le", "nan"))
                buckets[le] = buckets.get(le, 0.0) + sample.value
            elif sample.name == ACK_HISTOGRAM + "_count":
                count += sample.value
            elif sample.name == WEBHOOKS_TOTAL:
                outcome = sample.labels.get("outcome", "")
                webhooks[outcome] = webhooks.get(outcome, 0.0) + sample.value
            elif sample.name == BRIDGES_CONNECTED:
                bridges = (bridges or 0.0) + sample.value
    return RelayMetrics(buckets, count, webhooks, bridges)


def combine(nodes: list[RelayMetrics]) -> RelayMetrics:
    """Several nodes' counters as one relay's: every count and gauge added up."""
    buckets: dict[float, float] = {}
    webhooks: dict[str, float] = {}
    bridges: float | None = None
    for node in nodes:
        for le, n in node.ack_buckets.items():
            buckets[le] = buckets.get(le, 0.0) + n
        for outcome, n in node.webhooks.items():
            webhooks[outcome] = webhooks.get(outcome, 0.0) + n
        if node.bridges_connected is not None:
            bridges = (bridges or 0.0) + node.bridges_connected
    return RelayMetrics(buckets, sum(n.ack_count for n in nodes), webhooks, bridges)


def difference(before: RelayMetrics | None, after: RelayMetrics) -> dict[str, Any]:
    """What the relay counted between two scrapes, as a JSON-able summary.

    ``ack_p99_le_s`` is the upper bound of the bucket holding the 99th
    percentile (a histogram cannot say more), ``ack_over_1s`` the answers
    above the bucket bound nearest one second.
    """
    base = before or RelayMetrics()
    buckets = {le: n - base.ack_buckets.get(le, 0.0) for le, n in after.ack_buckets.items()}
    count = after.ack_count - base.ack_count
    webhooks = {k: v - base.webhooks.get(k, 0.0) for k, v in after.webhooks.items()}
    p99: float | None = None
    over: float | None = None
    if count > 0 and buckets:
        for le in sorted(buckets):
            if buckets[le] >= 0.99 * count:
                p99 = le
                break
        bounds = [le for le in buckets if math.isfinite(le) and le <= 1.0]
        if bounds:
            over = count - buckets[max(bounds)]
    return {
        "ack_count": count,
        "ack_p99_le_s": None if p99 is None or math.isinf(p99) else p99,
        "ack_over_1s": over,
        "webhooks_by_outcome": webhooks,
        "bridges_connected": after.bridges_connected,
    }


def scrape(admin_url: str, timeout: float = 5.0) -> RelayMetrics | None:
    """GET ``admin_url``/metrics and parse it; None when unreachable or unparsable."""
    url = admin_url.rstrip("/") + "/metrics"
    if not url.startswith(("http://", "https://")):
        return None
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:  # noqa: S310 - http(s) only
            text = answer.read().decode("utf-8", "replace")
    except (urllib.error.URLError, OSError, ValueError):
        return None
    try:
        return parse(text)
    except MetricsError:
        return None
