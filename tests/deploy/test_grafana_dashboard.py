"""deploy/grafana/linerelay.json (issue 11 item 4): a dashboard Grafana can import.

Its queries are parsed by Prometheus's own parser (promtool); that they only
query what a real relay exports is tests/deploy/test_queried_metrics_exist.py's part.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from tests.deploy.queries import dashboard, dashboard_queries, needs_promtool, promtool

#: What an operator looks at (issue 11 item 4), each by the metric that shows it.
SHOWN = {
    "answers over budget and ack-time quantiles": "linerelay_webhook_ack_seconds_bucket",
    "webhooks by outcome": "linerelay_webhooks_total",
    "queue depth per tenant": "linerelay_queue_depth",
    "oldest unacked age per tenant": "linerelay_queue_oldest_age_seconds",
    "bridges connected": "linerelay_bridges_connected",
    "bridges per tenant and protocol": "linerelay_bridge_connected",
    "store commit time": "linerelay_store_commit_seconds_bucket",
    "certificate expiry": "linerelay_tls_certificate_expiry_timestamp_seconds",
}


def test_the_dashboard_is_json_with_unique_panel_ids_and_a_query_per_panel() -> None:
    panels = dashboard()["panels"]
    assert len({panel["id"] for panel in panels}) == len(panels)
    for panel in panels:
        assert panel["title"]
        assert panel["description"], f"{panel['title']}: what it shows and when to worry"
        assert [target["expr"] for target in panel["targets"]], panel["title"]
        assert panel["datasource"]["uid"] == "${datasource}"
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24


def test_the_dashboard_shows_what_an_operator_needs() -> None:
    text = "\n".join(dashboard_queries())
    missing = {what for what, metric in SHOWN.items() if not re.search(rf"\b{metric}\b", text)}
    assert missing == set()


@needs_promtool
def test_every_dashboard_query_parses_as_promql(tmp_path: Path) -> None:
    # promtool parses the expressions of rule files: each query becomes a recording rule.
    rules = [
        {"record": f"linerelay_dashboard:query_{i}", "expr": query}
        for i, query in enumerate(dashboard_queries())
    ]
    rules_file = tmp_path / "dashboard-rules.yml"
    rules_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = promtool("check", "rules", rules_file.name, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout
