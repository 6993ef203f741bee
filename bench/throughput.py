"""Throughput and latency: the relay against bare Hypercorn and FastAPI + line-bot-sdk.

One run, side by side: each server pinned to core 0 with taskset, wrk (and
the acking bridge) on core 1. TLS 1.3, keep-alive, 64 connections, signed
600-byte bodies, every request a different body (the relay answers a repeated
body as a retry without storing it, so a fixed body would flatter it).

1. Maximum rate: the relay doing verify + durable store + delivery to a
   connected, acking bridge; bare ASGI on Hypercorn; FastAPI +
   ``WebhookParser`` on uvicorn (verify + parse only).
2. The relay paced with wrk's ``delay()`` at half its maximum (ack p99),
   at 90 % (answers over 1 s) and at 1,000/s (end-to-end p99, measured by the
   bridge from each frame's ``received_at``). Each paced run uses its own
   tenant so no body is a retry of an earlier run's.

With ``--store redis`` every relay here runs on the Redis store (a fresh
``redis-server``, AOF with ``appendfsync always``, pinned to the client core:
it shares that core with wrk and the bridge, which the figures then include).

The acking bridge speaks protocol 2 (one ack per batch); ``--bridge-protocol 1``
makes it speak protocol 1 (one ack per webhook). Either way, the maximum rate
is also measured once with the other protocol, on a fresh relay, for the
protocol 1 versus protocol 2 row.

    .venv/bin/python -m bench.throughput [--duration 10] [--bridge-protocol 1|2]
        [--store sqlite|redis]
"""

from __future__ import annotations

import argparse
import functools
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from appliance.state import StateDir
from bench.common import (
    BIN,
    CLIENT_CORE,
    SECRET,
    SERVER_CORE,
    env_without_openssl_conf,
    free_port,
    pinned,
    wait_http,
    write_bodies,
)
from tests.support.processes import stop
from tests.support.redis import RedisServer, relay_config
from tls.pki import EmbeddedPKI

CONNECTIONS = 64
LUA = Path(__file__).with_name("post.lua")


def wrk(base: str, path: str, bodies: Path, duration: int, delay_ms: float = 0) -> dict[str, float]:
    """wrk on the client core; ``delay_ms`` > 0 paces it. Returns requests/s and latency (ms)."""
    env = {**env_without_openssl_conf(), "BODIES": str(bodies), "PATH_TO_POST": path}
    if delay_ms > 0:
        env["DELAY_MS"] = str(round(delay_ms))
    out = subprocess.run(
        [
            "taskset",
            "-c",
            CLIENT_CORE,
            "wrk",
            "-t1",
            f"-c{CONNECTIONS}",
            f"-d{duration}s",
            "--timeout",
            "5s",
            "--latency",
            "-s",
            str(LUA),
            base,
        ],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    ).stdout
    figures = {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))}  # type: ignore[union-attr]
    figures["requests"] = float(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    for pct in ("50", "99"):
        m = re.search(rf"\s{pct}(?:\.000)?%\s+([\d.]+)(us|ms|s)\b", out)
        if m:
            scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]
            figures[f"p{pct}_ms"] = round(float(m.group(1)) * scale, 2)
    m = re.search(r"Latency\s+[\d.]+\w+\s+[\d.]+\w+\s+([\d.]+)(us|ms|s)", out)
    if m:
        figures["max_ms"] = round(
            float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)], 2
        )
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    figures["non_2xx"] = float(errors.group(1)) if errors else 0.0
    timeouts = re.search(r"timeout (\d+)", out)
    figures["timeouts"] = float(timeouts.group(1)) if timeouts else 0.0
    return figures


@functools.cache
def body_count(bodies: Path) -> int:
    """How many distinct bodies the file ``bodies`` holds (one a line)."""
    with bodies.open("rb") as fh:
        return sum(1 for _ in fh)


