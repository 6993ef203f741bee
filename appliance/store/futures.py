"""The futures a store hands out, and waiting on them by a deadline without cancelling them."""

from __future__ import annotations

import asyncio
from typing import Any, TypeVar

T = TypeVar("T")


async def wait_until(future: asyncio.Future[Any], timeout: float) -> bool:  # noqa: ASYNC109
    """Wait for ``future`` at most ``timeout`` seconds without cancelling it; True if done.

    Cheaper than ``wait_for(shield(...))`` on the hot path: no task is created.
    A future still running at the deadline may fail later, when its caller has
    answered without it (a webhook's 503): that failure is marked retrieved, so
    asyncio does not log it as an error nobody saw.
    """
    if future.done():
        return True
    if timeout <= 0:
        future.add_done_callback(_retrieve)
        return False
    loop = asyncio.get_running_loop()
    waiter = loop.create_future()

    def wake(_: object = None) -> None:
        if not waiter.done():
            waiter.set_result(None)

    future.add_done_callback(wake)
    timer = loop.call_later(timeout, wake)
    try:
        await waiter
    finally:
        timer.cancel()
        future.remove_done_callback(wake)
    if not future.done():
        future.add_done_callback(_retrieve)
        return False
    return True


def _retrieve(future: asyncio.Future[Any]) -> None:
    """Mark a late failure seen (see :func:`wait_until`); the caller may still read it."""
    if not future.cancelled():
        future.exception()


def resolved(loop: asyncio.AbstractEventLoop, value: T) -> asyncio.Future[T]:
    """A future already holding ``value``."""
    future: asyncio.Future[T] = loop.create_future()
    future.set_result(value)
    return future


def follow(loop: asyncio.AbstractEventLoop, first: asyncio.Future[Any]) -> asyncio.Future[Any]:
    """A future for a concurrent retry of ``first``'s webhook: None (a duplicate) once
    ``first`` succeeds, or ``first``'s error."""
    follower: asyncio.Future[Any] = loop.create_future()

    def copy(done: asyncio.Future[Any]) -> None:
        if follower.done():
            return
        error = None if done.cancelled() else done.exception()
        if error is None:
            follower.set_result(None)
        else:
            follower.set_exception(error)

    first.add_done_callback(copy)
    return follower
