"""One time source, injected wherever time is read: the agent runtime, the planner client and
service, and the simulator's adapters. Code that plans takes the time as an input; code that
waits or stamps asks its :class:`Clock`, so the same code runs live, in replay and in tests.

``now()`` is the clock's own time line: wall time (seconds since the epoch) for what is shown to
people and compared across machines, monotonic time for leases and intervals (never jumps back),
simulated time in replay and tests (it moves only when told to).
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    """A source of the current time in seconds."""

    def now(self) -> float: ...


class WallClock:
    """Seconds since the epoch (``time.time``): timestamps people and other machines read."""

    def now(self) -> float:
        return time.time()


class MonotonicClock:
    """A clock that never goes back (``time.monotonic``): leases, timeouts, intervals."""

    def now(self) -> float:
        return time.monotonic()


class SimulatedClock:
    """Time that moves only when set or advanced: replay and tests."""

    def __init__(self, start: float = 0.0):
        self._now = start

    def now(self) -> float:
        return self._now

    def set(self, now: float) -> None:
        self._now = now

    def advance(self, seconds: float) -> None:
        self._now += seconds
