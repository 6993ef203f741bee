"""One TLS connection through a real asyncio server, each of its socket reads recorded.

Run in a fresh interpreter, as the relay starts::

    python -m tests.support.tls_reads TLS_READ_BUFFER BYTES PKI_DIR

It calls :func:`appliance.tuning.apply` with TLS_READ_BUFFER, accepts one
connection the way the relay's listener does (``connect_accepted_socket``
with TLS, appliance/listener.py), has a client send BYTES in one write, and
prints one JSON object: what the tuning said, whether the bytes arrived
intact, and the size of every buffer asyncio read the socket into.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import socket
import ssl
import sys
from pathlib import Path
from typing import Any

from appliance import tuning
from tls.pki import EmbeddedPKI


class _RecordingSocket(socket.socket):
    """A socket that notes how large a buffer each read was offered."""

    def __init__(self, accepted: socket.socket) -> None:
        super().__init__(accepted.family, accepted.type, accepted.proto, accepted.detach())
        self.read_sizes: list[int] = []

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
        self.read_sizes.append(nbytes or memoryview(buffer).nbytes)
        return super().recv_into(buffer, nbytes, flags)


class _Sink(asyncio.Protocol):
    """Takes ``expected`` bytes of plaintext, hashing them."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.received = 0
        self.digest = hashlib.sha256()
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        self.received += len(data)
        self.digest.update(data)
        if self.received >= self.expected and not self.done.done():
            self.done.set_result(None)


async def one_connection(tls_read_buffer: int, size: int, pki_dir: Path) -> dict[str, Any]:
    """Serve one TLS connection that sends ``size`` bytes; what the server read, and how."""
    in_force = tuning.apply(tls_read_buffer)
    pki = EmbeddedPKI(pki_dir)
    pki.ensure()
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(pki.chain, pki.key)
    client = ssl.create_default_context(cafile=str(pki.root))
    payload = os.urandom(size)
    loop = asyncio.get_running_loop()
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.setblocking(False)
        connecting = asyncio.create_task(
            asyncio.open_connection(*listener.getsockname()[:2], ssl=client)
        )
        accepted, _ = await loop.sock_accept(listener)
    sock = _RecordingSocket(accepted)
    sink = _Sink(size)
    transport, _ = await loop.connect_accepted_socket(lambda: sink, sock, ssl=server)
    _, writer = await connecting
    writer.write(payload)
    await writer.drain()
    await asyncio.wait_for(sink.done, 30)
    writer.close()
    transport.close()
    return {
        "in_force": in_force,
        "received": sink.received,
        "intact": sink.digest.digest() == hashlib.sha256(payload).digest(),
        "read_sizes": sorted(set(sock.read_sizes)),
        "reads": len(sock.read_sizes),
    }


if __name__ == "__main__":
    buffer, size, pki_dir = int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
    print(json.dumps(asyncio.run(one_connection(buffer, size, pki_dir))))
