"""A real ``linerelay bridge`` process for integration tests, its tenants and its config."""

from __future__ import annotations

import contextlib
import json
import secrets
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from appliance.signature import sign
from tests.support import processes
from tests.support.bodies import new_user, webhook_body
from tests.support.relay import LINERELAY, RelayProcess
from tests.support.tenants import add_tenant
from tests.support.waiting import wait_for

#: The bridge's tests (other branches' too) know the one body builder by this name.
text_body = webhook_body

# wait_for, new_user and text_body are tests/support's, re-exported for the bridge's tests.
__all__ = [
    "FIXTURES",
    "BridgeProcess",
    "FreezableProxy",
    "Tenant",
    "assert_no_secrets",
    "bridge_config",
    "new_user",
    "post_webhook",
    "run_bridge_cli",
    "text_body",
    "wait_for",
]

FIXTURES = Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "line-webhooks"


class BridgeProcess:
    """One bridge process with its config file and state dir under ``home``."""

    def __init__(self, home: Path, config: dict[str, Any]) -> None:
        home.mkdir(parents=True, exist_ok=True)
        self.home = home
        self.config = dict(config)
        self.config_file = home / "bridge.json"
        self.state_dir = home / "bridge.state"
        self.log_file = home / "bridge.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.write_config(self.config)

    def write_config(self, config: dict[str, Any]) -> None:
        """Rewrite the config file in place (same inode), as an owner's editor would."""
        self.config = dict(config)
        with self.config_file.open("r+" if self.config_file.exists() else "w") as fh:
            fh.seek(0)
            fh.truncate()
            json.dump(config, fh, indent=1)

    def start(self) -> BridgeProcess:
        with self.log_file.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    LINERELAY,
                    "bridge",
                    "--config",
                    str(self.config_file),
                    "--state-dir",
                    str(self.state_dir),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return self

    def status(self) -> dict[str, Any]:
        """The status file, or ``{}`` before the first write."""
        try:
            data: dict[str, Any] = json.loads((self.state_dir / "status.json").read_text())
        except (OSError, ValueError):
            return {}
        return data

    def settled_status(self, timeout: float = 30.0) -> dict[str, Any]:
        """A status written after this call began, with nothing queued or running."""
        since = time.time()

        def settled() -> dict[str, Any] | None:
            status = self.status()
            fresh = status.get("updated_at", 0) >= since
            idle = status.get("queue_depth") == 0 and status.get("in_flight") == 0
            return status if fresh and idle else None

        result: dict[str, Any] = wait_for(settled, "a settled status", timeout)
        return result

    def counter(self, name: str) -> int:
        value: int = self.status().get("counters", {}).get(name, 0)
        return value

    def wait_connected(self, hellos: int = 1, timeout: float = 60.0) -> None:
        def ready() -> bool:
            self.check_alive()
            return (
                self.status().get("connection") == "connected" and self.counter("hellos") >= hellos
            )

        wait_for(
            ready, lambda: f"bridge connected ({hellos} hellos); status {self.status()}", timeout
        )

    def wait_counter(self, name: str, at_least: int, timeout: float = 30.0) -> None:
        def reached() -> bool:
            self.check_alive()
            return self.counter(name) >= at_least

        wait_for(reached, lambda: f"counter {name} >= {at_least}; status {self.status()}", timeout)

    def check_alive(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"bridge exited with {self.proc.returncode}:\n{self.output()}")

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, then wait (SIGKILL after ``timeout``); returns the exit status."""
        return 0 if self.proc is None else processes.stop(self.proc, timeout)

    def kill(self) -> None:
        """SIGKILL: no cleanup of any kind."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    def output(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""

    def log_events(self) -> list[dict[str, Any]]:
        """The bridge's JSON log lines (other lines are skipped)."""
        events = []
        for line in self.output().splitlines():
            try:
                events.append(json.loads(line))
            except ValueError:
                continue
        return events


