"""appliance/tuning.py against the real asyncio, in a fresh interpreter as the relay starts.

Each case runs tests/support/tls_reads.py: a real asyncio TLS server with the
tuning applied, one client sending 64 KiB, and the size of every socket read
the server's transport made.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from appliance import tuning

SENT = 64 * 1024
ASYNCIO_OWN = 256 * 1024

pytestmark = pytest.mark.skipif(
    tuning.unsupported_because() is not None,
    reason=f"tls_read_buffer is not applied here: {tuning.unsupported_because()}",
)


def reads_of_one_connection(tls_read_buffer: int, pki: Path) -> dict[str, Any]:
    """What tests/support/tls_reads.py saw, run with ``tls_read_buffer``."""
    out = subprocess.run(
        [sys.executable, "-m", "tests.support.tls_reads", str(tls_read_buffer), str(SENT), pki],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        cwd=Path(__file__).resolve().parents[2],
    ).stdout
    result: dict[str, Any] = json.loads(out)
    return result


@pytest.mark.parametrize("tls_read_buffer", [2048, 4096, 16384])
def test_asyncio_reads_a_tls_connection_at_most_tls_read_buffer_bytes_at_a_time(
    tmp_path: Path, tls_read_buffer: int
) -> None:
    seen = reads_of_one_connection(tls_read_buffer, tmp_path / "pki")
    assert seen["in_force"] == tls_read_buffer
    assert seen["read_sizes"] == [tls_read_buffer]
    # Every byte arrives, in as many reads as the buffer makes it take.
    assert (seen["received"], seen["intact"]) == (SENT, True)
    assert seen["reads"] >= SENT // tls_read_buffer


def test_zero_leaves_asyncio_its_own_256_kib_reads(tmp_path: Path) -> None:
    seen = reads_of_one_connection(tuning.ASYNCIO_DEFAULT, tmp_path / "pki")
    assert seen["in_force"] == ASYNCIO_OWN
    assert seen["read_sizes"] == [ASYNCIO_OWN]
    assert (seen["received"], seen["intact"]) == (SENT, True)
