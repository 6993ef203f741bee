"""The full path under load: harness -> relay -> bridges -> the simulated Messaging API."""

from __future__ import annotations

import csv
import json
import subprocess
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.processes import stop
from tests.support.relay import LINERELAY, RelayProcess
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration


def gateway_stats(base: str) -> dict[str, int]:
    with urllib.request.urlopen(base + "/stats", timeout=10) as answer:
        stats: dict[str, int] = json.loads(answer.read())["answers"]
    return stats


def test_a_real_bridge_answers_generated_traffic_through_the_gateway(
    shared_relay: RelayProcess,
    gateway: str,
    run_loadtest: Callable[[list[str]], int],
    tmp_path: Path,
) -> None:
    token = shared_relay.add_tenant("full-1", "secret-full")
    config = tmp_path / "bridge.json"
    config.write_text(
        json.dumps(
            {
                "relay_token": token,
                "channel_secret": "secret-full",
                "channel_access_token": "channel-token",
                "relay_url": shared_relay.bridge_url,
                "openclaw_url": gateway + "/v1/chat/completions",
                "line_api_base": gateway,
                "ca_file": str(shared_relay.ca_file),
            }
        )
    )
    connected_before = shared_relay.metric("linerelay_bridges_connected")
    bridge = subprocess.Popen(
        [LINERELAY, "--state-dir", str(tmp_path / "bridge"), "bridge", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(
            lambda: shared_relay.metric("linerelay_bridges_connected") > connected_before,
            "the bridge to connect",
            timeout=60,
            interval=0.2,
        )
        report = tmp_path / "report"
        status = run_loadtest(
            ["--target", shared_relay.base_url, "--ca", str(shared_relay.ca_file),
             "--tenant", "full-1", "--channel-secret", "secret-full",
             "--budget-ms", "10000", "--slo-ack-p99-ms", "10000",
             "--rate", "10", "--duration", "4", "--report", str(report)]
        )  # fmt: skip
        verdict = json.loads((report / "verdict.json").read_text())
        assert status == 0, verdict
        assert verdict["delivered"] is None
        wait_for(
            lambda: gateway_stats(gateway).get("/v2/bot/message/reply 200", 0) > 0,
            "a reply through the gateway",
            timeout=60,
            interval=0.2,
        )
        stats = gateway_stats(gateway)
        assert stats.get("/v1/chat/completions 200", 0) > 0
        assert not any(key.endswith((" 400", " 401", " 404")) for key in stats)
    finally:
        stop(bridge)


def test_simulated_bridges_reply_through_the_gateway_and_the_harness_counts_each_call(
    shared_relay: RelayProcess,
    gateway: str,
    run_loadtest: Callable[[list[str]], int],
    tmp_path: Path,
) -> None:
    token = shared_relay.add_tenant("sim-gw-1", "secret-sim")
    report = tmp_path / "report"
    status = run_loadtest(
        ["--target", shared_relay.base_url, "--ca", str(shared_relay.ca_file),
         "--tenant", "sim-gw-1", "--channel-secret", "secret-sim", "--bridge-token", token,
         "--gateway", gateway, "--budget-ms", "10000", "--slo-ack-p99-ms", "10000",
         "--rate", "10", "--duration", "4", "--report", str(report)]
    )  # fmt: skip
    verdict = json.loads((report / "verdict.json").read_text())
    assert status == 0, verdict
    calls = json.loads((report / "summary.json").read_text())["bridges"]["gateway"]
    stats = gateway_stats(gateway)
    replies = stats.get("/v2/bot/message/reply 200", 0)
    assert replies > 0
    assert calls["reply"]["calls"] == replies
    assert calls["loading"]["calls"] == stats.get("/v2/bot/chat/loading/start 202", 0)
    assert calls["reply"]["failures"] == 0
    assert calls["reply"]["p99_ms"] >= 20, "the gateway answers after 20 ms"
    # The calls are the harness's alone: Locust's figures are the webhooks.
    with (report / "locust_stats.csv").open() as f:
        names = {row["Name"] for row in csv.DictReader(f)} - {"Aggregated"}
    assert all(name.startswith("webhook ") for name in names), sorted(names)
