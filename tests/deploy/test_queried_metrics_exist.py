"""Every metric the alert rules and the dashboard query is one a real relay exports.

A rule on a misspelt metric, or on a label value the relay never sets, never
fires and never says so: this test is what keeps deploy/ honest. The relay
runs with a tenant, a connected bridge and a webhook delivered, so the
per-tenant series are there; names and label values are compared with its
real /metrics.
"""

from __future__ import annotations

import asyncio
import re
from collections import defaultdict
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.deploy.queries import alert_rules, dashboard_queries
from tests.integration.helpers import (
    TIMEOUT,
    Bridge,
    Harness,
    async_client,
    post,
    running_relay,
    wait_for,
    webhook_body,
)

pytestmark = pytest.mark.integration

#: A selector: a metric name and its braces, if any.
SELECTOR = re.compile(r"\b(linerelay_[a-z0-9_]+)(?:\s*\{([^}]*)\})?")
#: One equality or regex matcher inside braces.
MATCHER = re.compile(r'(\w+)\s*(=~|=)\s*"([^"]*)"')
#: Labels Prometheus adds at scrape time, not the relay.
TARGET_LABELS = {"instance", "job"}

Exported = dict[str, dict[str, set[str]]]


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    with running_relay(tmp_path_factory, "queried", config="tenant_poll_interval = 0.2\n") as h:
        yield h


@pytest.fixture(scope="module")
def exported(harness: Harness) -> Exported:
    """The relay's /metrics with a tenant's bridge connected: each sample name, with
    the values seen for each of its labels."""
    found: Exported = defaultdict(lambda: defaultdict(set))
    for family in text_string_to_metric_families(asyncio.run(scrape_in_use(harness))):
        for sample in family.samples:
            labels = found[sample.name]
            for label, value in sample.labels.items():
                labels[label].add(value)
    return found


async def scrape_in_use(harness: Harness) -> str:
    """/metrics after a webhook was delivered, scraped while its tenant's bridge is connected."""
    tenant = harness.tenant("dash")
    async with await Bridge.open(harness, tenant.token) as bridge:
        async with async_client(harness) as client:
            response = await post(client, harness, tenant, webhook_body("seen"))
        assert response.status_code == 200
        await bridge.take(1)
        text: str = wait_for(lambda: scrape_with(harness, tenant.id), "the tenant's series")
    return text


def scrape_with(harness: Harness, tenant: str) -> str | None:
    """/metrics once it has ``tenant``'s series, else None."""
    text = httpx.get(f"{harness.relay.admin_url}/metrics", timeout=TIMEOUT).text
    return text if f'tenant="{tenant}"' in text else None


def queries() -> list[tuple[str, str]]:
    """Each query of deploy/, named by where it is."""
    rules = [(f"rule {rule['alert']}", rule["expr"]) for rule in alert_rules()]
    panels = [(f"dashboard query {i}", query) for i, query in enumerate(dashboard_queries())]
    return rules + panels


@pytest.mark.parametrize(("where", "query"), queries(), ids=[where for where, _ in queries()])
def test_every_metric_and_label_value_a_query_names_is_exported(
    exported: Exported, where: str, query: str
) -> None:
    selectors = SELECTOR.findall(query)
    assert selectors, f"{where} queries no linerelay metric"
    for name, braces in selectors:
        assert name in exported, f"{where}: the relay exports no {name}"
        for label, op, value in MATCHER.findall(braces):
            if label in TARGET_LABELS:
                continue
            wanted = value.split("|") if op == "=~" else [value]
            missing = set(wanted) - exported[name][label]
            assert not missing, f"{where}: {name} never has {label} in {sorted(missing)}"
