"""deploy/prometheus/linerelay-rules.yml (issue 11 item 4), checked by Prometheus's own promtool.

Debian's ``prometheus`` package provides promtool (.ci/run installs it). That
the rules only query what a real relay exports is
tests/deploy/test_queried_metrics_exist.py's part.
"""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from tests.deploy.queries import RULE_TESTS, RULES, alert_rules, needs_promtool, promtool


@needs_promtool
def test_promtool_accepts_the_rules() -> None:
    result = promtool("check", "rules", RULES.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout


@needs_promtool
def test_every_alert_passes_its_promtool_unit_tests() -> None:
    result = promtool("test", "rules", RULE_TESTS.name)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_is_tested_both_firing_and_quiet() -> None:
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check["exp_alerts"] else quiet).add(check["alertname"])
    names = {rule["alert"] for rule in alert_rules()}
    assert names - firing == set(), "alerts never tested firing"
    assert names - quiet == set(), "alerts never tested quiet"
    assert (firing | quiet) - names == set(), "tests of alerts that do not exist"


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda rule: rule["alert"])
def test_every_alert_says_how_long_how_bad_and_what_to_do(rule: dict[str, Any]) -> None:
    assert rule.get("for"), "a for: duration, so one bad scrape does not page"
    assert rule["labels"]["severity"] in ("warning", "critical")
    # Named for the node, or for the job where the alert is taken over every node.
    summary = rule["annotations"]["summary"]
    assert summary.startswith(("{{ $labels.instance }}: ", "{{ $labels.job }}: "))
    assert len(rule["annotations"]["description"]) > 100, "what the operator should do"


PER_TENANT = (
    "LineRelayQueueGrowingWithoutBridge",
    "LineRelayBridgeFlapping",
    "LineRelayWebhooksWaiting",
)


@pytest.mark.parametrize("name", PER_TENANT)
def test_per_tenant_alerts_are_taken_over_every_node_of_the_job(name: str) -> None:
    # Nodes sharing one Redis store are one relay (PROTOCOL.md §6): a tenant's bridge
    # and its connects are on whichever node it reached, so per-instance alerts would
    # fire falsely (or once per node). The promtool cases show it with two instances.
    (rule,) = (rule for rule in alert_rules() if rule["alert"] == name)
    assert "by (job, tenant)" in rule["expr"]
    assert "instance" not in rule["expr"]
    assert rule["annotations"]["summary"].startswith("{{ $labels.job }}: ")
