"""Runs against several targets: independent relays with their own tenants, or one shared store."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.loadtest.runs import Run, tenant_options
from tests.support.relay import RelayProcess

pytestmark = pytest.mark.integration

RELAXED = ["--budget-ms", "10000", "--slo-ack-p99-ms", "10000", "--drain", "20"]


@pytest.fixture(scope="module")
def second_relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayProcess]:
    """A second relay with its own state dir, store, tenants and dev CA."""
    process = RelayProcess(tmp_path_factory.mktemp("relay-b") / "state").start()
    try:
        yield process
    finally:
        process.stop()


def results(report: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    verdict = json.loads((report / "verdict.json").read_text())
    summary = json.loads((report / "summary.json").read_text())
    return verdict, summary


def test_two_relays_with_their_own_tenants_are_driven_in_one_run(
    shared_relay: RelayProcess, second_relay: RelayProcess, run_loadtest: Run, tmp_path: Path
) -> None:
    report = tmp_path / "report"
    token_a = shared_relay.add_tenant("nodes-a", "secret-nodes-a")
    token_b = second_relay.add_tenant("nodes-b", "secret-nodes-b")
    argv = [
        *RELAXED, "--report", str(report), "--rate", "20", "--duration", "4",
        "--target", shared_relay.base_url, "--target", second_relay.base_url,
        "--ca", str(shared_relay.ca_file), "--ca", str(second_relay.ca_file),
        "--admin-url", shared_relay.admin_url, "--admin-url", second_relay.admin_url,
        # In turn: the first tenant lives on the first target, the second on the second.
        "--tenant", "nodes-a", "--channel-secret", "secret-nodes-a", "--bridge-token", token_a,
        "--tenant", "nodes-b", "--channel-secret", "secret-nodes-b", "--bridge-token", token_b,
    ]  # fmt: skip
    status = run_loadtest(argv)
    verdict, summary = results(report)
    assert status == 0, verdict
    assert verdict["accepted"] == verdict["delivered"] == summary["requests"] >= 20
    # Each relay accepted exactly what the harness counted for its target, and delivered
    # it to the bridge connected to it (neither knows the other's tenant).
    nodes = summary["relay_metrics"]["nodes"]
    targets = summary["targets"]
    assert [t["target"] for t in targets] == [shared_relay.base_url, second_relay.base_url]
    for target, node in zip(targets, nodes, strict=True):
        assert target["accepted"] > 0
        assert node["webhooks_by_outcome"]["accepted"] == target["accepted"]
        assert target["deliveries"] == target["accepted"]
    assert summary["relay_metrics"]["webhooks_by_outcome"]["accepted"] == verdict["accepted"]
    assert summary["relay_metrics"]["bridges_connected_peak"] == 2


@pytest.mark.parametrize(
    ("spread", "webhooks_on", "bridges_on"),
    [
        # One relay under two names is a valid shared store: webhooks and bridges on both.
        ("both", {0, 1}, {0, 1}),
        # Webhooks all to one name, bridges all to the other.
        ("apart", {0}, {1}),
    ],
)
def test_one_relay_under_two_names_is_a_shared_store_across_both(
    shared_relay: RelayProcess,
    run_loadtest: Run,
    tmp_path: Path,
    spread: str,
    webhooks_on: set[int],
    bridges_on: set[int],
) -> None:
    report = tmp_path / "report"
    by_ip = shared_relay.base_url
    by_name = by_ip.replace("127.0.0.1", "localhost")
    names = ["--target", by_ip, "--target", by_name]
    if spread == "apart":
        names = ["--target", by_ip, "--bridge-target", by_name]
    argv = [
        *RELAXED, "--report", str(report), "--rate", "20", "--duration", "4",
        "--shared-store", *names, "--ca", str(shared_relay.ca_file),
        "--admin-url", shared_relay.admin_url,
        *tenant_options(shared_relay, f"shared-{spread}", 2),
    ]  # fmt: skip
    status = run_loadtest(argv)
    verdict, summary = results(report)
    assert status == 0, verdict
    assert verdict["accepted"] == verdict["delivered"] >= 20
    assert summary["relay_metrics"]["webhooks_by_outcome"]["accepted"] == verdict["accepted"]
    rows = summary["targets"]
    posted_on = {i for i, row in enumerate(rows) if row.get("posted")}
    delivered_on = {i for i, row in enumerate(rows) if row.get("deliveries")}
    if spread == "apart":
        # Webhook targets first, then the bridge targets as rows of their own.
        assert [r["target"] for r in rows] == [by_ip, by_name]
    assert posted_on == webhooks_on
    assert delivered_on == bridges_on
    assert sum(row.get("posted", 0) for row in rows) == summary["requests"]
    assert sum(row.get("deliveries", 0) for row in rows) == summary["deliveries"]
