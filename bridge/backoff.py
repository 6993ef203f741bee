"""The reconnect schedule: exponential backoff with full jitter, without I/O.

Steps grow from ``minimum`` by doubling; each delay is drawn uniformly from
the step to one and a half steps and capped at ``maximum``, so every delay
lies within [minimum, maximum] and a fleet of bridges that lost the relay
together does not come back in lockstep. A successful ``hello`` resets the
schedule; a rejected token waits the cap.
"""

from __future__ import annotations

import random
from collections.abc import Callable


class Backoff:
    """Delays between connection attempts."""

    def __init__(
        self,
        minimum: float = 5.0,
        maximum: float = 60.0,
        rand: Callable[[], float] = random.random,
    ) -> None:
        """``rand`` returns a float in [0, 1); tests pass a fixed one."""
        if minimum <= 0 or maximum < minimum:
            raise ValueError("need 0 < minimum <= maximum")
        self.minimum = minimum
        self.maximum = maximum
        self._rand = rand
        self._failures = 0

    @property
    def failures(self) -> int:
        """Failed attempts since the last reset."""
        return self._failures

    def step(self) -> float:
        """The un-jittered delay the next failure would get."""
        # Capping the exponent keeps 2**n finite however long the relay stays away.
        return min(self.maximum, self.minimum * 2.0 ** min(self._failures, 32))

    def next_delay(self) -> float:
        """Record a failed attempt and return how long to wait before the next one."""
        step = self.step()
        self._failures += 1
        return min(self.maximum, step * (1 + self._rand() / 2))

    def at_cap(self) -> float:
        """Record a failure that must not be hammered (a rejected token): wait the cap."""
        self._failures += 1
        return self.maximum

    def reset(self) -> None:
        """Start over from the minimum (after a successful ``hello``)."""
        self._failures = 0

    def configure(self, minimum: float, maximum: float) -> None:
        """Take new bounds from a reloaded config; the failure count stays."""
        if minimum <= 0 or maximum < minimum:
            raise ValueError("need 0 < minimum <= maximum")
        self.minimum = minimum
        self.maximum = maximum
