"""The full path under load: harness -> relay -> a real bridge -> the simulated gateway."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.relay import RelayProcess

pytestmark = pytest.mark.integration

LINERELAY = str(Path(sys.executable).with_name("linerelay"))


def wait_for(condition: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.2)


def gateway_stats(base: str) -> dict[str, int]:
    with urllib.request.urlopen(base + "/stats", timeout=10) as answer:
        stats: dict[str, int] = json.loads(answer.read())["answers"]
    return stats


@pytest.fixture
def gateway() -> Iterator[str]:
    process = subprocess.Popen(
        [LINERELAY, "loadtest", "gateway", "--listen", "127.0.0.1:0", "--latency-ms", "20"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        yield json.loads(process.stdout.readline())["gateway"]
    finally:
        process.terminate()
        process.wait(timeout=10)


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
        wait_for(lambda: shared_relay.metric("linerelay_bridges_connected") > connected_before)
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
        wait_for(lambda: gateway_stats(gateway).get("/v2/bot/message/reply 200", 0) > 0)
        stats = gateway_stats(gateway)
        assert stats.get("/v1/chat/completions 200", 0) > 0
        assert not any(key.endswith((" 400", " 401", " 404")) for key in stats)
    finally:
        bridge.terminate()
        bridge.wait(timeout=20)
