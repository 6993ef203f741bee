"""Where an operator command acts: on a running relay's admin API, or on a stopped one's store.

``linerelay webhooks`` and ``linerelay tenant purge`` change what a running
relay serves (its hub must learn of replays and of purged queues), so while a
relay holds the state dir's pid file they go through its admin JSON API
(appliance/webhooks_api.py); when none does, they open the configured store
themselves and use the same :class:`appliance.webhooks.Webhooks` the relay
would. The admin address comes from the config as for ``serve``
(``--config``, ``LINERELAY_*``, ``--admin-listen``). When the admin listener
asks for a token (it is not on loopback), it is read from
``$LINERELAY_ADMIN_TOKEN`` or ``--admin-token-file`` and sent as
``Authorization: Bearer``; it is never printed.

A stopped relay that never started has no SQLite store file yet. Opening it
would create it, owned by whoever ran the command (root, under sudo), so
:func:`local_webhooks` refuses (:class:`NoStore`) and the read-only commands
answer as an empty store without opening it (:func:`has_store`).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import ipaddress
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from appliance import config as config_module
from appliance.cli import add_state_dir, explicit_state_dir
from appliance.config import RelayConfig
from appliance.errors import ConfigError, StateDirError, StoreError
from appliance.state import StateDir
from appliance.store import create_store
from appliance.webhooks import Webhooks

ADMIN_TOKEN_ENV = "LINERELAY_ADMIN_TOKEN"  # noqa: S105 (a variable name, not a secret)
#: Seconds an admin API call may take.
ADMIN_TIMEOUT = 30.0


class OperatorError(Exception):
    """The command could not do its work; ``status`` is its exit status (2: bad input)."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


class NoStore(OperatorError):
    """The stopped relay has no store file yet (the relay creates it when it first starts)."""


def add_relay_options(parser: argparse.ArgumentParser) -> None:
    """``--state-dir``, ``--config``, ``--admin-listen`` and ``--admin-token-file``."""
    add_state_dir(parser)
    parser.add_argument("--config", type=Path, help="the relay's TOML config (docs/config.md)")
    parser.add_argument(
        "--admin-listen", metavar="HOST:PORT", help="the running relay's admin listener"
    )
    parser.add_argument(
        "--admin-token-file",
        type=Path,
        help=f"file holding the admin token (default: ${ADMIN_TOKEN_ENV}), for an admin "
        "listener that is not on loopback",
    )


def relay_config(args: argparse.Namespace) -> RelayConfig:
    """The relay's config as ``serve`` would read it; raises :class:`OperatorError` (2)."""
    overrides = {
        "state_dir": explicit_state_dir(args),
        "admin_listen": getattr(args, "admin_listen", None),
    }
    try:
        return config_module.load(getattr(args, "config", None), os.environ, overrides)
    except ConfigError as exc:
        raise OperatorError(str(exc), 2) from exc


def existing_state(config: RelayConfig) -> StateDir:
    """The config's state dir, which must exist; raises :class:`OperatorError` (2)."""
    try:
        return StateDir(config.state_dir).existing()
    except StateDirError as exc:
        raise OperatorError(str(exc), 2) from exc


def relay_running(state: StateDir) -> bool:
    """Whether a relay holds ``state``'s pid file (it locks it while it runs)."""
    try:
        fd = os.open(state.pid_file, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def admin_base_url(admin_listen: str) -> str:
    """``http://HOST:PORT`` of an admin listener; a wildcard address means this machine."""
    host, port = config_module.parse_address(admin_listen, "admin_listen")
    with contextlib.suppress(ValueError):
        address = ipaddress.ip_address(host)
        if address.is_unspecified:
            host = "::1" if address.version == 6 else "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


def admin_token(args: argparse.Namespace) -> str | None:
    """The admin token from ``--admin-token-file`` or the environment, if any."""
    path: Path | None = getattr(args, "admin_token_file", None)
    if path is not None:
        try:
            token = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise OperatorError(f"cannot read the admin token from {path}: {exc}", 2) from exc
        if not token:
            raise OperatorError(f"the admin token file {path} is empty", 2)
        return token
    return os.environ.get(ADMIN_TOKEN_ENV) or None


@dataclass(frozen=True)
class Answer:
    """An admin API answer: its status and JSON object."""

    status: int
    body: dict[str, Any]


class AdminClient:
    """JSON calls to a running relay's admin API."""

    def __init__(self, base_url: str, token: str | None) -> None:
        self.base_url = base_url
        headers = {"Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._headers = headers

    def get(self, path: str, params: dict[str, str] | None = None) -> Answer:
        """``GET path``; raises :class:`OperatorError` if the relay cannot be asked."""
        return self._call("GET", path, params=params)

    def post(self, path: str, body: dict[str, Any]) -> Answer:
        """``POST path`` with a JSON body."""
        return self._call("POST", path, json=body)

    def _call(self, method: str, path: str, **kwargs: Any) -> Answer:
        url = self.base_url + path
        try:
            response = httpx.request(
                method, url, headers=self._headers, timeout=ADMIN_TIMEOUT, **kwargs
            )
        except httpx.HTTPError as exc:
            raise OperatorError(
                f"the relay runs but its admin listener {self.base_url} did not answer: {exc} "
                "(check --config or --admin-listen)"
            ) from exc
        if response.status_code in (401, 403):
            raise OperatorError(
                f"the admin listener refused the request ({response.status_code}): give the "
                f"admin token in ${ADMIN_TOKEN_ENV} or --admin-token-file",
                2,
            )
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise OperatorError(
                f"the admin listener answered {response.status_code} without a JSON object "
                f"to {method} {path} (is {self.base_url} a linerelay admin listener?)"
            )
        return Answer(response.status_code, body)


@dataclass(frozen=True)
class Target:
    """Where a command acts: ``client`` for a running relay, else the config's store."""

    config: RelayConfig
    state: StateDir
    client: AdminClient | None


def target(args: argparse.Namespace) -> Target:
    """A running relay's admin API, or (none running) its store; :class:`OperatorError`."""
    config = relay_config(args)
    state = existing_state(config)
    client = None
    if relay_running(state):
        client = AdminClient(admin_base_url(config.admin_listen), admin_token(args))
    return Target(config, state, client)


def has_store(target: Target) -> bool:
    """Whether the stopped relay's store exists: always for Redis (a server, not a file),
    for SQLite once the relay (or a write command) created the file."""
    return target.config.store == "redis" or target.state.store.exists()


@contextlib.asynccontextmanager
async def local_webhooks(target: Target) -> AsyncIterator[Webhooks]:
    """The stopped relay's store, opened for the command and closed after it;
    :class:`NoStore` rather than create a store file that does not exist."""
    if not has_store(target):
        raise NoStore(
            f"no store {target.state.store} yet: the relay creates it when it first starts"
        )
    store = create_store(target.config, target.state)
    try:
        await store.open()
    except StoreError as exc:
        raise OperatorError(str(exc)) from exc
    try:
        yield Webhooks(store)
    finally:
        await store.close()
