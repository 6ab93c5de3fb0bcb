"""Elapsed-time tests that give live ticks the answers replayed ones get.

Replayed ticks fall exactly on multiples of the tick; live ones land a few milliseconds either
side of them (the loop's wake-up, a scrape). Compared exactly, 180 s between two live ticks is
179.999 s about half the time, and whatever that interval gates waits one tick longer than in
replay (the demo's forecast sizings drifted to a later tick each time). Every interval the agent
times is therefore compared with a slack of a tenth of a tick, in the direction that leaves
replay's answer unchanged.
"""

from __future__ import annotations

TICK_SLACK = 0.1  # of a tick: far above live jitter, far below any interval that is not a whole number of ticks


class Elapsed:
    """Interval tests for an agent ticking every ``tick_s``."""

    def __init__(self, tick_s: float):
        self.slack_s = TICK_SLACK * tick_s

    def reached(self, now_s: float, since_s: float, interval_s: float) -> bool:
        """``interval_s`` or more has passed since ``since_s`` (ticks that far apart count)."""
        return now_s - since_s >= interval_s - self.slack_s

    def beyond(self, now_s: float, since_s: float, interval_s: float) -> bool:
        """More than ``interval_s`` has passed since ``since_s`` (ticks exactly that far apart do not count)."""
        return now_s - since_s > interval_s + self.slack_s
