"""Webhook throughput through nginx versus straight to the relay (docs/reverse-proxy.md).

The servers share core 0 (taskset), as bench.throughput pins the relay:
**direct**, the relay terminates TLS itself; **fronted**, nginx (one worker,
deploy/nginx/linerelay.conf as tests/support/nginx.py renders it, access log
on) terminates TLS and proxies to the relay on a Unix socket, so nginx's work
comes out of the same core. wrk and the acking bridge run on core 1 (the
bridge connects through nginx when fronted). TLS 1.3, keep-alive, 64
connections, signed 600-byte bodies, each one different. The two setups
alternate, ``--runs`` times each, because the machine is shared and moves.

    .venv/bin/python -m bench.nginx [--runs 3] [--duration 10]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from pathlib import Path
from typing import Any

from bench.common import CLIENT_CORE, SERVER_CORE, write_bodies
from bench.throughput import Relay
from tests.support.nginx import Nginx, start_nginx
from tests.support.processes import stop
from tls import pki


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds the processes ``pids`` have used so far."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / ticks


def children(pid: int) -> list[int]:
    """The child processes of ``pid`` (nginx's workers)."""
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def fronted(work: Path) -> tuple[Relay, Nginx]:
    """The relay on a Unix socket, plain HTTP, behind nginx; both on the server core."""
    work.mkdir(parents=True)
    sock = work / "public.sock"
    relay = Relay(
        work,
        listen=f"unix:{sock}",
        config=f'public_tls = false\nlisten = "unix:{sock}"\ntrusted_proxies = ["unix"]\n',
    )
    certificate = pki.create(work / "pki", ["localhost", "127.0.0.1"])
    nginx = start_nginx(work / "nginx", certificate, sock, prefix=("taskset", "-c", SERVER_CORE))
    relay.base, relay.bridge_url, relay.ca = nginx.base_url, nginx.bridge_url, certificate.root
    return relay, nginx


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.nginx")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--bodies", type=int, default=150_000)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="linerelay-bench-nginx-"))
    bodies = work / "bodies.tsv"
    write_bodies(bodies, args.bodies)
    print(
        f"servers on core {SERVER_CORE}, wrk and bridge on core {CLIENT_CORE}; "
        f"{args.runs} alternating runs of {args.duration} s",
        flush=True,
    )
    (work / "direct").mkdir()
    direct = Relay(work / "direct")
    relay, nginx = fronted(work / "fronted")
    setups = {"direct": direct, "nginx": relay}
    # What each setup's core spends its time on: the relay, and nginx's workers.
    processes = {
        "direct": {"relay": [direct.proc.pid]},
        "nginx": {"relay": [relay.proc.pid], "nginx": [nginx.proc.pid, *children(nginx.proc.pid)]},
    }
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in setups}
    try:
        for name, setup in setups.items():
            setup.run(f"warmup-{name}", bodies, 3)
        for run in range(args.runs):
            for name, setup in setups.items():
                before = {role: cpu_seconds(pids) for role, pids in processes[name].items()}
                figures = setup.run(f"{name}-{run}", bodies, args.duration)
                for role, pids in processes[name].items():
                    # Per accepted webhook, in microseconds of the server core.
                    used = cpu_seconds(pids) - before[role]
                    figures[f"{role}_cpu_us_per_webhook"] = round(
                        used / (figures["rps"] * args.duration) * 1e6
                    )
                results[name].append(figures)
                print(f"run {run + 1} {name}:", json.dumps(figures), flush=True)
    finally:
        nginx.stop()
        stop(relay.proc)
        stop(direct.proc)
    medians = {
        name: {
            key: statistics.median(run[key] for run in runs)
            for key in ("rps", "p50_ms", "p99_ms", "e2e_p99_ms")
        }
        for name, runs in results.items()
    }
    summary = {
        "median": medians,
        "nginx_vs_direct": round(medians["nginx"]["rps"] / medians["direct"]["rps"], 2),
        "errors": {
            name: sum(run["non_2xx"] + run["timeouts"] for run in runs)
            for name, runs in results.items()
        },
    }
    print(json.dumps({"runs": results, "summary": summary}, indent=1))


if __name__ == "__main__":
    main()
