"""Group commit's bookkeeping, without I/O: which operations go into the next write.

While one batch is being made durable, every operation that arrives waits;
when it is done, all of them (up to ``max_batch``) form the next batch, so
under load many webhooks share one fsync (or one Redis round trip) and each
is answered only after it. A store drives a :class:`Batcher` from its event
loop: it schedules a flush when :meth:`Batcher.submit` says so, writes what
:meth:`Batcher.take` gives it, and reports the end with :meth:`Batcher.done`.
"""

from __future__ import annotations

from typing import Generic, TypeVar

T = TypeVar("T")


class Batcher(Generic[T]):
    """The queue of operations waiting for the next write, and whether one is under way."""

    def __init__(self, max_batch: int) -> None:
        self.max_batch = max_batch
        self.pending: list[T] = []
        #: A batch is being written (taken and not yet done).
        self.writing = False
        #: A flush is scheduled and has not run yet.
        self.scheduled = False

    @property
    def idle(self) -> bool:
        """Nothing waiting and nothing being written."""
        return not self.pending and not self.writing

    def submit(self, op: T) -> bool:
        """Queue ``op``; True when the caller must schedule a flush (none is on its way)."""
        self.pending.append(op)
        return self.request_flush()

    def request_flush(self) -> bool:
        """True when a flush should be scheduled now: none is scheduled or writing."""
        if self.scheduled or self.writing:
            return False
        self.scheduled = True
        return True

    def take(self) -> list[T]:
        """The scheduled flush runs: the next batch, oldest first ([] if none is due)."""
        self.scheduled = False
        if self.writing or not self.pending:
            return []
        batch, self.pending = self.pending[: self.max_batch], self.pending[self.max_batch :]
        self.writing = True
        return batch

    def put_back(self, batch: list[T]) -> None:
        """The batch could not be written now (a lock): it goes first into a later flush,
        which the caller schedules (:attr:`scheduled` is set)."""
        self.pending[:0] = batch
        self.writing = False
        self.scheduled = True

    def done(self) -> bool:
        """The batch is written (or failed); True when the caller must schedule a flush."""
        self.writing = False
        return bool(self.pending) and self.request_flush()
