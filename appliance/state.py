"""The state directory: what lives in it, and that it stays private.

Tenants (with their channel secrets), the store (message bodies: personal
data) and the dev PKI's keys live here, so the directory is 0700 and every
file in it 0600 whatever the process umask. The relay and ``tenant add``
create it; every other command refuses one that does not exist, so a typo
in ``--state-dir`` is an error rather than a fresh, empty state.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from appliance.errors import StateDirError

STORE = "store.db"
TENANTS = "tenants.db"
PKI = "pki"
PID_FILE = "relay.pid"
CONFIG = "config"
PROVISIONED_TENANTS = "provisioned-tenants.json"
CONSOLE = "console.db"


@dataclass(frozen=True)
class StateDir:
    """Names the files of one state directory."""

    path: Path

    @property
    def store(self) -> Path:
        """The SQLite store."""
        return self.path / STORE

    @property
    def tenants(self) -> Path:
        """The tenants file."""
        return self.path / TENANTS

    @property
    def pki(self) -> Path:
        """The embedded dev PKI's folder."""
        return self.path / PKI

    @property
    def pid_file(self) -> Path:
        """The running relay's pid, locked while it runs."""
        return self.path / PID_FILE

    @property
    def config(self) -> Path:
        """Where ``linerelay provision`` puts relay.toml and tls/ unless told otherwise."""
        return self.path / CONFIG

    @property
    def provisioned_tenants(self) -> Path:
        """Tenants ever added from a credential, so one the operator removed stays removed."""
        return self.path / PROVISIONED_TENANTS

    @property
    def console(self) -> Path:
        """The console's admin token (hashed) and login sessions (appliance/console)."""
        return self.path / CONSOLE

    def create(self) -> StateDir:
        """Create the directory if needed, and make it private (0700) if we own it."""
        self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            if self.path.stat().st_mode & 0o077:
                os.chmod(self.path, 0o700)
        except PermissionError:
            pass  # not ours (a systemd StateDirectory=, say): its owner set the mode
        return self

    def existing(self) -> StateDir:
        """This state dir; raises :class:`StateDirError` if it does not exist."""
        if not self.path.is_dir():
            raise StateDirError(
                f"state dir {self.path} does not exist "
                "(check --state-dir or $LINERELAY_STATE_DIR; `linerelay serve` "
                "and `linerelay tenant add` create it)"
            )
        return self


def create_private(path: Path) -> None:
    """Create the file ``path`` (and its directory) readable by its owner only.

    An existing file is made 0600 too: files from a looser umask are tightened.
    """
    StateDir(path.parent).create()
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
    os.chmod(path, 0o600)
