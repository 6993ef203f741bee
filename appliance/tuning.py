"""Process-wide tuning for many idle bridges, each change measured (README, "Performance").

Two library defaults cost an idle TLS bridge most of its memory, and neither
library offers a setting, so :func:`apply` changes them at the one place each
decides. bench/idle_bridges.py measures the result; tests/appliance/
test_tuning.py checks both changes are in force.

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
"""

from __future__ import annotations

import asyncio.sslproto

from hypercorn.protocol import ws_stream

SSL_READ_BUFFER = 2 * 1024


class _UncompressedHandshake(ws_stream.Handshake):
    """Hypercorn's handshake with the client's extension offers ignored."""

    def __init__(self, headers: list[tuple[bytes, bytes]], http_version: str) -> None:
        super().__init__(headers, http_version)
        self.extensions = None


def apply() -> None:
    """Make both changes; idempotent."""
    asyncio.sslproto.SSLProtocol.max_size = SSL_READ_BUFFER
    ws_stream.Handshake = _UncompressedHandshake  # type: ignore[misc]