class Tenant:
    """A tenant of ``relay`` (tests/support/tenants.py) that posts as LINE would."""

    def __init__(self, relay: RelayProcess, name: str | None = None) -> None:
        self.relay = relay
        added = add_tenant(relay.state_dir, name)
        self.name, self.secret, self.token = added.id, added.secret, added.token
        self.signatures: list[str] = []

    def post(self, body: bytes) -> str:
        """POST ``body`` signed as LINE would; returns the signature sent (also kept)."""
        signature = post_webhook(self.relay, self.name, self.secret, body)
        self.signatures.append(signature)
        return signature


def post_webhook(relay: RelayProcess, tenant: str, secret: str, body: bytes) -> str:
    """POST ``body`` signed with ``secret`` as LINE would; the relay must accept it."""
    signature = sign(secret.encode(), body)
    response = httpx.post(
        relay.webhook_url(tenant),
        content=body,
        headers={"x-line-signature": signature, "content-type": "application/json"},
        verify=ssl.create_default_context(cafile=str(relay.ca_file)),
        timeout=30,
    )
    assert response.status_code == 200, response.text
    return signature


def bridge_config(
    relay: RelayProcess, tenant: Tenant, line_url: str, chat_url: str
) -> dict[str, Any]:
    """A config for a bridge of ``tenant`` with test-sized backoff and fresh credentials."""
    return {
        "relay_token": tenant.token,
        "channel_secret": tenant.secret,
        "channel_access_token": "acc-" + secrets.token_hex(8),
        "relay_url": relay.bridge_url,
        "openclaw_url": chat_url,
        "gateway_token": "gw-" + secrets.token_hex(8),
        "line_api_base": line_url,
        "ca_file": str(relay.ca_file),
        "backoff_min": 0.2,
        "backoff_max": 1.0,
        "shutdown_grace": 5,
    }


def assert_no_secrets(bridge: BridgeProcess, *extra: str) -> None:
    """None of the bridge's credentials (nor ``extra``) appear in its output or status file."""
    config = bridge.config
    values = [
        config.get(k)
        for k in ("relay_token", "channel_secret", "channel_access_token", "gateway_token")
    ]
    url = str(config.get("relay_url", ""))
    if "/bridge/" in url:
        values.append(url.rsplit("/bridge/", 1)[1])
    output = bridge.output()
    status = json.dumps(bridge.status())
    for value in [v for v in values if v] + list(extra):
        assert value not in output, "a secret leaked into the bridge's output"
        assert value not in status, "a secret leaked into the status file"


def run_bridge_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """``linerelay bridge ARGS`` to completion."""
    return subprocess.run(
        [LINERELAY, "bridge", *args], capture_output=True, text=True, timeout=60, check=False
    )


class FreezableProxy:
    """A TCP proxy to ``port`` on 127.0.0.1 whose open connections can be frozen.

    A frozen connection stays open but carries nothing either way: what a
    half-open connection (a NAT that forgot it, a peer that vanished) looks like.
    """

    def __init__(self, port: int) -> None:
        self._upstream = port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._frozen: set[int] = set()
        self._open: list[tuple[socket.socket, socket.socket]] = []
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self._upstream))
            with self._lock:
                self._open.append((client, upstream))
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(
                    target=self._pump, args=(src, dst, id(client)), daemon=True
                ).start()

    def _pump(self, src: socket.socket, dst: socket.socket, conn: int) -> None:
        try:
            while data := src.recv(65536):
                if conn not in self._frozen:
                    dst.sendall(data)
        except OSError:
            pass
        finally:
            if conn not in self._frozen:
                for sock in (src, dst):
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)

    def freeze(self) -> None:
        """Stop forwarding on every connection open now; new ones still work."""
        with self._lock:
            self._frozen.update(id(client) for client, _ in self._open)

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        with self._lock:
            for pair in self._open:
                for sock in pair:
                    sock.close()
