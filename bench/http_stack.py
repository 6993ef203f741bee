"""The HTTP/1.1 stack alone: one bare ASGI app on Hypercorn (h11) and on appliance/http1.py.

Why the public listener serves HTTP/1.1 itself (appliance/http1.py): the
same app (``bench.peers.bare``: read the body, answer ``{}``), TLS 1.3,
one core each (taskset core 0, wrk on core 1), keep-alive, 64 connections,
signed 600-byte bodies; uvicorn (uvloop + httptools) beside them for scale.

    .venv/bin/python -m bench.http_stack [--duration 8]
"""

from __future__ import annotations

import argparse
import asyncio
import ssl
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from appliance.http1 import HTTP1Connection, HTTP1Settings
from bench.common import SERVER_CORE, free_port, write_bodies
from bench.peers import bare
from bench.throughput import hypercorn_argv, peer, uvicorn_argv
from tls.pki import EmbeddedPKI


async def serve_http1(port: int, chain: str, key: str) -> None:
    """``bench.peers.bare`` behind appliance/http1.py on a TLS listener, until killed."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(chain, key)
    settings = HTTP1Settings()
    server = await asyncio.get_running_loop().create_server(
        lambda: HTTP1Connection(bare, settings, {}, lambda: None),
        "127.0.0.1",
        port,
        ssl=context,
        backlog=1024,
    )
    await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=int, default=8)
    parser.add_argument(
        "--serve", nargs=3, metavar=("PORT", "CHAIN", "KEY"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.serve:
        port, chain, key = args.serve
        asyncio.run(serve_http1(int(port), chain, key))
        return
    work = Path(tempfile.mkdtemp(prefix="linerelay-bench-"))
    pki = EmbeddedPKI(work / "pki")
    pki.ensure()
    bodies = work / "bodies.tsv"
    write_bodies(bodies, 60_000)
    app = "bench.peers:bare"
    stacks: dict[str, Callable[[int], list[str]]] = {
        "Hypercorn (h11)": lambda port: hypercorn_argv(app, port, pki),
        "appliance/http1.py (httptools)": lambda port: [
            sys.executable,
            *("-m", "bench.http_stack", "--serve", str(port), str(pki.chain), str(pki.key)),
        ],
        "uvicorn (uvloop, httptools)": lambda port: uvicorn_argv(
            app, port, pki, "uvloop", "httptools"
        ),
    }
    print(f"bare ASGI app, TLS 1.3, 64 connections, server on core {SERVER_CORE}", flush=True)
    for name, argv in stacks.items():
        port = free_port()
        figures = peer(argv(port), f"https://127.0.0.1:{port}", bodies, args.duration)
        print(f"{name}: {figures}", flush=True)


if __name__ == "__main__":
    main()
