"""Helpers for the harness's runs against real relays: tenants, common options, reports."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.support.relay import RelayProcess

Run = Callable[[list[str]], int]


def tenant_options(relay: RelayProcess, prefix: str, count: int) -> list[str]:
    options = []
    for i in range(1, count + 1):
        tenant = f"{prefix}-{i}"
        token = relay.add_tenant(tenant, f"secret-{tenant}")
        options += [
            "--tenant",
            tenant,
            "--channel-secret",
            f"secret-{tenant}",
            "--bridge-token",
            token,
        ]
    return options


def common(relay: RelayProcess, report: Path) -> list[str]:
    # These runs prove counting and delivery, not speed: on a shared 2-core machine a
    # busy neighbour can push an answer past one second, so the budget is relaxed here
    # (the default SLO is exercised by the verdict's unit tests and the slow-target run).
    return [
        "--budget-ms",
        "10000",
        "--slo-ack-p99-ms",
        "10000",
        "--target",
        relay.base_url,
        "--ca",
        str(relay.ca_file),
        "--admin-url",
        relay.admin_url,
        "--report",
        str(report),
        "--drain",
        "20",
    ]


def bridge_protocols(relay: RelayProcess, prefix: str) -> set[int]:
    """The protocols the relay logged for bridges of tenants named ``prefix-N``."""
    found = set()
    for line in relay.output().splitlines():
        if '"bridge connected"' in line:
            record = json.loads(line)
            if record["tenant"].startswith(f"{prefix}-"):
                found.add(record["protocol"])
    return found


def stats_rows(report: Path) -> dict[str, dict[str, Any]]:
    with (report / "locust_stats.csv").open() as f:
        return {row["Name"]: row for row in csv.DictReader(f)}
