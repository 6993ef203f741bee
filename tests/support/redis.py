"""A real ``redis-server`` for tests: its own port and directory, AOF on, killable.

Never the system's Redis: each :class:`RedisServer` runs ``/usr/bin/redis-server``
on a free loopback port with its data in a temporary directory, configured as
docs/redis.md tells operators to (``appendonly yes``, ``appendfsync always``),
so a test can ``kill -9`` it and start it again on the same directory and port
and find every write it was told had succeeded. A server started with
``replica_of`` is a replica of another (``--replicaof``), configured the same;
:meth:`RedisServer.pause` freezes one (SIGSTOP) so that its primary's ``WAIT``
falls short, as with a replica that hangs or is cut off.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from appliance.tenants_redis import RedisTenantRegistry
from tests.support import processes
from tests.support.relay import free_port
from tests.support.tenants import NewTenant
from tests.support.waiting import wait_for

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


class RedisServer:
    """One redis-server process; :meth:`start` it, then use :attr:`url`."""

    def __init__(
        self,
        directory: Path,
        fsync: str = "always",
        port: int | None = None,
        replica_of: RedisServer | None = None,
    ) -> None:
        self.directory = directory
        self.fsync = fsync
        self.port = port or free_port()
        #: The primary this server replicates, or None.
        self.replica_of = replica_of
        self.proc: subprocess.Popen[bytes] | None = None
        self.paused = False
        directory.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``"""
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def log_file(self) -> Path:
        """Where the server logs."""
        return self.directory / "redis.log"

    def start(self) -> RedisServer:
        """Start (or start again, on the same directory and port) and wait for PING."""
        args = [
            REDIS_SERVER,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.directory),
            "--appendonly",
            "yes",
            "--appendfsync",
            self.fsync,
            "--save",
            "",
            "--logfile",
            str(self.log_file),
            "--daemonize",
            "no",
            # A replica's first sync starts at once (Redis waits 5 s for more replicas).
            "--repl-diskless-sync-delay",
            "0",
        ]
        if self.replica_of is not None:
            args += ["--replicaof", "127.0.0.1", str(self.replica_of.port)]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        wait_for(self._answers, lambda: f"redis-server to answer:\n{self._log_tail()}", 30)
        return self

    def _answers(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"redis-server exited {self.proc.returncode}:\n{self._log_tail()}")
        try:
            client = redis.Redis(port=self.port, socket_timeout=1)
            try:
                # LOADING while the AOF is replayed: not ready yet.
                return bool(client.ping())
            finally:
                client.close()
        except redis.RedisError:
            return False

    def _log_tail(self) -> str:
        text = self.log_file.read_text(errors="replace") if self.log_file.exists() else ""
        return "\n".join(text.splitlines()[-20:])

    def client(self) -> redis.Redis:
        """A synchronous client of this server (for test set-up and checks)."""
        return redis.Redis(port=self.port, socket_timeout=10)

    def kill(self) -> None:
        """SIGKILL: Redis gets no chance to write anything more."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()
        # The port is free once the kernel has dropped the listening socket.
        wait_for(lambda: _port_free(self.port), "redis' port to be free", 10)

    def stop(self) -> None:
        """SIGTERM and wait (SIGKILL if it hangs); a paused server is resumed first."""
        if self.proc is not None:
            if self.paused:
                self.resume()
            processes.stop(self.proc, 10)

    def pause(self) -> None:
        """SIGSTOP: the process stays, its connections stay open, and it answers nothing
        (a replica that hangs: its primary still counts it connected)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        """SIGCONT after :meth:`pause`."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)
        self.paused = False

    def replicas_in_sync(self) -> int:
        """How many replicas of this primary are online and have acknowledged all of its
        writes (replicas acknowledge once a second, or when a ``WAIT`` asks)."""
        client = self.client()
        try:
            info = client.info("replication")
        finally:
            client.close()
        offset = info["master_repl_offset"]
        return sum(
            1
            for i in range(int(info["connected_slaves"]))
            if info[f"slave{i}"]["state"] == "online" and info[f"slave{i}"]["offset"] >= offset
        )

    def restart(self) -> RedisServer:
        """Start again on the same directory and port (after :meth:`kill` or :meth:`stop`)."""
        return self.start()


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            time.sleep(0.05)
            return False
        return True


@contextlib.contextmanager
def running_redis(directory: Path) -> Iterator[RedisServer]:
    """A :class:`RedisServer` on ``directory``, started, and stopped at the end."""
    server = RedisServer(directory).start()
    try:
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def running_replica(directory: Path, primary: RedisServer) -> Iterator[RedisServer]:
    """A replica of ``primary`` on ``directory``, started and in sync with it, and
    stopped at the end."""
    replica = RedisServer(directory, replica_of=primary).start()
    try:
        wait_for(lambda: primary.replicas_in_sync() >= 1, "the replica to be in sync", 30)
        yield replica
    finally:
        replica.stop()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One redis-server for a test session's store tests (each test uses its own key prefix)."""
    with running_redis(tmp_path_factory.mktemp("redis")) as server:
        yield server


def add_redis_tenant(url: str, tenant: str | None = None, secret: str | None = None) -> NewTenant:
    """Add a tenant (default: a unique ``t-`` id, a random secret) to the tenants in Redis,
    with the code behind ``tenant add`` on ``store = "redis"``."""
    tenant = tenant or f"t-{uuid.uuid4().hex[:12]}"
    secret = secret or secrets.token_hex(16)
    registry = RedisTenantRegistry(url)
    try:
        token = registry.add(tenant, secret)
    finally:
        registry.close()
    return NewTenant(tenant, secret, token)


def relay_config(server: RedisServer, **extra: object) -> str:
    """A relay config (TOML) on ``server``'s Redis, with ``extra`` keys."""
    lines = ['store = "redis"', f'redis_url = "{server.url}"']
    lines += [f"{key} = {json.dumps(value)}" for key, value in extra.items()]
    return "\n".join(lines) + "\n"
