"""Waiting for a condition: the one poll loop of the tests, sync and async."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

#: Generous: the machine has two cores shared with other test runs.
TIMEOUT = 30.0


def wait_for(
    condition: Callable[[], Any],
    what: str | Callable[[], str] = "condition",
    timeout: float = TIMEOUT,
    interval: float = 0.05,
) -> Any:
    """Poll ``condition`` until it returns something truthy; that value is returned.

    After ``timeout`` seconds the test fails saying what it waited for: ``what``,
    or what ``what()`` says then (the state the condition saw, say).
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {_said(what)}")
        time.sleep(interval)


async def async_wait_for(
    condition: Callable[[], Awaitable[Any]],
    what: str | Callable[[], str] = "condition",
    timeout: float = TIMEOUT,
    interval: float = 0.05,
) -> Any:
    """:func:`wait_for` for coroutine conditions."""
    deadline = time.monotonic() + timeout
    while True:
        value = await condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {_said(what)}")
        await asyncio.sleep(interval)


def _said(what: str | Callable[[], str]) -> str:
    return what() if callable(what) else what
