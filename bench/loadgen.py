"""An open-loop, constant-rate webhook generator with an acking bridge.

wrk measures the maximum rate but not latency at a chosen rate; this does:
requests are scheduled at fixed times (rate per second) and each latency is
measured from its *scheduled* time, so a stalled server cannot hide its
queueing (no coordinated omission). Requests are raw HTTP/1.1 on keep-alive
TLS connections, to keep the generator cheap. With ``--bridge-token`` it also
holds a bridge WebSocket, acks every webhook and measures end-to-end latency
(request sent → bridge has it) from a marker in each body.

    python -m bench.loadgen rate --url https://127.0.0.1:8443/webhook/bench \
        --ca var/pki/root.pem --rate 1000 --duration 10 [--bridge-token T]
    python -m bench.loadgen bridge --url wss://127.0.0.1:8443/bridge --ca ... --token T
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import ssl
import time
from urllib.parse import urlsplit

import websockets

from bench.common import body_600, signature


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) by nearest rank; 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def run_bridge(
    url: str,
    token: str,
    context: ssl.SSLContext,
    seen: dict[str, float] | None = None,
    stop: asyncio.Event | None = None,
    expected: int | None = None,
    all_seen: asyncio.Event | None = None,
) -> int:
    """Hold a bridge connection, ack everything; record arrival times by marker.

    ``all_seen`` is set once ``expected`` distinct markers have arrived.
    """
    count = 0
    async with websockets.connect(
        url, ssl=context, max_size=None, additional_headers={"Authorization": f"Bearer {token}"}
    ) as ws:
        while stop is None or not stop.is_set():
            try:
                raw = await asyncio.wait_for(ws.recv(), 0.5)
            except TimeoutError:
                continue
            frame = json.loads(raw)
            if frame.get("type") != "webhook":
                continue
            await ws.send(json.dumps({"type": "ack", "id": frame["id"]}))
            count += 1
            if seen is not None:
                marker = frame["body"].rsplit("benchmark ", 1)[1].split(" ", 1)[0]
                seen[marker] = time.perf_counter()
                if all_seen is not None and expected is not None and len(seen) >= expected:
                    all_seen.set()
    return count


async def _connection(
    host: str,
    port: int,
    context: ssl.SSLContext,
    path: str,
    jobs: asyncio.Queue[tuple[float, str] | None],
    latencies: list[float],
    sent: dict[str, float],
    errors: list[int],
) -> None:
    reader, writer = await asyncio.open_connection(host, port, ssl=context)
    while (job := await jobs.get()) is not None:
        scheduled, marker = job
        body = body_600(marker)
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"X-Line-Signature: {signature(body)}\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        sent[marker] = time.perf_counter()
        writer.write(head.encode() + body)
        status_line = await reader.readline()
        length = 0
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            if name.lower() == b"content-length":
                length = int(value)
        await reader.readexactly(length)
        latencies.append(time.perf_counter() - scheduled)
        if not status_line.startswith(b"HTTP/1.1 200"):
            errors.append(int(status_line.split()[1]))
    writer.close()


async def constant_rate(
    url: str,
    ca: str,
    rate: float,
    duration: float,
    connections: int,
    bridge_url: str | None = None,
    token: str | None = None,
) -> dict[str, object]:
    """Send ``rate`` webhooks per second for ``duration`` seconds; return the figures."""
    context = ssl.create_default_context(cafile=ca)
    parts = urlsplit(url)
    jobs: asyncio.Queue[tuple[float, str] | None] = asyncio.Queue()
    latencies: list[float] = []
    errors: list[int] = []
    sent: dict[str, float] = {}
    seen: dict[str, float] = {}
    stop = asyncio.Event()
    all_seen = asyncio.Event()
    total = int(rate * duration)
    bridge = None
    if bridge_url and token:
        bridge = asyncio.create_task(
            run_bridge(bridge_url, token, context, seen, stop, total, all_seen)
        )
        await asyncio.sleep(0.5)
    workers = [
        asyncio.create_task(
            _connection(
                parts.hostname or "127.0.0.1",
                parts.port or 443,
                context,
                parts.path,
                jobs,
                latencies,
                sent,
                errors,
            )
        )
        for _ in range(connections)
    ]
    start = time.perf_counter() + 0.2
    run_id = f"{int(time.time())}"
    for i in range(total):
        scheduled = start + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        jobs.put_nowait((scheduled, f"{run_id}-{i}"))
    for _ in workers:
        jobs.put_nowait(None)
    await asyncio.gather(*workers)
    elapsed = time.perf_counter() - start
    result: dict[str, object] = {
        "rate_asked": rate,
        "rate_sent": round(len(latencies) / elapsed, 1),
        "requests": len(latencies),
        "errors": len(errors),
        "ack_p50_ms": round(percentile(latencies, 0.50) * 1000, 2),
        "ack_p99_ms": round(percentile(latencies, 0.99) * 1000, 2),
        "ack_max_ms": round(max(latencies, default=0) * 1000, 2),
        "over_1s": sum(1 for x in latencies if x > 1.0),
    }
    if bridge is not None:
        with contextlib.suppress(TimeoutError):  # shows below as delivered < requests
            await asyncio.wait_for(all_seen.wait(), 10)
        stop.set()
        await bridge
        e2e = [seen[m] - sent[m] for m in sent if m in seen]
        result["delivered"] = len(e2e)
        result["e2e_p50_ms"] = round(percentile(e2e, 0.50) * 1000, 2)
        result["e2e_p99_ms"] = round(percentile(e2e, 0.99) * 1000, 2)
    return result


def main() -> None:
    """CLI: ``rate`` or ``bridge``."""
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen")
    sub = parser.add_subparsers(dest="mode", required=True)
    rate = sub.add_parser("rate")
    rate.add_argument("--url", required=True)
    rate.add_argument("--ca", required=True)
    rate.add_argument("--rate", type=float, required=True)
    rate.add_argument("--duration", type=float, default=10)
    rate.add_argument("--connections", type=int, default=64)
    rate.add_argument("--bridge-url")
    rate.add_argument("--bridge-token")
    bridge = sub.add_parser("bridge")
    bridge.add_argument("--url", required=True)
    bridge.add_argument("--ca", required=True)
    bridge.add_argument("--token", required=True)
    args = parser.parse_args()
    if args.mode == "rate":
        figures = asyncio.run(
            constant_rate(
                args.url,
                args.ca,
                args.rate,
                args.duration,
                args.connections,
                args.bridge_url,
                args.bridge_token,
            )
        )
        print(json.dumps(figures))
    else:
        context = ssl.create_default_context(cafile=args.ca)
        asyncio.run(run_bridge(args.url, args.token, context))


if __name__ == "__main__":
    main()
