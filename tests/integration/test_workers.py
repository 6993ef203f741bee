"""``linerelay serve --workers N`` (PROTOCOL.md §6; docs/scale-out.md): what it refuses,
and that one worker is today's single process.

The several-process behaviour itself (a burst spread over the workers, order and
exactly-once delivery, a crashed worker replaced, /metrics adding up every
worker) needs the shared Redis store: tests/integration/test_workers_redis.py.
"""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import psutil
import pytest

from tests.support.relay import LINERELAY, RelayProcess, free_port

pytestmark = pytest.mark.integration


def serve(state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``linerelay serve ARGS`` on free ports, which must be free again afterwards."""
    port, admin = free_port(), free_port()
    done = subprocess.run(
        [
            LINERELAY,
            "serve",
            *("--state-dir", str(state)),
            *("--listen", f"127.0.0.1:{port}"),
            *("--admin-listen", f"127.0.0.1:{admin}"),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    for taken in (port, admin):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", taken))  # nothing was left listening
    return done


def test_several_workers_on_the_sqlite_store_are_refused_before_anything_starts(
    tmp_path: Path,
) -> None:
    state = tmp_path / "state"
    done = serve(state, "--workers", "2")
    assert done.returncode == 2
    assert done.stderr.startswith("linerelay serve: workers: 2 processes need the shared store")
    assert 'store = "redis"' in done.stderr
    assert "SQLite" in done.stderr
    assert not state.exists()


@pytest.mark.parametrize("count", ["0", "257", "-1", "two", ""])
def test_a_worker_count_out_of_range_is_refused(tmp_path: Path, count: str) -> None:
    done = serve(tmp_path / "state", "--workers", count)
    assert done.returncode == 2
    assert "workers" in done.stderr
    assert "Traceback" not in done.stderr


def test_one_worker_is_the_single_relay_process_of_before(tmp_path: Path) -> None:
    relay = RelayProcess(tmp_path / "state", args=["--workers", "1"]).start()
    try:
        assert relay.proc is not None
        assert relay.state.pid_file.read_text().strip() == str(relay.proc.pid)
        assert psutil.Process(relay.proc.pid).children() == []
        assert '"workers starting"' not in relay.output()
        assert '"worker":' not in relay.output()
    finally:
        assert relay.stop() == 0
