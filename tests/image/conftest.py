"""The appliance image booted under qemu (``make image-test``; not part of ``make test``).

Real parts only: the image ``make image`` builds, booted by qemu with software
emulation exactly as PROTOCOL.md §5 describes (the caller's ``-m 1024 -smp 2
-nographic``, the accelerator, the disk, a user network forwarding a host port
to 443, ``-smbios`` credentials, then the lines of ``qemu.args``), real systemd
in the guest, real TLS from the host, and the host's own bridges and clients.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect

from appliance.signature import sign
from tests.integration.helpers import Bridge
from tests.support.relay import free_port

CHECKOUT = Path(__file__).resolve().parents[2]
OUT = CHECKOUT / "build" / "appliance"

if not os.environ.get("LINERELAY_IMAGE_TEST"):
    # Minutes of emulation: only `make image-test` runs these.
    collect_ignore_glob = ["test_*.py"]

#: Generous: emulation on a 2-core machine that may be busy with other work.
BOOT_TIMEOUT = 240.0


@pytest.fixture(scope="session")
def image() -> Path:
    """The built image's folder (built now if it is missing or stale: seconds when it is not)."""
    if shutil.which("qemu-system-x86_64") is None:
        pytest.fail("qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)")
    subprocess.run([sys.executable, "-m", "image.build"], cwd=CHECKOUT, check=True)
    return OUT


@pytest.fixture(scope="session")
def ssh_key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An operator key pair; the public half goes in as ssh.authorized_keys.root."""
    key = tmp_path_factory.mktemp("ssh") / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    return key


def copy_disk(source: Path, target: Path) -> Path:
    """A private copy of a disk (sparse): the build's own is never booted by a test."""
    subprocess.run(["cp", "--sparse=always", str(source), str(target)], check=True)
    return target


class Guest:
    """One qemu process booting the appliance; the console goes to a file."""

    def __init__(
        self,
        image: Path,
        disk: Path,
        credentials: dict[str, bytes],
        workdir: Path,
        extra_disks: tuple[Path, ...] = (),
    ) -> None:
        self.image = image
        self.disk = disk
        self.credentials = credentials
        self.workdir = workdir
        self.extra_disks = extra_disks
        self.port = free_port()
        self.ssh_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.boots = 0
        self.console_file = workdir / "console-0.log"
        self.boot_seconds = 0.0

    def argv(self) -> list[str]:
        """The caller's arguments (PROTOCOL.md §5), then qemu.args line by line."""
        argv = ["qemu-system-x86_64", "-m", "1024", "-smp", "2", "-nographic"]
        argv += ["-accel", "tcg,thread=multi", "-cpu", "max"]
        argv += ["-drive", f"if=virtio,format=raw,file={self.disk}"]
        for extra in self.extra_disks:
            argv += ["-drive", f"if=virtio,format=raw,file={extra}"]
        forwards = (
            f"hostfwd=tcp:127.0.0.1:{self.port}-:443,hostfwd=tcp:127.0.0.1:{self.ssh_port}-:22"
        )
        argv += ["-nic", f"user,model=virtio-net-pci,{forwards}"]
        for name, value in self.credentials.items():
            encoded = base64.b64encode(value).decode()
            argv += ["-smbios", f"type=11,value=io.systemd.credential.binary:{name}={encoded}"]
        argv += (self.image / "qemu.args").read_text().splitlines()
        return argv

    def start(self) -> Guest:
        """Power on."""
        self.console_file = self.workdir / f"console-{self.boots}.log"
        self.boots += 1
        self.started = time.monotonic()
        with self.console_file.open("wb") as console:
            self.proc = subprocess.Popen(
                self.argv(), stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT
            )
        return self

    def kill(self) -> None:
        """Pull the power: SIGKILL to qemu."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    def stop(self) -> None:
        """Power off, however (tests that need a clean shutdown do it through ssh)."""
        if self.proc is not None and self.proc.poll() is None:
            self.kill()

    def console(self) -> str:
        """The serial console so far; every line end (and a bare CR) a newline."""
        text = self.console_file.read_bytes().decode(errors="replace")
        return text.replace("\r\n", "\n").replace("\r", "\n")

    def wait_tls(self, cafile: Path, timeout: float = BOOT_TIMEOUT) -> float:
        """Wait for a TLS handshake on the forwarded 443 that verifies; seconds since power-on.

        qemu's user network accepts a connection on the host side before the guest
        listens, so only a completed handshake counts.
        """
        context = ssl.create_default_context(cafile=str(cafile))
        deadline = self.started + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"qemu exited with {self.proc.returncode}:\n{self.console()}")
            try:
                with (
                    socket.create_connection(("127.0.0.1", self.port), timeout=3) as raw,
                    context.wrap_socket(raw, server_hostname="localhost"),
                ):
                    self.boot_seconds = time.monotonic() - self.started
                    return self.boot_seconds
            except (OSError, ssl.SSLError):
                time.sleep(0.25)
        raise AssertionError(f"no TLS on 443 after {timeout}s; console:\n{self.console()}")

    def ssh(self, key: Path, command: str, check: bool = True) -> str:
        """Run ``command`` as root in the guest (sshd runs: an operator key was provisioned)."""
        result = subprocess.run(
            [
                "ssh",
                "-i",
                str(key),
                "-p",
                str(self.ssh_port),
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "BatchMode=yes",
                "-o",
                "LogLevel=ERROR",
                "-o",
                "ConnectTimeout=20",
                "root@127.0.0.1",
                command,
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"ssh {command!r}: {result.returncode}\n{result.stderr}")
        return result.stdout

    def url(self, path: str) -> str:
        """``https://127.0.0.1:PORT{path}`` on the forwarded 443."""
        return f"https://127.0.0.1:{self.port}{path}"


@pytest.fixture
def guests() -> Iterator[list[Guest]]:
    """Guests a test starts are powered off at its end, whatever happens."""
    started: list[Guest] = []
    yield started
    for guest in started:
        guest.stop()


def signed_post(
    guest: Guest, cafile: Path, tenant: str, secret: str, body: bytes
) -> httpx.Response:
    """POST ``body`` to ``tenant``'s webhook URL on the guest, signed as LINE signs."""
    return httpx.post(
        guest.url(f"/webhook/{tenant}"),
        content=body,
        headers={"x-line-signature": sign(secret.encode(), body)},
        verify=ssl.create_default_context(cafile=str(cafile)),
        timeout=30,
    )


def take(
    guest: Guest, cafile: Path, token: str, count: int, timeout: float = 60
) -> list[dict[str, Any]]:
    """Connect a bridge (PROTOCOL.md §2) from the host and take ``count`` webhooks, acking each."""

    async def run() -> list[dict[str, Any]]:
        ws = await connect(
            f"wss://127.0.0.1:{guest.port}/bridge",
            ssl=ssl.create_default_context(cafile=str(cafile)),
            additional_headers={"Authorization": f"Bearer {token}"},
            max_size=None,
            open_timeout=timeout,
        )
        bridge = Bridge(ws, {})
        async with bridge:
            bridge.hello = await bridge.frame(timeout)
            assert bridge.hello["type"] == "hello"
            return await bridge.take(count, timeout)

    return asyncio.run(run())


def tenants_credential(*entries: tuple[str, str, str]) -> bytes:
    """The linerelay.tenants credential for ``(tenant, channel_secret, bridge_token)`` triples."""
    return json.dumps(
        [{"tenant": t, "channel_secret": s, "bridge_token": b} for t, s, b in entries]
    ).encode()
