"""A real ``linerelay serve`` process for integration tests.

Starts the relay in a temporary state dir on free loopback ports, waits for
``/readyz``, and offers the handles a test needs: URLs, the state dir's
files, the dev root CA, tenants, stop, kill -9 and restart on the same ports.
"""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import httpx

from appliance.state import StateDir
from tests.support import processes
from tests.support.tenants import add_tenant
from tests.support.waiting import wait_for
from tls.pki import EmbeddedPKI

VENV_BIN = Path(sys.executable).parent
LINERELAY = str(VENV_BIN / "linerelay")


#: Every relay the run started, for the end-of-run log audit (tests/conftest.py).
STARTED: list[RelayProcess] = []


#: Ports handed out below the kernel's ephemeral range (32768-60999 by default): a
#: port the kernel picked would also be picked for some client connection's local end,
#: and a relay binding 0.0.0.0 there then fails with "Address already in use".
PORT_RANGE = (20_000, 32_767)
_handed_out: set[int] = set()
# Not the random module itself: hypothesis seeds that inside its tests.
_random = random.SystemRandom()


def free_port() -> int:
    """A TCP port nothing is bound to right now, on any address, and not handed out before
    by this process."""
    while True:
        port = _random.randint(*PORT_RANGE)
        if port in _handed_out:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("0.0.0.0", port))  # every address at once
            except OSError:
                continue
        _handed_out.add(port)
        return port


def linerelay(
    *args: str,
    state_dir: Path,
    stdin: str | None = None,
    check: bool = True,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run the real ``linerelay`` command and return its result."""
    return subprocess.run(
        [LINERELAY, *args, "--state-dir", str(state_dir)],
        input=stdin,
        capture_output=True,
        text=True,
        check=check,
        timeout=60,
        env=env,
    )


class RelayProcess:
    """One relay process; :meth:`start` it, then use the URLs."""

    def __init__(
        self,
        state_dir: Path,
        config: str | None = None,
        env: dict[str, str] | None = None,
        expected_errors: tuple[str, ...] = (),
        log_file: Path | None = None,
        wrapper: Sequence[str] = (),
        listen: str | None = None,
        tls: bool = True,
        args: Sequence[str] = (),
        admin_host: str = "127.0.0.1",
        admin_token: str | None = None,
    ) -> None:
        """``expected_errors``: events of error-level log lines the test provokes on purpose.
        ``log_file``: where the relay's output goes (default: beside the state dir).
        ``listen``: the public listener (default ``127.0.0.1:`` a free port), e.g. a
        ``unix:`` socket for a proxy in front; ``tls=False`` when the config says
        ``public_tls = false`` (the URLs are then http:// and ws://). ``args``: more
        ``linerelay serve`` arguments (``--workers 2``). ``admin_host``: the admin
        listener's address (``0.0.0.0`` makes it a non-loopback listener, still reached
        at :attr:`admin_url`); ``admin_token``: the admin token such a listener needs
        (``linerelay admin-token``), sent to /readyz and /metrics."""
        self.state_dir = state_dir
        self.expected_errors = expected_errors
        #: A command the relay runs under, such as ``taskset -c 0 prlimit --nofile=1024:1024``;
        #: each must exec the next, so the process's pid stays the relay's.
        self.wrapper = list(wrapper)
        self.args = list(args)
        self.port = free_port()
        self.listen = listen or f"127.0.0.1:{self.port}"
        self.scheme = "https" if tls else "http"
        self.admin_port = free_port()
        self.admin_host = admin_host
        self.admin_token = admin_token
        self.config_file: Path | None = None
        if config is not None:
            self.config_file = state_dir.parent / f"{state_dir.name}-relay.toml"
            self.config_file.write_text(config)
        self.env = {**os.environ, **(env or {})}
        self.log_file = log_file or state_dir.parent / f"{state_dir.name}-relay.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        """``https://127.0.0.1:PORT`` (``http://`` without TLS)"""
        return f"{self.scheme}://127.0.0.1:{self.port}"

    @property
    def admin_url(self) -> str:
        """``http://127.0.0.1:PORT`` (the admin listener)"""
        return f"http://127.0.0.1:{self.admin_port}"

    @property
    def admin_headers(self) -> dict[str, str]:
        """The admin token as a Bearer header, if the relay was given one."""
        return {} if self.admin_token is None else {"Authorization": f"Bearer {self.admin_token}"}

    @property
    def bridge_url(self) -> str:
        """``wss://127.0.0.1:PORT/bridge`` (``ws://`` without TLS)"""
        return f"{'wss' if self.scheme == 'https' else 'ws'}://127.0.0.1:{self.port}/bridge"

    @property
    def state(self) -> StateDir:
        """The files of the relay's state dir."""
        return StateDir(self.state_dir)

    @property
    def ca_file(self) -> Path:
        """The dev PKI's root certificate."""
        return EmbeddedPKI(self.state.pki).root

    def webhook_url(self, tenant: str) -> str:
        """Where LINE would post ``tenant``'s webhooks."""
        return f"{self.base_url}/webhook/{tenant}"

    def start(self, timeout: float = 30.0) -> RelayProcess:
        """Start the process and wait until it is ready."""
        args = [
            *self.wrapper,
            LINERELAY,
            "serve",
            "--state-dir",
            str(self.state_dir),
            "--listen",
            self.listen,
            "--admin-listen",
            f"{self.admin_host}:{self.admin_port}",
        ]
        if self.config_file is not None:
            args += ["--config", str(self.config_file)]
        args += self.args
        with self.log_file.open("ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=self.env)
        STARTED.append(self)
        wait_for(self._ready, lambda: f"the relay to be ready:\n{self.output()}", timeout)
        return self

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"relay exited with {self.proc.returncode}:\n{self.output()}")
        try:
            readyz = httpx.get(f"{self.admin_url}/readyz", headers=self.admin_headers, timeout=1)
            return readyz.status_code == 200
        except httpx.TransportError:
            return False

    def add_tenant(self, tenant: str, secret: str) -> str:
        """Add a tenant (tests/support/tenants.py); returns its bridge token."""
        return add_tenant(self.state_dir, tenant, secret).token

    def signal(self, signum: int) -> None:
        """Send ``signum`` to the relay."""
        assert self.proc is not None
        self.proc.send_signal(signum)

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM, then wait (SIGKILL after ``timeout``); returns the exit status."""
        return 0 if self.proc is None else processes.stop(self.proc, timeout)

    def kill(self) -> None:
        """SIGKILL: no cleanup of any kind."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    def restart(self) -> RelayProcess:
        """Stop (if running) and start again on the same ports and state."""
        self.stop()
        return self.start()

    def output(self) -> str:
        """Everything the relay has written so far."""
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""

    def log_problems(self) -> list[str]:
        """Lines an operator would be paged or puzzled by: error-level lines the test did
        not provoke on purpose, and anything that is not a JSON log line."""
        problems = []
        for line in self.output().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                problems.append(line)
                continue
            level = record.get("level") if isinstance(record, dict) else None
            if level in ("error", "critical") and record.get("event") not in self.expected_errors:
                problems.append(line)
        return problems

    def metrics(self) -> str:
        """The admin listener's Prometheus text."""
        return httpx.get(f"{self.admin_url}/metrics", headers=self.admin_headers, timeout=10).text

    def metric(self, name: str) -> float:
        """The sum of every sample named ``name`` (0 when absent)."""
        total = 0.0
        for line in self.metrics().splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                total += float(line.rsplit(" ", 1)[1])
        return total
