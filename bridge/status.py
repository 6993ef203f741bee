"""The status readout: what the running bridge is doing, in ``STATE/status.json``.

The running bridge rewrites the file (atomically: write, fsync, rename)
about once a second; ``linerelay bridge --status`` reads it. It holds the
connection state, the queue depth, the last error and counters since start;
never a secret, a token or message text.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

STATUS_FILE = "status.json"

#: A status older than this (seconds) means the bridge is not running any more.
STALE_AFTER = 15.0


@dataclass
class BridgeStatus:
    """The live status; fields are set by the link, the worker and the service.

    ``connection`` is one of starting, connecting, connected, backoff,
    rejected (the relay refused the token), stopping, stopped. ``tenant`` and
    ``protocol`` (the bridge protocol negotiated) are those of the last connection.
    """

    connection: str = "starting"
    tenant: str = ""
    protocol: int | None = None
    connected_since: float | None = None
    queue_depth: int = 0
    in_flight: int = 0
    failed_jobs: int = 0
    last_error: str = ""
    last_error_at: float | None = None
    counters: Counter[str] = field(default_factory=Counter)

    def error(self, text: str) -> None:
        """Remember ``text`` as the last error (already free of secrets)."""
        self.last_error = text
        self.last_error_at = time.time()

    def count(self, name: str, amount: int = 1) -> None:
        """Add ``amount`` to counter ``name``."""
        self.counters[name] += amount

    def snapshot(self, pid: int) -> dict[str, Any]:
        """The JSON object written to the status file."""
        return {
            "pid": pid,
            "updated_at": round(time.time(), 3),
            "connection": self.connection,
            "tenant": self.tenant,
            "protocol": self.protocol,
            "connected_since": self.connected_since,
            "queue_depth": self.queue_depth,
            "in_flight": self.in_flight,
            "failed_jobs": self.failed_jobs,
            "last_error": self.last_error,
            "last_error_at": self.last_error_at,
            "counters": dict(sorted(self.counters.items())),
        }


def write_status(state_dir: Path, snapshot: dict[str, Any]) -> None:
    """Replace the status file atomically, so a reader never sees half of it."""
    path = state_dir / STATUS_FILE
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        json.dump(snapshot, fh, indent=1)
        fh.write("\n")
    os.replace(tmp, path)


class StatusUnavailable(Exception):
    """No readable status file: the bridge never ran with this state dir."""


def read_status(state_dir: Path) -> dict[str, Any]:
    """The last status the bridge wrote; raises :class:`StatusUnavailable`."""
    path = state_dir / STATUS_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise StatusUnavailable(f"no status at {path}: {exc.strerror}") from exc
    except ValueError as exc:
        raise StatusUnavailable(f"status file {path} is not JSON") from exc
    if not isinstance(data, dict):
        raise StatusUnavailable(f"status file {path} is not a JSON object")
    return data


def is_running(snapshot: dict[str, Any], now: float | None = None) -> bool:
    """Whether the status is fresh and the process that wrote it is alive."""
    now = time.time() if now is None else now
    updated = snapshot.get("updated_at")
    if not isinstance(updated, int | float) or now - updated > STALE_AFTER:
        return False
    if snapshot.get("connection") == "stopped":
        return False
    pid = snapshot.get("pid")
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def format_status(snapshot: dict[str, Any], now: float | None = None) -> str:
    """A few human-readable lines for ``--status``."""
    now = time.time() if now is None else now
    running = is_running(snapshot, now)
    lines = [
        f"running:      {'yes' if running else 'no'} (pid {snapshot.get('pid')})",
        f"connection:   {snapshot.get('connection')}"
        + (f" as tenant {snapshot['tenant']}" if snapshot.get("tenant") else "")
        + (f", protocol {snapshot['protocol']}" if snapshot.get("protocol") else ""),
        f"queue depth:  {snapshot.get('queue_depth')} (in flight {snapshot.get('in_flight')},"
        f" given up {snapshot.get('failed_jobs')})",
    ]
    error = snapshot.get("last_error") or "none"
    when = snapshot.get("last_error_at")
    if isinstance(when, int | float):
        error += f" ({int(now - when)} s ago)"
    lines.append(f"last error:   {error}")
    counters = snapshot.get("counters") or {}
    if isinstance(counters, dict) and counters:
        lines.append("counters:     " + ", ".join(f"{k}={v}" for k, v in counters.items()))
    return "\n".join(lines)
