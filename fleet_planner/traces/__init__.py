"""Request-level traces: readers for public formats, synthesis from rate series, transformations."""

from fleet_planner.traces.trace import Trace

__all__ = ["Trace"]
