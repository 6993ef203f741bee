"""Relay memory per idle, authenticated TLS bridge.

Starts the relay (pinned to core 0) with N tenants, opens N bridge WebSockets
over TLS from a client process on core 1, waits until they are idle, and reads
the relay's resident memory before and after. Target: at most 50 KB each.

    .venv/bin/python -m bench.idle_bridges [--bridges 2000] [--tls-read-buffer BYTES]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import resource
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import websockets

from appliance.state import StateDir
from appliance.tenants import TenantRegistry
from bench.common import BIN, CLIENT_CORE, SERVER_CORE, free_port, pinned, rss_kb, wait_http
from tests.support.processes import stop
from tls.pki import EmbeddedPKI


async def hold(url: str, ca: str, tokens: list[str], seconds: float) -> int:
    """Open one bridge per token, wait for each hello, hold them ``seconds``; returns how many."""
    context = ssl.create_default_context(cafile=ca)
    sockets = []
    for i in range(0, len(tokens), 50):  # in waves, as a fleet reconnecting would
        batch = tokens[i : i + 50]
        opened = await asyncio.gather(
            *(
                websockets.connect(
                    url,
                    ssl=context,
                    additional_headers={"Authorization": f"Bearer {t}"},
                    ping_interval=None,
                )
                for t in batch
            )
        )
        for ws in opened:
            hello = json.loads(await ws.recv())
            assert hello["type"] == "hello"
        sockets.extend(opened)
    print(json.dumps({"connected": len(sockets)}), flush=True)
    await asyncio.sleep(seconds)
    await asyncio.gather(*(ws.close() for ws in sockets))
    return len(sockets)


def client_main() -> None:
    url, ca, tokens_file, seconds = sys.argv[2:6]
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    tokens = json.loads(Path(tokens_file).read_text())
    asyncio.run(hold(url, ca, tokens, float(seconds)))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bridges", type=int, default=2000)
    parser.add_argument(
        "--tls-read-buffer", type=int, default=None, help="the relay's tls_read_buffer"
    )
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="linerelay-idle-"))
    state = StateDir(work / "state")
    registry = TenantRegistry(state.tenants)
    tokens = [registry.add(f"t{i}", f"secret{i}") for i in range(args.bridges + 20)]
    registry.close()
    (work / "tokens.json").write_text(json.dumps(tokens[20:]))
    (work / "warm.json").write_text(json.dumps(tokens[:20]))
    # Every bridge comes from 127.0.0.1: lift the per-address caps above the fleet.
    config = (
        f"max_connections_per_address = {args.bridges + 100}\n"
        "connection_rate_per_address = 100000.0\n"
    )
    if args.tls_read_buffer is not None:
        config += f"tls_read_buffer = {args.tls_read_buffer}\n"
    (work / "relay.toml").write_text(config)
    port, admin = free_port(), free_port()
    relay = pinned(
        SERVER_CORE,
        [
            str(BIN / "linerelay"),
            "serve",
            "--state-dir",
            str(state.path),
            "--listen",
            f"127.0.0.1:{port}",
            "--admin-listen",
            f"127.0.0.1:{admin}",
            "--config",
            str(work / "relay.toml"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url, ca = f"wss://127.0.0.1:{port}/bridge", str(EmbeddedPKI(state.pki).root)
    try:
        wait_http(f"http://127.0.0.1:{admin}/readyz")
        # Warm up: a few bridges come and go, so lazily built state is not counted.
        subprocess.run(
            [
                "taskset",
                "-c",
                CLIENT_CORE,
                sys.executable,
                "-m",
                "bench.idle_bridges",
                "--client",
                url,
                ca,
                str(work / "warm.json"),
                "1",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        time.sleep(2)
        before = rss_kb(relay.pid)
        client = pinned(
            CLIENT_CORE,
            [
                sys.executable,
                "-m",
                "bench.idle_bridges",
                "--client",
                url,
                ca,
                str(work / "tokens.json"),
                "20",
            ],
            stdout=subprocess.PIPE,
        )
        assert client.stdout is not None
        line = client.stdout.readline()
        started = time.monotonic()
        time.sleep(8)  # idle: past handshakes, first pings
        after = rss_kb(relay.pid)
        connected = json.loads(line)["connected"]
        client.wait(60)
        gc.collect()
        per_bridge = (after - before) * 1024 / connected / 1000
        print(
            json.dumps(
                {
                    "bridges": connected,
                    "relay_rss_before_kib": before,
                    "relay_rss_with_bridges_kib": after,
                    "tls_read_buffer": args.tls_read_buffer,
                    "kb_per_idle_bridge": round(per_bridge, 1),
                    "target_kb": 50,
                    "held_idle_s": round(time.monotonic() - started, 1),
                },
                indent=1,
            )
        )
    finally:
        stop(relay)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--client":
        client_main()
    else:
        main()
