"""What the Redis store's periodic scripts cost Redis as tenants grow.

Every relay process on Redis walks every stored tenant with two scripts: the
queue heads and depths every ``REFRESH_INTERVAL`` (``heads``), and the expiry
sweep every ``min(30 s, max_unacked_age / 4)`` (``expire``). A Lua script holds
Redis's one thread while it runs, so the longest single call is latency added
to every other client's commands (a webhook's commit, on every node), and the
total per pass, times the relay processes, is the share of Redis's time they
take. Both walks go a slice of the tenants per call (``HEADS_SLICE``,
``EXPIRE_SLICE``, and at most ``EXPIRE_BUDGET`` webhooks expired per call), so
the two figures differ.

This measures them on a fresh ``redis-server`` (AOF, ``appendfsync always``)
holding N tenants with one queued 600-byte webhook each, written through the
store itself, with Redis's own time per script call (``SLOWLOG``, every call
logged):

- ``whole``: one call over every tenant (the scripts as they were before they
  were sliced: a COUNT larger than the set);
- ``heads``: a refresh, as the store does it (``wall_ms``: the whole pass as the
  process sees it, its parsing of the replies included);
- ``expire``: an expiry sweep with nothing old enough (the steady state: a walk);
- ``expire_all``: a sweep that expires every queued webhook (a mass expiry);
- ``heads_idle``: a refresh once every queue is empty (as while bridges keep up).

Each figure: ``calls`` per pass, the ``longest_ms`` single call over every pass,
and the median over passes of ``pass_ms`` (Redis's time, summed), ``wall_ms``
and ``cpu_ms`` (the relay process's CPU time: its event loop's share).

    .venv/bin/python -m bench.redis_housekeeping [--tenants 1000 10000 30000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import redis

from appliance.store import redis as redis_store
from appliance.store.redis import RedisStore
from appliance.store.redis_lua import SCRIPTS
from bench.common import body_600
from tests.support.redis import RedisServer

PASSES = 9


def slow_calls(client: redis.Redis, script: str) -> list[float]:
    """Redis's own time (ms) of each call of ``script`` since the last SLOWLOG RESET."""
    sha = SCRIPTS[script].sha.encode()
    entries: list[dict[str, Any]] = client.slowlog_get(1_000_000)
    calls = []
    for entry in entries:
        command = entry["command"]
        if sha in (command if isinstance(command, bytes) else command.encode()):
            calls.append(entry["duration"] / 1000)
    return calls


async def passes(
    client: redis.Redis, script: str, run: Callable[[], Awaitable[object]], count: int
) -> dict[str, float]:
    """``run`` (one full pass) ``count`` times: calls, longest call, Redis's time, and
    the pass's wall time and this process's CPU time (the relay's side)."""
    longest, totals, walls, cpus, calls = 0.0, [], [], [], 0
    for _ in range(count):
        client.slowlog_reset()
        started, cpu = time.perf_counter(), time.process_time()
        await run()
        walls.append((time.perf_counter() - started) * 1000)
        cpus.append((time.process_time() - cpu) * 1000)
        durations = slow_calls(client, script)
        calls = len(durations)
        longest = max(longest, *durations)
        totals.append(sum(durations))
    return {
        "calls": calls,
        "longest_ms": round(longest, 2),
        "pass_ms": round(statistics.median(totals), 2),
        "wall_ms": round(statistics.median(walls), 2),
        "cpu_ms": round(statistics.median(cpus), 2),
    }


async def fill(store: RedisStore, tenants: int) -> None:
    """One queued webhook for each of ``tenants`` tenants, through the store."""
    now = int(time.time() * 1000)
    for start in range(0, tenants, 500):
        await asyncio.gather(
            *(
                store.append(f"t{n:06d}", body_600(str(n)), "sig", now)
                for n in range(start, min(tenants, start + 500))
            )
        )


async def measure(work: Path, tenants: int, count: int) -> dict[str, Any]:
    """Every figure with ``tenants`` tenants stored."""
    server = RedisServer(work / f"redis-{tenants}").start()
    client = server.client()
    client.config_set("slowlog-log-slower-than", 0)
    client.config_set("slowlog-max-len", 1_000_000)
    # Only the passes measured here: no background refresh in between.
    redis_store.REFRESH_INTERVAL = 86_400.0
    store = RedisStore(server.url)
    try:
        await store.open()
        await fill(store, tenants)
        prefix, name = store.prefix, store.name
        everything = tenants * 10  # a COUNT larger than the set: one call

        async def whole_heads() -> None:
            client.evalsha(SCRIPTS["heads"].sha, 0, prefix, 0, everything)

        async def whole_expire() -> None:
            now = int(time.time() * 1000)
            client.evalsha(
                SCRIPTS["expire"].sha, 0, prefix, now, 0, name, 0, everything, everything
            )

        async def expire_all() -> None:
            expired = await store.expire(int(time.time() * 1000) + 1)
            assert len(expired) == tenants, len(expired)

        whole = {
            "heads": await passes(client, "heads", whole_heads, count),
            "expire": await passes(client, "expire", whole_expire, count),
        }
        for figures in whole.values():
            del figures["wall_ms"], figures["cpu_ms"]  # a synchronous client's: not the store's
        return {
            "tenants": tenants,
            "slices": {
                "heads": redis_store.HEADS_SLICE,
                "expire": redis_store.EXPIRE_SLICE,
                "expire_budget": redis_store.EXPIRE_BUDGET,
            },
            "whole": whole,
            "heads": await passes(client, "heads", store._refresh, count),
            "expire": await passes(client, "expire", lambda: store.expire(0), count),
            "expire_all": await passes(client, "expire", expire_all, 1),
            "heads_idle": await passes(client, "heads", store._refresh, count),
        }
    finally:
        await store.close()
        client.close()
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tenants", type=int, nargs="+", default=[1000, 10_000, 30_000])
    parser.add_argument("--passes", type=int, default=PASSES)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="linerelay-redis-housekeeping-"))
    for tenants in args.tenants:
        print(json.dumps(asyncio.run(measure(work, tenants, args.passes))), flush=True)


if __name__ == "__main__":
    main()
