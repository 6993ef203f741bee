"""The relay's side of systemd: inherited sockets, readiness and the watchdog.

Pure functions of the environment systemd hands a service, so they can be
tested without systemd, and no library beyond the standard one:

- :func:`listen_fds` reads socket activation's ``LISTEN_PID``/``LISTEN_FDS``/
  ``LISTEN_FDNAMES`` as sd_listen_fds(3) does;
- :class:`Notifier` sends sd_notify(3) datagrams (``READY=1``, ``RELOADING=1``,
  ``STOPPING=1``, ``WATCHDOG=1``, ``STATUS=``) to ``$NOTIFY_SOCKET`` and does
  nothing without it;
- :func:`watchdog_interval` reads ``WATCHDOG_USEC``/``WATCHDOG_PID``.

``linerelay serve`` re-executes itself once to set ``OPENSSL_CONF``
(:func:`tls.policy.exec_with_openssl_conf`); ``execv`` keeps the pid and the
inherited descriptors, so ``LISTEN_PID`` and ``WATCHDOG_PID`` still match.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping

#: The first inherited descriptor (sd_listen_fds(3): SD_LISTEN_FDS_START).
LISTEN_FDS_START = 3


def listen_fds(environ: Mapping[str, str], pid: int | None = None) -> dict[str, int]:
    """The sockets systemd passed to this process, by ``FileDescriptorName=``.

    Empty unless ``LISTEN_PID`` is this process (``pid``, default ours): the
    variables may have been inherited from a parent they were meant for.
    Descriptors without a name are called ``unknown`` (as sd_listen_fds_with_names
    does); when two share a name, the first is kept.
    """
    pid = os.getpid() if pid is None else pid
    try:
        if int(environ.get("LISTEN_PID", "")) != pid:
            return {}
        count = int(environ.get("LISTEN_FDS", ""))
    except ValueError:
        return {}
    names = environ.get("LISTEN_FDNAMES", "").split(":") if "LISTEN_FDNAMES" in environ else []
    found: dict[str, int] = {}
    for index in range(max(count, 0)):
        name = names[index] if index < len(names) and names[index] else "unknown"
        found.setdefault(name, LISTEN_FDS_START + index)
    return found


def watchdog_interval(environ: Mapping[str, str], pid: int | None = None) -> float | None:
    """Seconds within which systemd expects ``WATCHDOG=1``; None when no watchdog is set."""
    pid = os.getpid() if pid is None else pid
    try:
        usec = int(environ.get("WATCHDOG_USEC", ""))
        if "WATCHDOG_PID" in environ and int(environ["WATCHDOG_PID"]) != pid:
            return None
    except ValueError:
        return None
    return usec / 1_000_000 if usec > 0 else None


class Notifier:
    """Sends sd_notify(3) messages to the service manager, if there is one."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        path = environ.get("NOTIFY_SOCKET", "")
        # "@name" is a socket in the abstract namespace: a leading NUL byte.
        self.address: str | None = "\0" + path[1:] if path.startswith("@") else path or None

    @property
    def enabled(self) -> bool:
        """True when a service manager is listening."""
        return self.address is not None

    def send(self, *assignments: str) -> bool:
        """Send ``KEY=VALUE`` lines in one datagram; True if it was sent.

        A failure to notify must never take the relay down: it is reported
        by the return value only (systemd then restarts or times out the
        service, which is the signal an operator sees).
        """
        if self.address is None:
            return False
        message = "\n".join(assignments).encode("utf-8")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.settimeout(1.0)
                sock.sendto(message, self.address)
        except OSError:
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        """Startup (or a reload) finished: ``READY=1``."""
        return self.send("READY=1", *_status(status))

    def reloading(self, status: str | None = None) -> bool:
        """A reload began: ``RELOADING=1`` (with the monotonic time newer systemd asks for)."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.send("RELOADING=1", f"MONOTONIC_USEC={usec}", *_status(status))

    def stopping(self, status: str | None = None) -> bool:
        """Shutdown began: ``STOPPING=1``."""
        return self.send("STOPPING=1", *_status(status))

    def watchdog(self) -> bool:
        """Still alive: ``WATCHDOG=1``."""
        return self.send("WATCHDOG=1")

    def status(self, text: str) -> bool:
        """A one-line status for ``systemctl status``."""
        return self.send(*_status(text))


def _status(text: str | None) -> list[str]:
    return [] if text is None else ["STATUS=" + " ".join(text.split())]
