"""Scale-out: one process on SQLite, one on Redis, ``--workers 2`` on Redis, side by side.

Each configuration gets a fresh relay (and, on Redis, a fresh ``redis-server``
with AOF and ``appendfsync always``), one tenant per run with an acking
protocol 2 bridge (bench/ackbridge.py), and the same wrk load as
bench/throughput.py: TLS 1.3, 64 keep-alive connections, a different signed
600-byte body on every request. Measured per configuration: the maximum rate
of webhooks answered 200 (a 503 is an answer but not a webhook taken: wrk's
own rate counts both), the ack p99 paced at half of it, and the end-to-end
p99 (receipt to the bridge) paced at half of it. On Redis, also what Redis
itself spent per webhook at the maximum (its CPU time, and its time in each
command, from ``INFO``), which bounds every node on one Redis together.

Where everything runs, on a 2-core machine:

- ``sqlite_1``: the relay on core 0; wrk and the bridge on core 1.
- ``redis_1``: the relay on core 0; Redis, wrk and the bridge on core 1.
- ``redis_workers2``: two relay processes on cores 0 and 1; Redis, wrk and the
  bridge on core 1 too, so the load generator takes a share of the second
  relay's core (the figure is a floor for two dedicated cores).

Then the cost of one Redis round trip per batch, measured with redis-py on the
same Redis: a PING, and a pipelined batch of 64 XADDs of 600 bytes.

    .venv/bin/python -m bench.scaleout [--duration 10]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import CLIENT_CORE, body_600, write_bodies
from bench.throughput import Relay
from tests.support.processes import stop
from tests.support.redis import RedisServer, relay_config

BATCH = 64


def accepted_rate(figures: dict[str, Any]) -> float:
    """Webhooks answered 200 a second: wrk's rate less its share of other answers."""
    requests = float(figures["requests"]) or 1.0
    return float(figures["rps"]) * (1 - float(figures["non_2xx"]) / requests)


def measure(
    relay: Relay, bodies: Path, duration: int, redis: RedisServer | None = None
) -> dict[str, Any]:
    """Maximum rate, then half of it paced: ack p99 and end-to-end p99."""
    relay.run("warmup", bodies, 3)
    before = redis_work(redis) if redis else None
    top = relay.run("max", bodies, duration)
    after = redis_work(redis) if redis else None
    accepted = accepted_rate(top)
    half = relay.run("half", bodies, duration, accepted / 2)
    figures = {
        "accepted_rps": round(accepted),
        "answers_rps": top["rps"],
        "non_2xx_at_max": top["non_2xx"],
        "half_rate": half["rps"],
        "non_2xx_at_half": half["non_2xx"],
        "ack_p99_ms_at_half": half.get("p99_ms"),
        "e2e_p99_ms_at_half": half.get("e2e_p99_ms"),
        "delivered_at_half": half.get("delivered"),
    }
    if before is not None and after is not None:
        figures["redis_per_webhook"] = per_webhook(before, after, accepted * duration)
    return figures


def redis_work(server: RedisServer) -> dict[str, float]:
    """Redis's CPU seconds so far, and microseconds spent in each command."""
    client = server.client()
    cpu = client.info("cpu")
    work = {"cpu_s": float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])}
    for name, stats in client.info("commandstats").items():
        work[name.removeprefix("cmdstat_")] = float(stats["usec"])
    client.close()
    return work


def per_webhook(
    before: dict[str, float], after: dict[str, float], webhooks: float
) -> dict[str, Any]:
    """What Redis spent per webhook taken between two :func:`redis_work` readings."""
    cpu_us = (after["cpu_s"] - before["cpu_s"]) * 1e6 / webhooks
    commands = {
        name: round((after[name] - before.get(name, 0.0)) / webhooks, 1)
        for name in after
        if name != "cpu_s" and after[name] - before.get(name, 0.0) > 0
    }
    return {
        "cpu_us": round(cpu_us, 1),
        # One Redis thread's bound on every node together, were Redis given a core.
        "bound_webhooks_per_s": round(1e6 / cpu_us) if cpu_us else None,
        "command_us": dict(sorted(commands.items(), key=lambda item: -item[1])),
    }


def round_trips(server: RedisServer, samples: int = 500) -> dict[str, float]:
    """Milliseconds for one PING and for one pipelined batch of XADDs (medians)."""
    client = server.client()
    body = body_600()

    def timed(call: Any) -> float:
        times = []
        for _ in range(samples):
            started = time.perf_counter()
            call()
            times.append((time.perf_counter() - started) * 1000)
        return round(statistics.median(times), 3)

    def batch() -> None:
        pipe = client.pipeline(transaction=False)
        for _ in range(BATCH):
            pipe.xadd("bench:roundtrip", {"b": body}, maxlen=10_000, approximate=True)
        pipe.execute()

    figures = {"ping_ms": timed(client.ping), f"xadd_batch_of_{BATCH}_ms": timed(batch)}
    client.delete("bench:roundtrip")
    return figures


def on_redis(work: Path, workers: int, bodies: Path, duration: int) -> dict[str, Any]:
    """One configuration on a fresh Redis (pinned to the client core)."""
    server = RedisServer(work / "redis").start()
    assert server.proc is not None
    subprocess.run(
        ["taskset", "-pc", CLIENT_CORE, str(server.proc.pid)], check=True, capture_output=True
    )
    extra: tuple[str, ...] = ("--workers", str(workers)) if workers > 1 else ()
    relay = Relay(
        work / "relay",
        config=relay_config(server),
        cores="0,1" if workers > 1 else "0",
        extra=extra,
    )
    try:
        figures = measure(relay, bodies, duration, server)
        figures["redis_round_trip"] = round_trips(server)
        return figures
    finally:
        stop(relay.proc)
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--bodies", type=int, default=150_000)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="linerelay-scaleout-"))
    bodies = work / "bodies.tsv"
    write_bodies(bodies, args.bodies)
    results: dict[str, Any] = {}
    relay = Relay(work / "sqlite")
    try:
        results["sqlite_1"] = measure(relay, bodies, args.duration)
    finally:
        stop(relay.proc)
    print("one process, SQLite:", results["sqlite_1"], flush=True)
    results["redis_1"] = on_redis(work / "redis1", 1, bodies, args.duration)
    print("one process, Redis:", results["redis_1"], flush=True)
    results["redis_workers2"] = on_redis(work / "redis2", 2, bodies, args.duration)
    print("--workers 2, Redis:", results["redis_workers2"], flush=True)
    base = results["sqlite_1"]["accepted_rps"]
    summary = {
        "redis_1_vs_sqlite_1": round(results["redis_1"]["accepted_rps"] / base, 2),
        "redis_workers2_vs_sqlite_1": round(results["redis_workers2"]["accepted_rps"] / base, 2),
        "target": {"redis_workers2_vs_sqlite_1": ">= 1.6 (with the load generator on other cores)"},
    }
    print(json.dumps({"results": results, "summary": summary}, indent=1))


if __name__ == "__main__":
    main()
