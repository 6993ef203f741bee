"""The operator console's cost on the hot path: throughput and ack latency at a fixed
high load, with the console closed and with N consoles open and polling.

The relay runs pinned to core 0 (bench/throughput.py's ``Relay``), with an acking
protocol 2 bridge; wrk posts distinct signed 600-byte bodies on core 1, paced at
``--load`` of the maximum rate measured first, with the same pause for every run so
each offers the same load. An open console is what the console's script does in a
visible tab: the page once, then every ``--interval`` seconds the page's fragment;
half the consoles show the overview (every tenant, the histogram), half the loaded
tenant's page (its bridge and its 50 latest webhooks, which change all the time),
each with its own session cookie. The consoles run in one process on core 1 beside
wrk. Each run uses its own tenant.

    .venv/bin/python -m bench.console_cost [--duration 20] [--consoles 5 20] [--load 0.7]

Prints one JSON line per run and a summary: requests/s, ack p50/p99/max, and the
consoles' own requests and latencies.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.ackbridge import percentile
from bench.common import CLIENT_CORE, pinned, write_bodies
from bench.throughput import CONNECTIONS, Relay, wrk
from tests.support.processes import stop
from tls.pki import EmbeddedPKI


def pages(tenant: str) -> list[tuple[str, str]]:
    """The pages an open console may show, each with the fragment it polls
    (appliance/console/templates)."""
    return [("/", "/fragments/overview"), (f"/tenants/{tenant}", f"/fragments/tenants/{tenant}")]


async def console(
    admin: str,
    page: tuple[str, str],
    interval: float,
    stop_at: asyncio.Event,
    seen: list[float],
) -> tuple[int, int]:
    """One open console showing ``page`` until ``stop_at``: the page once, then its
    fragment each ``interval``; latencies (ms) go to ``seen``. Returns (requests, failures)."""
    requests = failures = 0
    path, fragment = page
    async with httpx.AsyncClient(base_url=admin, timeout=10) as client:
        await asyncio.sleep(random.uniform(0, interval))  # consoles opened at different times
        await client.get(path, headers={"Accept": "text/html"})
        while not stop_at.is_set():
            started = time.perf_counter()
            answer = await client.get(fragment, headers={"X-Console-Fragment": "1"})
            seen.append((time.perf_counter() - started) * 1000)
            requests += 1
            # 404 only until the run's tenant exists (its first second).
            failures += answer.status_code not in (200, 404)
            rest = interval - (time.perf_counter() - started)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop_at.wait(), max(0.0, rest))
    return requests, failures


async def poll(admin: str, tenant: str, consoles: int, interval: float) -> dict[str, Any]:
    """``consoles`` open consoles until SIGTERM; their figures."""
    stop_at = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop_at.set)
    print(json.dumps({"polling": consoles}), flush=True)
    seen: list[float] = []
    started = time.monotonic()
    shown = pages(tenant)
    counts = await asyncio.gather(
        *(console(admin, shown[i % 2], interval, stop_at, seen) for i in range(consoles))
    )
    elapsed = time.monotonic() - started
    return {
        "console_requests": sum(c[0] for c in counts),
        "console_failures": sum(c[1] for c in counts),
        "console_rps": round(sum(c[0] for c in counts) / elapsed, 1),
        "console_p50_ms": round(percentile(seen, 0.5), 1),
        "console_p99_ms": round(percentile(seen, 0.99), 1),
    }


def run(
    relay: Relay,
    tenant: str,
    bodies: Path,
    duration: int,
    delay_ms: float,
    consoles: int,
    interval: float,
) -> dict[str, Any]:
    """One paced run for ``tenant`` with ``consoles`` consoles polling (0: closed)."""
    pollers: subprocess.Popen[bytes] | None = None
    if consoles:
        pollers = pinned(
            CLIENT_CORE,
            [
                sys.executable,
                "-m",
                "bench.console_cost",
                "--poll",
                "--admin",
                relay.admin,
                "--tenant",
                tenant,
                "--consoles",
                str(consoles),
                "--interval",
                str(interval),
            ],
            stdout=subprocess.PIPE,
        )
        assert pollers.stdout is not None
        pollers.stdout.readline()  # polling
    bridge = relay.tenant_with_bridge(tenant)
    try:
        figures: dict[str, Any] = {"consoles": consoles}
        figures.update(wrk(relay.base, f"/webhook/{tenant}", bodies, duration, delay_ms))
    finally:
        time.sleep(2)  # the last deliveries
        bridge.terminate()
        out, _ = bridge.communicate(timeout=30)
        figures.update(json.loads(out.decode().strip().splitlines()[-1]))
        if pollers is not None:
            pollers.terminate()
            polled, _ = pollers.communicate(timeout=30)
            figures.update(json.loads(polled.decode().strip().splitlines()[-1]))
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.console_cost")
    parser.add_argument("--duration", type=int, default=20, help="seconds per run")
    parser.add_argument(
        "--consoles", type=int, nargs="+", default=[5, 20], help="open consoles per 'open' run"
    )
    parser.add_argument("--interval", type=float, default=2.0, help="a console's poll period")
    parser.add_argument("--load", type=float, default=0.7, help="fraction of the maximum rate")
    parser.add_argument("--bodies", type=int, default=150_000)
    parser.add_argument("--poll", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--admin", help=argparse.SUPPRESS)
    parser.add_argument("--tenant", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.poll:
        consoles = args.consoles[0]
        print(json.dumps(asyncio.run(poll(args.admin, args.tenant, consoles, args.interval))))
        return

    work = Path(tempfile.mkdtemp(prefix="linerelay-console-cost-"))
    EmbeddedPKI(work / "pki").ensure()
    bodies = work / "bodies.tsv"
    write_bodies(bodies, args.bodies)
    relay = Relay(work)
    try:
        relay.run("warmup", bodies, 3)
        top = relay.run("max", bodies, 10)["rps"]
        rate = top * args.load
        # wrk paces by pausing after each answer: find the pause for `rate` once, then
        # use that same pause for every run, so a slower relay shows as fewer req/s.
        naive = CONNECTIONS / rate * 1000
        trial = run(relay, "trial", bodies, 3, naive, 0, args.interval)
        delay = max(1.0, naive - (CONNECTIONS / trial["rps"] * 1000 - naive))
        print(json.dumps({"max_rps": top, "target_rps": round(rate), "delay_ms": round(delay, 1)}))
        # Each page's template is compiled at its first use: once per relay, not per console.
        for page in pages("trial"):
            for path in page:
                httpx.get(f"{relay.admin}{path}", timeout=10)
        plan = [0]
        for n in args.consoles:
            plan += [n, 0]
        results = []
        for i, consoles in enumerate(plan):
            figures = run(relay, f"run-{i}", bodies, args.duration, delay, consoles, args.interval)
            print(json.dumps(figures), flush=True)
            results.append(figures)
    finally:
        stop(relay.proc)
    # Each open run against the closed runs on either side of it: the machine drifts
    # over minutes (other work on it), which a mean of every closed run would hide.
    summary: dict[str, Any] = {}
    for i, r in enumerate(results):
        if r["consoles"]:
            before, after = results[i - 1], results[i + 1]
            rps = (before["rps"] + after["rps"]) / 2
            p99 = (before["p99_ms"] + after["p99_ms"]) / 2
            summary[f"{r['consoles']} consoles"] = {
                "closed_rps": round(rps),
                "open_rps": round(r["rps"]),
                "rps_open_vs_closed": round(r["rps"] / rps, 3),
                "closed_p99_ms": round(p99, 1),
                "open_p99_ms": r["p99_ms"],
                "console_rps": r["console_rps"],
                "console_p50_ms": r["console_p50_ms"],
                "console_p99_ms": r["console_p99_ms"],
            }
    print(json.dumps({"summary": summary}, indent=1))


if __name__ == "__main__":
    main()
