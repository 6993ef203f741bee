"""What a durable 200 costs on Redis: ``appendfsync always`` against ``everysec``.

The Redis store (appliance/store/redis.py) driven in-process, no HTTP: N
concurrent appenders, each waiting for its webhook to be stored before the
next (as a request handler waits before its 200), against a fresh
``redis-server`` with AOF on, once per ``appendfsync`` setting, plus one round
of bare ``PING``s for the cost of a round trip. Prints webhooks/s and the
append latency p50/p99 per setting (docs/redis.md quotes a run).

    .venv/bin/python -m bench.redis_fsync [--seconds 5] [--concurrency 64]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path

import redis.asyncio as aioredis

from appliance.store import Limits
from appliance.store.redis import RedisStore
from tests.support.redis import RedisServer

BODY = b'{"destination":"U0","events":[{"type":"message","text":"%d"}]}' + b" " * 500


async def appenders(url: str, seconds: float, concurrency: int) -> dict[str, float]:
    """Webhooks/s and latency (ms) of ``concurrency`` appenders for ``seconds``."""
    batches: list[int] = []
    store = RedisStore(url, Limits(queue_cap=10**9), on_batch=lambda n, _: batches.append(n))
    await store.open()
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds
    counter = iter(range(10**9))

    async def one() -> None:
        while time.perf_counter() < deadline:
            i = next(counter)
            started = time.perf_counter()
            await store.append(f"t{i % 16}", BODY % i, f"sig{i}", int(time.time() * 1000))
            latencies.append((time.perf_counter() - started) * 1000)

    began = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(concurrency)))
    elapsed = time.perf_counter() - began
    await store.close()
    latencies.sort()
    return {
        "per_s": round(len(latencies) / elapsed),
        "p50_ms": round(statistics.median(latencies), 2),
        "p99_ms": round(latencies[int(len(latencies) * 0.99)], 2),
        "batch": round(statistics.mean(batches), 1),
    }


async def round_trip(url: str, count: int = 2000) -> float:
    """Median ms of one PING on this machine's loopback (one Redis round trip)."""
    client = aioredis.Redis.from_url(url)
    times = []
    for _ in range(count):
        started = time.perf_counter()
        await client.ping()
        times.append((time.perf_counter() - started) * 1000)
    await client.aclose()
    return round(statistics.median(times), 3)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    print(f"cores: {os.cpu_count()}, concurrency {args.concurrency}, {args.seconds}s each")
    for fsync in ("always", "everysec"):
        with tempfile.TemporaryDirectory() as tmp:
            server = RedisServer(Path(tmp), fsync=fsync).start()
            try:
                if fsync == "always":
                    print(f"one round trip (PING): {asyncio.run(round_trip(server.url))} ms")
                # One appender: every webhook its own batch, its own fsync. Many: shared.
                for concurrency in (1, args.concurrency):
                    result = asyncio.run(appenders(server.url, args.seconds, concurrency))
                    print(f"appendfsync {fsync}, {concurrency} at once: {result}", flush=True)
            finally:
                server.stop()


if __name__ == "__main__":
    main()