class Relay:
    """A relay process on the server core, with tenants and acking bridges on demand.

    By default it serves TLS itself on a loopback port; with ``listen`` and
    ``config`` it may instead sit behind a proxy, whose URLs and root then
    replace :attr:`base`, :attr:`bridge_url` and :attr:`ca` (bench/nginx.py).
    """

    def __init__(
        self,
        work: Path,
        listen: str | None = None,
        config: str | None = None,
        bridge_protocol: int = 2,
        cores: str = SERVER_CORE,
        extra: tuple[str, ...] = (),
    ) -> None:
        """``bridge_protocol``: what the acking bridges ask for (``--protocol`` of bench.ackbridge);
        ``cores``: where the relay runs (taskset's list); ``extra``: more ``serve`` arguments."""
        self.bridge_protocol = bridge_protocol
        self.state = StateDir(work / "relay")
        self.port, admin = free_port(), free_port()
        args = [
            str(BIN / "linerelay"),
            "serve",
            "--state-dir",
            str(self.state.path),
            "--listen",
            listen or f"127.0.0.1:{self.port}",
            "--admin-listen",
            f"127.0.0.1:{admin}",
            *extra,
        ]
        self.config_file: Path | None = None
        if config is not None:
            self.config_file = work / "relay.toml"
            work.mkdir(parents=True, exist_ok=True)
            self.config_file.write_text(config)
            args += ["--config", str(self.config_file)]
        self.proc = pinned(cores, args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_http(f"http://127.0.0.1:{admin}/readyz")
        self.admin = f"http://127.0.0.1:{admin}"
        self.base = f"https://127.0.0.1:{self.port}"
        self.bridge_url = f"wss://127.0.0.1:{self.port}/bridge"
        self.ca = EmbeddedPKI(self.state.pki).root

    def tenant_with_bridge(self, tenant: str) -> subprocess.Popen[bytes]:
        token = json.loads(
            subprocess.run(
                [
                    str(BIN / "linerelay"),
                    "tenant",
                    "add",
                    tenant,
                    "--channel-secret",
                    SECRET,
                    "--json",
                    "--state-dir",
                    str(self.state.path),
                    *(["--config", str(self.config_file)] if self.config_file else []),
                ],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        )["token"]
        bridge = pinned(
            CLIENT_CORE,
            [
                sys.executable,
                "-m",
                "bench.ackbridge",
                "--url",
                self.bridge_url,
                "--ca",
                str(self.ca),
                "--token",
                token,
                "--protocol",
                str(self.bridge_protocol),
            ],
            stdout=subprocess.PIPE,
        )
        assert bridge.stdout is not None
        bridge.stdout.readline()  # connected
        return bridge

    def run(self, tenant: str, bodies: Path, duration: int, rate: float = 0) -> dict[str, Any]:
        """Load tenant ``tenant`` (flat out, or paced at ``rate``) with an acking bridge."""
        bridge = self.tenant_with_bridge(tenant)
        delay = 0.0
        if rate:
            # wrk paces by pausing after each answer, so the rate reached is
            # connections / (pause + latency): measure the latency at the
            # naive pause once, then take it off.
            naive = CONNECTIONS / rate * 1000
            trial = wrk(self.base, f"/webhook/{tenant}", bodies, 3, naive)
            latency = CONNECTIONS / trial["rps"] * 1000 - naive
            delay = max(1.0, naive - latency)
        figures: dict[str, Any] = wrk(self.base, f"/webhook/{tenant}", bodies, duration, delay)
        if figures["requests"] > body_count(bodies):
            # wrk starts over at the first body: the rest were retries, answered
            # without a write, and the figure would flatter the relay.
            raise SystemExit(
                f"{figures['requests']:.0f} requests but only {body_count(bodies)} distinct bodies: "
                "run again with a larger --bodies"
            )
        figures["rate_asked"] = rate or None
        time.sleep(2)  # let the last deliveries arrive
        bridge.terminate()
        out, _ = bridge.communicate(timeout=30)
        figures.update(json.loads(out.decode().strip().splitlines()[-1]))
        return figures


def hypercorn_argv(app: str, port: int, pki: EmbeddedPKI) -> list[str]:
    """Hypercorn serving ``app`` with TLS on ``port``."""
    return [
        str(BIN / "hypercorn"),
        app,
        "--bind",
        f"127.0.0.1:{port}",
        "--certfile",
        str(pki.chain),
        "--keyfile",
        str(pki.key),
        "--log-level",
        "warning",
    ]


def uvicorn_argv(app: str, port: int, pki: EmbeddedPKI, loop: str, http: str) -> list[str]:
    """uvicorn serving ``app`` with TLS on ``port``, on event loop ``loop`` and HTTP stack ``http``."""
    return [
        str(BIN / "uvicorn"),
        app,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--ssl-certfile",
        str(pki.chain),
        "--ssl-keyfile",
        str(pki.key),
        "--loop",
        loop,
        "--http",
        http,
        "--log-level",
        "warning",
        "--no-access-log",
    ]


def peer(argv: list[str], base: str, bodies: Path, duration: int) -> dict[str, float]:
    proc = pinned(SERVER_CORE, argv, env=env_without_openssl_conf())
    try:
        wait_http(f"{base}/")
        wrk(base, "/webhook/bench", bodies, 3)
        return wrk(base, "/webhook/bench", bodies, duration)
    finally:
        stop(proc)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument(
        "--bodies",
        type=int,
        help="distinct signed bodies (default: 15,000 a second of --duration; a run "
        "that makes more requests than this stops, as its figure would count retries)",
    )
    parser.add_argument(
        "--bridge-protocol",
        type=int,
        choices=(1, 2),
        default=2,
        help="the protocol the acking bridge asks for (1 to measure protocol 1)",
    )
    parser.add_argument(
        "--store",
        choices=("sqlite", "redis"),
        default="sqlite",
        help="the relays' store (redis: a redis-server of its own on the client core)",
    )
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="linerelay-bench-"))
    pki = EmbeddedPKI(work / "pki")
    pki.ensure()
    bodies = work / "bodies.tsv"
    args.bodies = args.bodies or 15_000 * args.duration
    write_bodies(bodies, args.bodies)
    print(
        f"{args.bodies} signed 600-byte bodies; servers on core {SERVER_CORE}, "
        f"wrk and bridge (protocol {args.bridge_protocol}) on core {CLIENT_CORE}",
        flush=True,
    )
    results: dict[str, Any] = {}
    config = None
    redis_server: RedisServer | None = None
    if args.store == "redis":
        redis_server = RedisServer(work / "redis").start()
        assert redis_server.proc is not None
        subprocess.run(
            ["taskset", "-pc", CLIENT_CORE, str(redis_server.proc.pid)],
            check=True,
            capture_output=True,
        )
        config = relay_config(redis_server)
        print(f"store: Redis at {redis_server.url} on core {CLIENT_CORE}", flush=True)

    relay = Relay(work, config=config, bridge_protocol=args.bridge_protocol)
    try:
        relay.run("warmup", bodies, 3)
        results["relay"] = relay.run("max", bodies, args.duration)
        print("relay (verify + store + deliver):", results["relay"], flush=True)
        top = results["relay"]["rps"]
        for label, rate in (("half_max", top / 2), ("ninety_pct", top * 0.9), ("at_1000", 1000.0)):
            results[f"relay_{label}"] = relay.run(
                label.replace("_", "-"), bodies, args.duration, rate
            )
            print(
                f"relay paced at {label} ({round(rate)}/s):", results[f"relay_{label}"], flush=True
            )
    finally:
        stop(relay.proc)
    other = 3 - args.bridge_protocol
    if redis_server is not None:
        redis_server.client().flushall()  # the next relay adds the same tenants
    relay = Relay(work / f"p{other}", config=config, bridge_protocol=other)
    try:
        relay.run("warmup", bodies, 3)
        results[f"relay_protocol{other}"] = relay.run("max", bodies, args.duration)
        print(f"relay, bridge on protocol {other}:", results[f"relay_protocol{other}"], flush=True)
    finally:
        stop(relay.proc)
    results[f"relay_protocol{args.bridge_protocol}"] = results["relay"]
    if redis_server is not None:
        redis_server.stop()

    port = free_port()
    results["bare_hypercorn"] = peer(
        hypercorn_argv("bench.peers:bare", port, pki),
        f"https://127.0.0.1:{port}",
        bodies,
        args.duration,
    )
    print("bare ASGI on Hypercorn:", results["bare_hypercorn"], flush=True)
    # FastAPI on uvicorn twice: with asyncio and h11 (uvicorn's pure-Python
    # stack, as `pip install fastapi uvicorn` gives), and with uvloop and
    # httptools (as `pip install "fastapi[standard]"` gives).
    for name, loop, http in (
        ("fastapi_linebot", "asyncio", "h11"),
        ("fastapi_linebot_uvloop", "uvloop", "httptools"),
    ):
        port = free_port()
        results[name] = peer(
            uvicorn_argv("bench.peers:fastapi_app", port, pki, loop, http),
            f"https://127.0.0.1:{port}",
            bodies,
            args.duration,
        )
        print(f"FastAPI + line-bot-sdk on uvicorn ({loop}, {http}):", results[name], flush=True)

    summary = {
        "relay_rps": top,
        "relay_vs_fastapi": round(top / results["fastapi_linebot"]["rps"], 2),
        "relay_vs_fastapi_uvloop": round(top / results["fastapi_linebot_uvloop"]["rps"], 2),
        "relay_vs_bare_hypercorn": round(top / results["bare_hypercorn"]["rps"], 2),
        "protocol2_vs_protocol1": round(
            results["relay_protocol2"]["rps"] / results["relay_protocol1"]["rps"], 2
        ),
        "rate_reached": {
            k: results[f"relay_{k}"]["rps"] for k in ("half_max", "ninety_pct", "at_1000")
        },
        "ack_p99_ms_at_half_max": results["relay_half_max"].get("p99_ms"),
        "over_1s_at_90pct": "0"
        if results["relay_ninety_pct"].get("max_ms", 0) <= 1000
        else f">0 (max {results['relay_ninety_pct'].get('max_ms')} ms)",
        "e2e_p99_ms_at_1000": results["relay_at_1000"].get("e2e_p99_ms"),
        "targets": {
            "relay_vs_fastapi": ">= 1.0",
            "relay_vs_bare_hypercorn": ">= 0.7",
            "ack_p99_ms_at_half_max": "< 50",
            "over_1s_at_90pct": "0",
            "e2e_p99_ms_at_1000": "< 100",
        },
    }
    print(json.dumps({"results": results, "summary": summary}, indent=1))


if __name__ == "__main__":
    main()
