"""The PromQL the deploy/ files run (the alert rules' and the Grafana dashboard's),
and Prometheus's promtool, which checks it.

Shared by the tests that parse it with promtool and the one that checks it
against a real relay's /metrics.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
RULES = DEPLOY / "prometheus" / "linerelay-rules.yml"
RULE_TESTS = DEPLOY / "prometheus" / "linerelay-rules.test.yml"
DASHBOARD = DEPLOY / "grafana" / "linerelay.json"

#: Grafana's variables, given values Prometheus accepts.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$instance": ".*"}

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool is not installed (Debian: apt-get install prometheus)"
)


def promtool(*args: str, cwd: Path = RULES.parent) -> subprocess.CompletedProcess[str]:
    """Run promtool (see :data:`needs_promtool`); its result, whatever the exit status."""
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, *args], capture_output=True, text=True, timeout=120, cwd=cwd, check=False
    )


def alert_rules() -> list[dict[str, Any]]:
    """Every alerting rule in the rules file."""
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def dashboard() -> dict[str, Any]:
    """The dashboard, as Grafana imports it."""
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def dashboard_queries() -> list[str]:
    """Every query of the dashboard (panel targets, variables) as plain PromQL."""
    return [_promql(query) for query in _strings(dashboard(), ("expr", "definition"))]


def _promql(query: str) -> str:
    """A Grafana query as PromQL: variables filled in, ``label_values`` unwrapped."""
    # label_values(SELECTOR, LABEL) is Grafana's: the selector is the PromQL in it.
    query = re.sub(r"^label_values\((.*),\s*\w+\)$", r"\1", query)
    for variable, value in GRAFANA_VARIABLES.items():
        query = query.replace(variable, value)
    return query


def _strings(node: object, keys: tuple[str, ...]) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in keys and isinstance(value, str):
                yield value
            else:
                yield from _strings(value, keys)
    elif isinstance(node, list):
        for item in node:
            yield from _strings(item, keys)
