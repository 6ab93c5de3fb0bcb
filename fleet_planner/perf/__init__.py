"""Engine performance: profiles measured before deployment and the latency model built on them."""

from fleet_planner.perf.model import PerfModel
from fleet_planner.perf.profile import EngineProfile, load_profile

__all__ = ["EngineProfile", "PerfModel", "load_profile"]
