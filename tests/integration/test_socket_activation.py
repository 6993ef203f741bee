"""The relay under socket activation and sd_notify, as linerelay.service runs it.

``systemd-socket-activate`` opens the two sockets, names them as the socket
units do (``public``, ``admin``) and starts the real ``linerelay serve`` with
``LISTEN_*`` set; ``OPENSSL_CONF`` is not set, so the relay re-executes itself
before it looks at them (the pid must still match). A datagram socket stands in
for systemd's notification socket.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from appliance.state import StateDir
from tests.support.relay import LINERELAY, free_port
from tests.support.waiting import wait_for
from tls.pki import EmbeddedPKI

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        shutil.which("systemd-socket-activate") is None,
        reason="systemd-socket-activate is not installed",
    ),
]


class Manager:
    """The notification socket: collects every datagram the relay sends."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.messages: list[list[str]] = []

    def poll(self) -> list[list[str]]:
        while True:
            try:
                self.messages.append(self.sock.recv(4096).decode().split("\n"))
            except BlockingIOError:
                return self.messages

    def saw(self, line: str, after: int = 0) -> int:
        """Index of the first message from ``after`` on holding ``line``, or 0 if none yet."""
        for index, message in enumerate(self.poll()[after:], start=after):
            if line in message:
                return index + 1
        return 0


@pytest.fixture
def activated(
    tmp_path: Path,
) -> Iterator[tuple[subprocess.Popen[bytes], Manager, dict[str, int], Path]]:
    manager = Manager(tmp_path / "notify")
    ports = {"public": free_port(), "admin": free_port()}
    # Held for the whole test: a relay that bound its own --listen would fail.
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    taken = f"127.0.0.1:{busy.getsockname()[1]}"
    log = tmp_path / "relay.log"
    state = tmp_path / "state"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                "systemd-socket-activate",
                "-l",
                f"127.0.0.1:{ports['public']}",
                "-l",
                f"127.0.0.1:{ports['admin']}",
                "--fdname=public:admin",
                "-E",
                f"NOTIFY_SOCKET={manager.path}",
                "-E",
                "WATCHDOG_USEC=1000000",
                LINERELAY,
                "serve",
                "--state-dir",
                str(state),
                "--listen",
                taken,
                "--admin-listen",
                taken,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        yield proc, manager, ports, log
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        busy.close()
        manager.sock.close()


def test_the_relay_serves_the_sockets_it_inherits_and_tells_systemd(
    activated: tuple[subprocess.Popen[bytes], Manager, dict[str, int], Path], tmp_path: Path
) -> None:
    proc, manager, ports, log = activated

    def ready() -> bool:
        # The first connection is what starts the relay (as a socket unit would).
        try:
            return (
                httpx.get(f"http://127.0.0.1:{ports['admin']}/readyz", timeout=5).status_code == 200
            )
        except httpx.TransportError:
            return False

    wait_for(ready, "the relay on the inherited admin socket", timeout=60, interval=0.2)
    assert wait_for(lambda: manager.saw("READY=1"), "READY=1")
    root = EmbeddedPKI(StateDir(tmp_path / "state").pki).root
    context = ssl.create_default_context(cafile=str(root))
    with (
        socket.create_connection(("127.0.0.1", ports["public"]), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        assert tls.version() == "TLSv1.3"
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    serving = [line for line in lines if line.get("event") == "relay serving"]
    assert serving, log.read_text()
    assert serving[0]["socket_activated"] == ["admin", "public"]
    assert serving[0]["pid"] == proc.pid  # execv kept the pid LISTEN_PID names

    # The watchdog: WATCHDOG_USEC=1s, so a ping every half second from the loop.
    start = len(manager.poll())
    time.sleep(2)
    pings = sum(m == ["WATCHDOG=1"] for m in manager.poll()[start:])
    assert pings >= 2

    mark = len(manager.poll())
    proc.send_signal(signal.SIGHUP)
    reloading = wait_for(lambda: manager.saw("RELOADING=1", mark), "RELOADING=1")
    assert wait_for(lambda: manager.saw("READY=1", reloading), "READY=1 after the reload")

    mark = len(manager.poll())
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    assert manager.saw("STOPPING=1", mark)
