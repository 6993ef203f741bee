"""Shared pieces of the benchmarks: the signed body, processes pinned to cores, RSS."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from appliance.signature import sign

BIN = Path(sys.executable).parent
SECRET = "bench-channel-secret-0123456789ab"
SERVER_CORE = "0"
CLIENT_CORE = "1"


def text_webhook(text: str) -> dict[str, Any]:
    """A LINE webhook body carrying one text message, parseable by line-bot-sdk v3."""
    event = {
        "type": "message",
        "message": {
            "type": "text",
            "id": "468789577898262530",
            "quoteToken": "q3Plxr4AgKd",
            "text": text,
        },
        "webhookEventId": "01H810YECXQQZ37VAXPF6H9E6T",
        "deliveryContext": {"isRedelivery": False},
        "timestamp": 1692251666727,
        "source": {"type": "user", "userId": "U4af4980629ef1a2b3c4d5e6f7a8b9c0d"},
        "replyToken": "38ef843bde154d9b91c21320ffd17a0f",
        "mode": "active",
    }
    return {"destination": "Uxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx", "events": [event]}


def body_600(marker: str = "0") -> bytes:
    """A LINE text-message webhook of about 600 bytes."""
    text = "Hello from the benchmark " + marker
    raw = json.dumps(text_webhook(text)).encode()  # one line, as LINE sends it
    pad = 600 - len(raw)
    if pad > 0:
        raw = json.dumps(text_webhook(text + " " + "x" * (pad - 1))).encode()
    return raw


def write_bodies(path: Path, count: int) -> None:
    """``count`` distinct signed bodies, one ``signature<TAB>body`` line each, for wrk."""
    with path.open("wb") as fh:
        for i in range(count):
            body = body_600(str(i))
            fh.write(signature(body).encode() + b"\t" + body + b"\n")


def signature(body: bytes) -> str:
    """The x-line-signature of ``body`` under the benchmark secret."""
    return sign(SECRET.encode(), body)


def free_port() -> int:
    """A free loopback port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def pinned(core: str, argv: list[str], **kwargs: object) -> subprocess.Popen[bytes]:
    """Start ``argv`` pinned to ``core`` with taskset."""
    proc: subprocess.Popen[bytes] = subprocess.Popen(["taskset", "-c", core, *argv], **kwargs)  # type: ignore[call-overload]
    return proc


def wait_http(url: str, timeout: float = 30.0, verify: object = False) -> None:
    """Poll ``url`` until it answers anything."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            httpx.get(url, verify=verify, timeout=1)  # type: ignore[arg-type]
            return
        except httpx.TransportError:
            time.sleep(0.1)
    raise TimeoutError(url)


def rss_kb(pid: int) -> int:
    """Resident set size of ``pid`` in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def relay_pid(proc: subprocess.Popen[bytes]) -> int:
    """The relay re-executes itself (OPENSSL_CONF); the pid stays the same."""
    return proc.pid


def env_without_openssl_conf() -> dict[str, str]:
    """The environment for peers: no relay-specific OpenSSL settings."""
    return {k: v for k, v in os.environ.items() if k != "OPENSSL_CONF"}
