"""A bridge for the benchmarks: acks every webhook and measures end-to-end latency.

End-to-end is "request received → bridge has it": the frame's ``received_at``
(stamped by the relay when it took the request) to the moment this process
reads the frame, on the same clock. On SIGTERM it prints a JSON summary.

It speaks what ``linerelay bridge`` speaks (bridge/wire.py): it offers
protocol 2 and acks each batch in one frame, or protocol 1 if the relay
selects no subprotocol. ``--protocol 1`` offers none, to measure protocol 1
against a relay that has both.

    python -m bench.ackbridge --url wss://127.0.0.1:8443/bridge --ca var/pki/root.pem --token T
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import ssl
import time

import websockets

from appliance.protocol import decode
from bridge.wire import acks, delivered, negotiated, offer


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) by nearest rank; 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def run(url: str, ca: str, token: str, protocol: int = 2) -> dict[str, float]:
    """Ack until SIGTERM, asking for ``protocol``; return the latency figures."""
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    latencies: list[float] = []
    ack_frames = 0
    context = ssl.create_default_context(cafile=ca)
    async with websockets.connect(
        url,
        ssl=context,
        max_size=None,
        compression=None,
        additional_headers={"Authorization": f"Bearer {token}"},
        subprotocols=offer(protocol),
    ) as ws:
        spoken = negotiated(ws.subprotocol)
        print(json.dumps({"connected": True, "protocol": spoken}), flush=True)
        while not stop.is_set():
            try:
                raw = await asyncio.wait_for(ws.recv(), 0.2)
            except TimeoutError:
                continue
            now_ms = time.time() * 1000
            hooks = delivered(decode(raw))
            for frame in acks([hook.id for hook in hooks], spoken):
                await ws.send(frame)
                ack_frames += 1
            latencies.extend(now_ms - hook.received_at for hook in hooks)
    return {
        "protocol": spoken,
        "delivered": len(latencies),
        "ack_frames": ack_frames,
        "e2e_p50_ms": round(percentile(latencies, 0.5), 1),
        "e2e_p99_ms": round(percentile(latencies, 0.99), 1),
        "e2e_max_ms": round(max(latencies, default=0.0), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.ackbridge")
    parser.add_argument("--url", required=True)
    parser.add_argument("--ca", required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument(
        "--protocol",
        type=int,
        choices=(1, 2),
        default=2,
        help="2: offer linerelay.v2 (protocol 1 if the relay selects none); 1: offer nothing",
    )
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args.url, args.ca, args.token, args.protocol))), flush=True)


if __name__ == "__main__":
    main()
