"""Throughput and latency: the relay against bare Hypercorn and FastAPI + line-bot-sdk.

One run, side by side, on this machine: each server pinned to core 0 with
taskset, the load generators (wrk, and the acking bridge) on core 1. TLS 1.3,
keep-alive, 64 connections, a signed 600-byte body.

1. Maximum rate with wrk: the relay (verify + durable store + delivery to a
   connected, acking bridge), bare ASGI on Hypercorn, FastAPI +
   ``WebhookParser`` on uvicorn (verify + parse only).
2. The relay at fixed rates with bench/loadgen.py (open loop): ack p99 at half
   its maximum, answers over 1 s at 90 %, end-to-end p99 at 1,000/s.

    .venv/bin/python -m bench.throughput [--duration 10]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.common import (
    BIN,
    CLIENT_CORE,
    SECRET,
    SERVER_CORE,
    body_600,
    env_without_openssl_conf,
    free_port,
    pinned,
    signature,
    stop,
    wait_http,
)
from tls.pki import DevPKI


def wrk(url: str, body_file: Path, sig: str, duration: int) -> dict[str, float]:
    """Run wrk on the client core; returns requests/s and latency percentiles (ms)."""
    env = {**env_without_openssl_conf(), "BODY_FILE": str(body_file), "SIGNATURE": sig}
    out = subprocess.run(
        [
            "taskset",
            "-c",
            CLIENT_CORE,
            "wrk",
            "-t1",
            "-c64",
            f"-d{duration}s",
            "--latency",
            "-s",
            str(Path(__file__).with_name("post.lua")),
            url,
        ],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    figures = {"rps": rps}
    for pct in ("50", "99"):
        m = re.search(rf"\s{pct}%\s+([\d.]+)(us|ms|s)", out)
        if m:
            scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]
            figures[f"p{pct}_ms"] = round(float(m.group(1)) * scale, 2)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    figures["non_2xx"] = float(non2xx.group(1)) if non2xx else 0.0
    return figures


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=int, default=10)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="linerelay-bench-"))
    pki = DevPKI(work / "pki")
    pki.ensure()
    body = body_600()
    body_file = work / "body.json"
    body_file.write_bytes(body)
    sig = signature(body)
    results: dict[str, dict[str, float]] = {}
    print(f"body {len(body)} bytes; servers on core {SERVER_CORE}, load on core {CLIENT_CORE}")

    # -- the relay, with an acking bridge -----------------------------------
    state = work / "relay"
    port, admin = free_port(), free_port()
    relay = pinned(
        SERVER_CORE,
        [
            str(BIN / "linerelay"),
            "serve",
            "--state-dir",
            str(state),
            "--listen",
            f"127.0.0.1:{port}",
            "--admin-listen",
            f"127.0.0.1:{admin}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_http(f"http://127.0.0.1:{admin}/readyz")
    token = json.loads(
        subprocess.run(
            [
                str(BIN / "linerelay"),
                "tenant",
                "add",
                "bench",
                "--channel-secret",
                SECRET,
                "--json",
                "--state-dir",
                str(state),
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )["token"]
    ca = str(state / "pki" / "root.pem")
    bridge = pinned(
        CLIENT_CORE,
        [
            sys.executable,
            "-m",
            "bench.loadgen",
            "bridge",
            "--url",
            f"wss://127.0.0.1:{port}/bridge",
            "--ca",
            ca,
            "--token",
            token,
        ],
    )
    url = f"https://127.0.0.1:{port}/webhook/bench"
    try:
        wrk(url, body_file, sig, 3)  # warm up
        results["relay"] = wrk(url, body_file, sig, args.duration)
        relay_max = results["relay"]["rps"]
        print("relay (verify + store + deliver):", results["relay"])
        stop(bridge)
        rate_runs = {}
        for label, rate in (
            ("half_max", relay_max / 2),
            ("ninety_pct", relay_max * 0.9),
            ("e2e_1000", 1000.0),
        ):
            out = subprocess.run(
                [
                    "taskset",
                    "-c",
                    CLIENT_CORE,
                    sys.executable,
                    "-m",
                    "bench.loadgen",
                    "rate",
                    "--url",
                    url,
                    "--ca",
                    ca,
                    "--rate",
                    str(round(rate)),
                    "--duration",
                    str(args.duration),
                    "--bridge-url",
                    f"wss://127.0.0.1:{port}/bridge",
                    "--bridge-token",
                    token,
                ],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            rate_runs[label] = json.loads(out)
            print(f"relay at {label} ({round(rate)}/s):", rate_runs[label])
    finally:
        stop(bridge)
        stop(relay)

    # -- bare Hypercorn -------------------------------------------------------
    port = free_port()
    bare = pinned(
        SERVER_CORE,
        [
            str(BIN / "hypercorn"),
            "bench.peers:bare",
            "--bind",
            f"127.0.0.1:{port}",
            "--certfile",
            str(pki.chain),
            "--keyfile",
            str(pki.key),
            "--log-level",
            "warning",
        ],
        env=env_without_openssl_conf(),
    )
    try:
        wait_http(f"https://127.0.0.1:{port}/")
        wrk(f"https://127.0.0.1:{port}/webhook/bench", body_file, sig, 3)
        results["bare_hypercorn"] = wrk(
            f"https://127.0.0.1:{port}/webhook/bench", body_file, sig, args.duration
        )
        print("bare ASGI on Hypercorn:", results["bare_hypercorn"])
    finally:
        stop(bare)

    # -- FastAPI + line-bot-sdk on uvicorn -----------------------------------
    port = free_port()
    fast = pinned(
        SERVER_CORE,
        [
            str(BIN / "uvicorn"),
            "bench.peers:fastapi_app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--ssl-certfile",
            str(pki.chain),
            "--ssl-keyfile",
            str(pki.key),
            "--log-level",
            "warning",
            "--no-access-log",
        ],
        env=env_without_openssl_conf(),
    )
    try:
        wait_http(f"https://127.0.0.1:{port}/")
        wrk(f"https://127.0.0.1:{port}/webhook/bench", body_file, sig, 3)
        results["fastapi_linebot"] = wrk(
            f"https://127.0.0.1:{port}/webhook/bench", body_file, sig, args.duration
        )
        print("FastAPI + line-bot-sdk on uvicorn:", results["fastapi_linebot"])
    finally:
        stop(fast)

    summary = {
        "relay_rps": relay_max,
        "relay_vs_fastapi": round(relay_max / results["fastapi_linebot"]["rps"], 2),
        "relay_vs_bare_hypercorn": round(relay_max / results["bare_hypercorn"]["rps"], 2),
        "ack_p99_ms_at_half_max": rate_runs["half_max"]["ack_p99_ms"],
        "over_1s_at_90pct": rate_runs["ninety_pct"]["over_1s"],
        "e2e_p99_ms_at_1000": rate_runs["e2e_1000"].get("e2e_p99_ms"),
        "targets": {
            "relay_vs_fastapi": ">= 1.0",
            "relay_vs_bare_hypercorn": ">= 0.6",
            "ack_p99_ms_at_half_max": "< 50",
            "over_1s_at_90pct": "0",
            "e2e_p99_ms_at_1000": "< 100",
        },
    }
    print(json.dumps({"servers": results, "relay_rates": rate_runs, "summary": summary}, indent=1))


if __name__ == "__main__":
    main()
