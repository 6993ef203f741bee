"""A bridge for the benchmarks: acks every webhook and measures end-to-end latency.

End-to-end is "request received → bridge has it": the frame's ``received_at``
(stamped by the relay when it took the request) to the moment this process
reads the frame, on the same clock. On SIGTERM it prints a JSON summary.

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


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) by nearest rank; 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def run(url: str, ca: str, token: str) -> dict[str, float]:
    """Ack until SIGTERM; return the latency figures."""
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    latencies: list[float] = []
    context = ssl.create_default_context(cafile=ca)
    async with websockets.connect(
        url,
        ssl=context,
        max_size=None,
        compression=None,
        additional_headers={"Authorization": f"Bearer {token}"},
    ) as ws:
        print(json.dumps({"connected": True}), flush=True)
        while not stop.is_set():
            try:
                raw = await asyncio.wait_for(ws.recv(), 0.2)
            except TimeoutError:
                continue
            now_ms = time.time() * 1000
            frame = json.loads(raw)
            if frame.get("type") != "webhook":
                continue
            await ws.send(json.dumps({"type": "ack", "id": frame["id"]}))
            latencies.append(now_ms - frame["received_at"])
    return {
        "delivered": len(latencies),
        "e2e_p50_ms": round(percentile(latencies, 0.5), 1),
        "e2e_p99_ms": round(percentile(latencies, 0.99), 1),
        "e2e_max_ms": round(max(latencies, default=0.0), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.ackbridge")
    parser.add_argument("--url", required=True)
    parser.add_argument("--ca", required=True)
    parser.add_argument("--token", required=True)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args.url, args.ca, args.token))), flush=True)


if __name__ == "__main__":
    main()
