"""What the Redis store's periodic scripts cost Redis as tenants grow.

Every relay process on Redis runs two scripts over every stored tenant: the
queue heads and depths every few seconds (``heads``), and the expiry sweep
(``expire``) every ``min(30 s, max_unacked_age / 4)``. A Lua script holds
Redis's one thread while it runs, so its time is latency added to every other
client's commands, and its share of Redis's time grows with the number of
relay processes. This measures both scripts on a fresh ``redis-server`` (AOF,
``appendfsync always``) holding N tenants with one queued webhook each,
written through the store itself, and prints milliseconds per call (median of
repeated calls, Redis's own ``INFO commandstats`` time).

    .venv/bin/python -m bench.redis_housekeeping [--tenants 1000 10000 30000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from appliance.store.redis import RedisStore
from appliance.store.redis_lua import SCRIPTS
from bench.common import body_600
from tests.support.redis import RedisServer

CALLS = 9


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


def script_ms(server: RedisServer, name: str, *argv: str | int) -> dict[str, float]:
    """Median wall time of ``name`` over :data:`CALLS` calls, and Redis's own time per call."""
    client = server.client()
    sha = SCRIPTS[name].sha
    client.config_resetstat()
    times = []
    for _ in range(CALLS):
        started = time.perf_counter()
        client.evalsha(sha, 0, *argv)
        times.append((time.perf_counter() - started) * 1000)
    stats = client.info("commandstats").get("cmdstat_evalsha", {})
    client.close()
    return {
        "wall_ms": round(statistics.median(times), 2),
        "redis_ms": round(float(stats.get("usec_per_call", 0)) / 1000, 2),
    }


async def measure(work: Path, tenants: int) -> dict[str, Any]:
    """Both scripts with ``tenants`` tenants stored."""
    server = RedisServer(work / f"redis-{tenants}").start()
    store = RedisStore(server.url)
    try:
        await store.open()
        await fill(store, tenants)
        prefix = store.prefix
        # Nothing old enough to expire: the sweep's steady-state cost, a walk over tenants.
        return {
            "tenants": tenants,
            "heads": script_ms(server, "heads", prefix),
            "expire": script_ms(server, "expire", prefix, int(time.time() * 1000), 0, store.name),
        }
    finally:
        await store.close()
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tenants", type=int, nargs="+", default=[1000, 10_000, 30_000])
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="linerelay-redis-housekeeping-"))
    for tenants in args.tenants:
        print(json.dumps(asyncio.run(measure(work, tenants))), flush=True)


if __name__ == "__main__":
    main()
