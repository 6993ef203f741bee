"""Stopping a process the tests started: the one terminate, wait, kill."""

from __future__ import annotations

import signal
import subprocess
from typing import Any


def stop(proc: subprocess.Popen[Any], timeout: float = 20.0, signum: int = signal.SIGTERM) -> int:
    """Send ``signum`` (SIGTERM), wait up to ``timeout`` seconds, then SIGKILL; the exit status.

    A process that had to be killed returns ``-SIGKILL``, so a test asserting a
    clean exit fails on a hang. One that already ended just returns its status.
    """
    if proc.poll() is None:
        proc.send_signal(signum)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait()
