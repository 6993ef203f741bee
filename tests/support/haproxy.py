"""A real HAProxy serving deploy/haproxy/haproxy.cfg, for the tests.

The example itself is run, its addresses, ports and paths substituted (every
substitution must find its text, so an edit of the example that this file
does not follow fails loudly instead of drifting), in the foreground as the
test's user, with its stats socket in the test's directory to ask it which
relays it counts as up.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.support import processes
from tests.support.relay import free_port

HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "haproxy" / "haproxy.cfg"
#: Seconds to wait for HAProxy to listen or stop.
TIMEOUT = 30.0


class ExampleDriftError(AssertionError):
    """deploy/haproxy/haproxy.cfg no longer holds a text :func:`render` substitutes."""


class HAProxyError(RuntimeError):
    """HAProxy refused the rendered config, exited, or did not listen."""


@dataclass(frozen=True)
class Backend:
    """One relay behind HAProxy: its public port and its admin port (health checks)."""

    name: str
    port: int
    admin_port: int


@dataclass
class HAProxy:
    """One HAProxy process serving the rendered example."""

    proc: subprocess.Popen[bytes]
    port: int
    directory: Path

    @property
    def base_url(self) -> str:
        """``https://127.0.0.1:PORT``"""
        return f"https://127.0.0.1:{self.port}"

    @property
    def bridge_url(self) -> str:
        """``wss://127.0.0.1:PORT/bridge``"""
        return f"wss://127.0.0.1:{self.port}/bridge"

    def webhook_url(self, tenant: str) -> str:
        """``tenant``'s webhook URL through HAProxy."""
        return f"{self.base_url}/webhook/{tenant}"

    def status(self) -> dict[str, str]:
        """Each relay's state as HAProxy's health checks see it (``UP``, ``DOWN``, ...)."""
        rows = self.command("show stat").splitlines()
        header = rows[0].lstrip("# ").split(",")
        found = {}
        for row in rows[1:]:
            fields = dict(zip(header, row.split(","), strict=False))
            if fields.get("pxname") == "relays" and fields.get("svname") not in (
                "FRONTEND",
                "BACKEND",
            ):
                found[fields["svname"]] = fields["status"]
        return found

    def command(self, line: str) -> str:
        """One command on HAProxy's stats socket, and its answer."""
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(TIMEOUT)
            sock.connect(str(self.directory / "admin.sock"))
            sock.sendall(line.encode() + b"\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def logs(self) -> str:
        """What HAProxy logged (its connection log lines and warnings)."""
        return (self.directory / "haproxy.log").read_text(errors="replace")

    def stop(self) -> None:
        """Graceful stop (SIGUSR1: finish the connections), then SIGKILL if it hangs."""
        processes.stop(self.proc, TIMEOUT, signal.SIGUSR1)


def render(directory: Path, port: int, backends: Sequence[Backend]) -> str:
    """deploy/haproxy/haproxy.cfg with this run's ports, relays and paths."""
    servers = "".join(
        f"\tserver {b.name} 127.0.0.1:{b.port} check port {b.admin_port}\n" for b in backends
    )
    substitutions = [
        # Logs to its output, which the test keeps; a running process is stopped by signal.
        (
            "\tlog /dev/log\tlocal0\n\tlog /dev/log\tlocal1 notice\n",
            "\tlog stdout format raw local0\n",
        ),
        ("\tchroot /var/lib/haproxy\n", ""),
        (
            "stats socket /run/haproxy/admin.sock mode 660 level admin",
            f"stats socket {directory / 'admin.sock'} mode 600 level admin",
        ),
        ("\tuser haproxy\n\tgroup haproxy\n\tdaemon\n", ""),
        # What the test's user may open (the relays' tests set their own limits).
        ("\tmaxconn 100000\n", "\tmaxconn 4000\n"),
        ("\tbind :443\n\tbind :::443 v6only\n", f"\tbind 127.0.0.1:{port}\n"),
        (
            "\tserver relay1 10.0.0.11:443 check port 9443\n"
            "\tserver relay2 10.0.0.12:443 check port 9443\n",
            servers,
        ),
    ]
    text = EXAMPLE.read_text()
    for old, new in substitutions:
        if old not in text:
            raise ExampleDriftError(f"{EXAMPLE} no longer says {old!r}: update render()")
        text = text.replace(old, new)
    return text


def start_haproxy(directory: Path, backends: Sequence[Backend], admin_token: str) -> HAProxy:
    """HAProxy in the foreground on a free port with the rendered example, in front of
    ``backends`` (whose admin token is ``admin_token``: its health checks send it);
    returns once it listens."""
    env = {**os.environ, "LINERELAY_ADMIN_TOKEN": admin_token}
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = directory / "haproxy.cfg"
    config.write_text(render(directory, port, backends))
    checked = subprocess.run(
        [HAPROXY, "-c", "-f", str(config)], capture_output=True, text=True, check=False, env=env
    )
    if checked.returncode != 0:
        raise HAProxyError(
            f"haproxy refuses the rendered config:\n{checked.stdout}{checked.stderr}"
        )
    with (directory / "haproxy.log").open("wb") as log:
        proc = subprocess.Popen(
            [HAPROXY, "-db", "-f", str(config)], stdout=log, stderr=log, env=env
        )
    haproxy = HAProxy(proc, port, directory)

    def listening() -> bool:
        if proc.poll() is not None:
            raise HAProxyError(f"haproxy exited with {proc.returncode}:\n{haproxy.logs()}")
        # Asked on its stats socket, not its port: a connection there would reach a relay.
        try:
            return "Pid:" in haproxy.command("show info")
        except OSError:
            return False

    deadline = time.monotonic() + TIMEOUT
    while not listening():
        if time.monotonic() > deadline:
            haproxy.stop()
            raise HAProxyError(f"haproxy not listening after {TIMEOUT}s:\n{haproxy.logs()}")
        time.sleep(0.05)
    return haproxy
