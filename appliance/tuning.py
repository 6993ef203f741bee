"""Process-wide tuning for many idle bridges, each change measured (README, "Performance").

Three library behaviours cost idle or closed bridges memory, and neither
library offers a setting, so :func:`apply` changes each at the one place it
is decided. bench/idle_bridges.py measures the result; tests/appliance/
test_tuning.py checks each change is in force.

- asyncio gives every TLS connection a 256 KiB receive buffer
  (``SSLProtocol.max_size``), allocated whether the connection is busy or
  idle. 4 KiB takes a signed webhook or a bridge frame in one read; a larger
  body takes more reads (OpenSSL reassembles records whatever the size), and
  bench/throughput.py shows no loss at the benchmark's 600-byte bodies.
- Hypercorn accepts permessage-deflate whenever a client offers it, and
  wsproto then keeps a zlib compressor per connection for its lifetime
  (hundreds of KB of zlib state). Bridge frames are short JSON that gains
  nothing from compression, so the relay declines the extension, as RFC 6455
  §9.1 lets a server do.
- Hypercorn's per-connection ping task sleeps ``ping_interval`` between pings
  and only then sees that its WebSocket closed, so a closed bridge kept its
  memory up to 20 s, and a shutdown waited for it (and logged a traceback).
  Here the ping task is cancelled the moment its stream is marked closed.
"""

from __future__ import annotations

import asyncio
import asyncio.sslproto
from typing import Any

from hypercorn.protocol import ws_stream
from wsproto.events import Ping

SSL_READ_BUFFER = 2 * 1024


class _UncompressedHandshake(ws_stream.Handshake):
    """Hypercorn's handshake with the client's extension offers ignored."""

    def __init__(self, headers: list[tuple[bytes, bytes]], http_version: str) -> None:
        super().__init__(headers, http_version)
        self.extensions = None


def _is_closed(stream: Any) -> bool:
    return bool(stream.__dict__.get("_linerelay_closed", False))


def _mark_closed(stream: Any, value: bool) -> None:
    stream.__dict__["_linerelay_closed"] = value
    pinger = stream.__dict__.get("_linerelay_pinger") if value else None
    if pinger is not None and pinger is not asyncio.current_task():
        pinger.cancel()


async def _send_pings(stream: Any) -> None:
    """Hypercorn's ping loop, cancellable by :func:`_mark_closed`."""
    stream.__dict__["_linerelay_pinger"] = asyncio.current_task()
    try:
        while not stream.closed:
            await stream._send_wsproto_event(Ping())
            await stream.context.sleep(stream.config.websocket_ping_interval)
    finally:
        stream.__dict__.pop("_linerelay_pinger", None)


def apply() -> None:
    """Make the three changes; idempotent."""
    asyncio.sslproto.SSLProtocol.max_size = SSL_READ_BUFFER
    ws_stream.Handshake = _UncompressedHandshake  # type: ignore[misc]
    ws_stream.WSStream.closed = property(_is_closed, _mark_closed)  # type: ignore[assignment]
    ws_stream.WSStream._send_pings = _send_pings  # type: ignore[method-assign,assignment]
