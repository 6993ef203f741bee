"""tls_read_buffer in a real relay: what each open TLS connection costs it (appliance/tuning.py)."""

from __future__ import annotations

import socket
import ssl
import time
from pathlib import Path

import pytest

from appliance import tuning
from tests.integration.helpers import TIMEOUT, tls_context
from tests.support.relay import RelayProcess

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        tuning.unsupported_because() is not None,
        reason=f"tls_read_buffer is not applied here: {tuning.unsupported_because()}",
    ),
]

CONNECTIONS = 100
ASYNCIO_OWN = 256 * 1024


def rss_bytes(pid: int) -> int:
    """Resident memory of ``pid``."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def open_tls(relay: RelayProcess, count: int) -> list[ssl.SSLSocket]:
    """``count`` TLS connections to the public listener that send nothing after the handshake."""
    context = tls_context(relay.ca_file)
    opened = []
    for _ in range(count):
        raw = socket.create_connection(("127.0.0.1", relay.port), timeout=TIMEOUT)
        opened.append(context.wrap_socket(raw, server_hostname="127.0.0.1"))
    return opened


def memory_per_idle_connection(state: Path, tls_read_buffer: int) -> float:
    """Bytes of the relay's resident memory each idle TLS connection holds."""
    relay = RelayProcess(state, config=f"tls_read_buffer = {tls_read_buffer}\n").start()
    assert relay.proc is not None
    try:
        for sock in open_tls(relay, 5):  # what the first connections build once is not counted
            sock.close()
        time.sleep(0.5)
        before = rss_bytes(relay.proc.pid)
        idle = open_tls(relay, CONNECTIONS)
        time.sleep(0.5)
        after = rss_bytes(relay.proc.pid)
        for sock in idle:
            sock.close()
    finally:
        relay.stop()
    return (after - before) / CONNECTIONS


def test_an_idle_tls_connection_holds_tls_read_buffer_instead_of_asyncio_s_256_kib(
    tmp_path: Path,
) -> None:
    small = memory_per_idle_connection(tmp_path / "small", 2048)
    asyncio_own = memory_per_idle_connection(tmp_path / "asyncio", tuning.ASYNCIO_DEFAULT)
    # asyncio allocates and zero-fills the whole buffer per connection: the
    # difference is the buffers' (254 KiB each), give or take allocator noise.
    assert asyncio_own - small > 0.8 * (ASYNCIO_OWN - 2048), (small, asyncio_own)
    assert small < 100_000, small
