"""1 MiB webhooks against the relay's TLS read buffer sizes (``tls_read_buffer``).

A smaller read buffer saves memory per idle TLS connection (appliance/tuning.py)
and costs a large body more socket reads, one event-loop turn each. This
measures that cost where it is largest: signed bodies of exactly 1 MiB (the
default max_body_bytes), each one different, posted over TLS 1.3 keep-alive
connections to a relay with an acking bridge, for each buffer size in turn.
The relay is pinned to core 0; the posting client and the bridge to core 1.
For each size: the rate reached, answer latency (request written → answer
read), and the relay's CPU time per webhook. ``--rounds`` repeats the sizes,
in reverse order every other round, so drift on a shared machine shows.

    .venv/bin/python -m bench.large_body [--sizes 1024 2048 4096 16384 0] [--duration 15]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.ackbridge import percentile
from bench.common import CLIENT_CORE, signature, text_webhook
from bench.throughput import Relay
from tests.support.processes import stop

MIB = 1024 * 1024
#: Width of the counter that makes each body different.
MARKER = 12


def base_body(size: int = MIB) -> tuple[bytes, int]:
    """A LINE text-message webhook of exactly ``size`` bytes, and where its counter goes."""
    pad = size - len(json.dumps(text_webhook("#" * MARKER)).encode())
    raw = json.dumps(text_webhook("#" * MARKER + "x" * pad)).encode()
    assert len(raw) == size
    return raw, raw.index(b"#" * MARKER)


async def post_for(
    port: int, ca: str, tenant: str, seconds: float, connections: int
) -> dict[str, Any]:
    """Post distinct signed 1 MiB bodies on ``connections`` connections for ``seconds``."""
    template, at = base_body()
    counter = itertools.count()
    context = ssl.create_default_context(cafile=ca)
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    deadline = time.monotonic() + seconds

    async def worker() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
        body = bytearray(template)
        while time.monotonic() < deadline:
            body[at : at + MARKER] = b"%012d" % next(counter)
            head = (
                f"POST /webhook/{tenant} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                "Content-Type: application/json\r\n"
                f"X-Line-Signature: {signature(bytes(body))}\r\n"
                f"Content-Length: {len(body)}\r\n\r\n"
            ).encode()
            started = time.perf_counter()
            writer.write(head)
            writer.write(body)
            await writer.drain()
            answer = await reader.readuntil(b"\r\n\r\n")
            latencies.append((time.perf_counter() - started) * 1000)
            status = int(answer.split(b" ", 2)[1])
            statuses[status] = statuses.get(status, 0) + 1
            for line in answer.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    await reader.readexactly(int(line.split(b":")[1]))
        writer.close()

    began = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(connections)))
    elapsed = time.monotonic() - began
    return {
        "posted": len(latencies),
        "statuses": statuses,
        "per_s": round(len(latencies) / elapsed, 1),
        "p50_ms": round(percentile(latencies, 0.5), 1),
        "p99_ms": round(percentile(latencies, 0.99), 1),
        "max_ms": round(max(latencies, default=0.0), 1),
    }


def client_main(argv: list[str]) -> None:
    """The posting client, as a process of its own on the client core."""
    port, ca, tenant, seconds, connections = argv
    result = asyncio.run(post_for(int(port), ca, tenant, float(seconds), int(connections)))
    print(json.dumps(result), flush=True)


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def post(relay: Relay, tenant: str, seconds: float, connections: int) -> dict[str, Any]:
    """Run the posting client against ``relay`` on the client core."""
    out = subprocess.run(
        [
            "taskset",
            "-c",
            CLIENT_CORE,
            sys.executable,
            "-m",
            "bench.large_body",
            "--client",
            str(relay.port),
            str(relay.ca),
            tenant,
            str(seconds),
            str(connections),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    figures: dict[str, Any] = json.loads(out)
    return figures


def one_size(work: Path, size: int, duration: float, connections: int) -> dict[str, Any]:
    """Start a relay with ``tls_read_buffer = size``, warm it up, and measure it."""
    place = work / f"relay-{size}-{time.monotonic_ns()}"
    place.mkdir()
    relay = Relay(place, config=f"tls_read_buffer = {size}\n")
    try:
        tenant = f"t{size}"
        bridge = relay.tenant_with_bridge(tenant)
        try:
            post(relay, tenant, 3, connections)  # warm-up
            cpu = cpu_seconds(relay.proc.pid)
            figures = post(relay, tenant, duration, connections)
            cpu = cpu_seconds(relay.proc.pid) - cpu
        finally:
            bridge.terminate()
            bridge.communicate(timeout=60)
        figures["relay_cpu_ms_per_webhook"] = round(cpu * 1000 / max(1, figures["posted"]), 2)
        return {"tls_read_buffer": size, **figures}
    finally:
        stop(relay.proc)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.large_body")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048, 4096, 16384, 0])
    parser.add_argument("--duration", type=float, default=15.0)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="linerelay-large-"))
    runs = []
    for round_ in range(args.rounds):
        for size in args.sizes if round_ % 2 == 0 else reversed(args.sizes):
            result = one_size(work, size, args.duration, args.connections)
            result["round"] = round_ + 1
            print(json.dumps(result), flush=True)
            runs.append(result)
    print(json.dumps({"runs": runs}, indent=1))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--client":
        client_main(sys.argv[2:])
    else:
        main()
