"""Tiny misbehaving relays for the harness's tests, run as real processes.

``python targets.py slow`` answers every webhook 200 after 1.2 s;
``python targets.py blackhole`` answers 200 at once and holds bridge
WebSockets open (a ``hello``, then nothing), so every webhook is lost. Each
prints ``PORT`` on its first line once listening (plain HTTP).
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys

from hypercorn.asyncio import serve
from hypercorn.config import Config
from quart import Quart, request, websocket

SLOW_ANSWER_S = 1.2


def build(mode: str) -> Quart:
    app = Quart(__name__)

    @app.post("/webhook/<tenant>")
    async def webhook(tenant: str) -> tuple[str, int]:
        await request.get_data()
        if mode == "slow":
            await asyncio.sleep(SLOW_ANSWER_S)
        return "{}", 200

    @app.websocket("/bridge")
    async def bridge() -> None:
        hello = {"type": "hello", "protocol": 1, "tenant": "t", "window": 64}
        await websocket.send(json.dumps(hello))
        while True:
            await websocket.receive()

    return app


async def main(mode: str) -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    sock.set_inheritable(True)
    config = Config()
    config.bind = [f"fd://{sock.fileno()}"]
    config.accesslog = None
    print(sock.getsockname()[1], flush=True)
    await serve(build(mode), config)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
