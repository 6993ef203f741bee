"""The benchmarks' acking bridge (bench/ackbridge.py) speaks protocol 2, or 1 when told.

A later benchmark compares the two protocols' throughput with it, so both
must really be spoken: against a real relay, webhooks queued before the
bridge connects arrive as one batch in protocol 2 (one ack frame) and one
frame each in protocol 1 (one ack each).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.helpers import (
    TIMEOUT,
    Harness,
    async_client,
    post,
    running_relay,
    wait_for,
    webhook_body,
)

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
WEBHOOKS = 5


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    with running_relay(tmp_path_factory, "ackbridge") as h:
        yield h


@pytest.mark.parametrize(("protocol", "ack_frames"), [(2, 1), (1, WEBHOOKS)])
async def test_the_acking_bridge_speaks_the_protocol_it_is_told_and_acks_everything(
    harness: Harness, protocol: int, ack_frames: int
) -> None:
    tenant = harness.tenant()
    async with async_client(harness) as client:
        for n in range(WEBHOOKS):
            body = webhook_body(f"bench-{n}")
            assert (await post(client, harness, tenant, body)).status_code == 200
    bridge = subprocess.Popen(
        [
            *(sys.executable, "-m", "bench.ackbridge", "--url", harness.relay.bridge_url),
            *("--ca", str(harness.relay.ca_file), "--token", tenant.token),
            *("--protocol", str(protocol)),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert bridge.stdout is not None
        assert json.loads(bridge.stdout.readline()) == {"connected": True, "protocol": protocol}
        wait_for(
            lambda: harness.metric("linerelay_queue_depth", tenant=tenant.id) == 0,
            "the bridge to ack everything",
        )
    finally:
        bridge.send_signal(signal.SIGTERM)
        out, _ = bridge.communicate(timeout=TIMEOUT)
    summary = json.loads(out.strip().splitlines()[-1])
    assert (summary["protocol"], summary["delivered"]) == (protocol, WEBHOOKS)
    assert summary["ack_frames"] == ack_frames
