"""The master's last round of counts: every worker's figures in before a run ends.

Workers send their counts to the master once a second, and Locust's own
request statistics with a report every three seconds; a worker's final
report can arrive after the master has already closed the run (it waits half
a second for it). So before the load shape ends a distributed run, the
master asks every connected worker for what it has counted so far, and each
answers with its next Locust stats report, its counts sent just ahead of it
(a worker's messages arrive in order). Once every worker has answered (or a
timeout passed), every count and every Locust statistic a worker made
before the question is in. The bookkeeping here is pure; the locustfile
sends and receives the messages.
"""

from __future__ import annotations

from collections.abc import Iterable

#: How long the master waits for the workers' answers before ending the run anyway.
TIMEOUT_SECONDS = 10.0


class FinalCounts:
    """Rounds of "send me your counts" to a set of workers, and whether one is complete."""

    def __init__(self, timeout: float = TIMEOUT_SECONDS) -> None:
        self.timeout = timeout
        self.round = 0
        self._waiting: set[str] | None = None
        self._deadline = 0.0

    @property
    def is_open(self) -> bool:
        """Whether a round has been asked for and not cancelled."""
        return self._waiting is not None

    def open(self, workers: Iterable[str], now: float) -> int:
        """Start a round awaiting ``workers``' answers; its number, to send along."""
        self.round += 1
        self._waiting = set(workers)
        self._deadline = now + self.timeout
        return self.round

    def answered(self, worker: str, round_number: int) -> None:
        """``worker`` answered round ``round_number``; answers to older rounds do not count."""
        if self._waiting is not None and round_number == self.round:
            self._waiting.discard(worker)

    def missing(self) -> set[str]:
        """The workers that have not answered the open round."""
        return set(self._waiting or ())

    def settled(self, now: float) -> bool:
        """Whether the open round is complete, or has waited out its timeout."""
        return self._waiting is not None and (not self._waiting or now >= self._deadline)

    def cancel(self) -> None:
        """Forget the open round (the counts changed; a later round asks again)."""
        self._waiting = None
