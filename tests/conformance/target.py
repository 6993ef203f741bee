"""A deliberately configurable webhook server for the conformance suite's own tests.

Run as a script: Hypercorn serving a tiny ASGI app that answers like the relay
(PROTOCOL.md §1), with one fault switched on by the command line:

  --tls stock     Hypercorn's own SSLContext (TLS 1.2 allowed)
  --tls modern    TLS 1.3 only
  --tls 3des      TLS 1.2 with 3DES suites added (where OpenSSL still has them)
  --behaviour accept-any   any signature is accepted
  --behaviour slow         every answer comes after 1.2 s
  --no-h2                  HTTP/1.1 only (no h2 in ALPN)

It binds 127.0.0.1 on a free port and prints ``PORT <n>`` once it listens.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import hmac
import json
import signal
import socket
import ssl
import sys
from typing import Any

from hypercorn.asyncio import serve
from hypercorn.config import Config

LIMIT = 1024 * 1024
TRIPLE_DES = "ECDHE-ECDSA-DES-CBC3-SHA:ECDHE-RSA-DES-CBC3-SHA:DES-CBC3-SHA"


def triple_des_available() -> str | None:
    """None if this OpenSSL can offer 3DES in TLS, else why not."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.set_ciphers(TRIPLE_DES + "@SECLEVEL=0")
    except ssl.SSLError as exc:
        return f"the local OpenSSL ({ssl.OPENSSL_VERSION}) refuses 3DES suites: {exc}"
    if not any("DES-CBC3" in cipher["name"] for cipher in context.get_ciphers()):
        return f"the local OpenSSL ({ssl.OPENSSL_VERSION}) has no 3DES suite"
    return None


class ModernConfig(Config):
    """TLS 1.3 only, on top of Hypercorn's context."""

    def create_ssl_context(self) -> ssl.SSLContext | None:
        context = super().create_ssl_context()
        if context is not None:
            context.minimum_version = ssl.TLSVersion.TLSv1_3
        return context


class TripleDESConfig(Config):
    """TLS 1.2 with 3DES suites added."""

    def create_ssl_context(self) -> ssl.SSLContext | None:
        context = super().create_ssl_context()
        if context is not None:
            context.set_ciphers("ECDHE+AESGCM:" + TRIPLE_DES + "@SECLEVEL=0")
        return context


def make_app(secret: str, behaviour: str) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        status, payload = await handle(scope, receive)
        if behaviour == "slow":
            await asyncio.sleep(1.2)
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": json.dumps(payload).encode()})

    async def handle(scope: dict[str, Any], receive: Any) -> tuple[int, dict[str, str]]:
        if scope["method"] != "POST":
            return 405, {"error": "method_not_allowed"}
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > LIMIT:
                return 413, {"error": "body_too_large"}
        headers = dict(scope["headers"])
        given = headers.get(b"x-line-signature", b"")
        expected = base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest())
        if behaviour != "accept-any" and not hmac.compare_digest(given, expected):
            return 401, {"error": "invalid_signature"}
        try:
            decoded = json.loads(body)
        except ValueError:
            return 400, {"error": "malformed_body"}
        if not isinstance(decoded, dict) or not isinstance(decoded.get("events"), list):
            return 400, {"error": "malformed_body"}
        return 200, {}

    return app


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--certfile", required=True)
    parser.add_argument("--keyfile", required=True)
    parser.add_argument("--secret", required=True)
    parser.add_argument("--tls", choices=["stock", "modern", "3des"], default="modern")
    parser.add_argument("--behaviour", choices=["correct", "accept-any", "slow"], default="correct")
    parser.add_argument("--no-h2", action="store_true", help="offer HTTP/1.1 only in ALPN")
    args = parser.parse_args()
    if args.tls == "3des" and (reason := triple_des_available()):
        sys.exit(reason)
    config = {"stock": Config, "modern": ModernConfig, "3des": TripleDESConfig}[args.tls]()
    config.certfile = args.certfile
    config.keyfile = args.keyfile
    config.alpn_protocols = ["http/1.1"] if args.no_h2 else ["h2", "http/1.1"]
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    sock.set_inheritable(True)
    config.bind = [f"fd://{sock.fileno()}"]
    config.accesslog = None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    print(f"PORT {sock.getsockname()[1]}", flush=True)
    await serve(make_app(args.secret, args.behaviour), config, shutdown_trigger=stop.wait)


if __name__ == "__main__":
    asyncio.run(main())
