"""What an agent tells the global planner about one planning step: its pools' demand curves and
replica counts, and its forecast. Shared by the live agent (``local_agent.runtime``) and the
simulator's ``global`` policy (``global_planner.simulated``), so both bid exactly alike.
"""

from __future__ import annotations

from global_planner.service.models import Forecast, PoolReport
from local_agent.models import AgentDecision, PoolDecision


def bid_curve(pool: PoolDecision, target_attainment: float) -> list[float]:
    """A pool's bid: the value of each replica count, 0..max.

    Reaching the agent's own target (what it would run alone) is worth the SLO target, more is
    worth nothing, and each replica short of it loses an equal share (a linear, concave ramp).
    Why not the capacity model's curve itself: the agent's target already folds in what the curve
    cannot see (the reactive loop's corrections from observed latencies, consolidation guards,
    step limits that keep it from flapping), and a
    steady-state curve is an S (enough replicas or none) that would starve an overloaded or
    low-priority deployment completely in a shortage, although with fluctuating load partial
    capacity still serves part of its traffic. Empty (no bid: the planner holds the pool) until
    the agent has sized the pool once."""
    if not pool.curve:
        return []
    top = len(pool.curve) - 1
    wanted = min(pool.target, top)
    if wanted == 0:
        return [target_attainment] * (top + 1)
    return [target_attainment * min(1.0, count / wanted) for count in range(top + 1)]


def pool_report(
    pool: PoolDecision,
    target_attainment: float,
    *,
    ready: int,
    starting: int = 0,
    draining: int = 0,
    pending: int = 0,
) -> PoolReport:
    """One pool's report: its bid curve and replica counts."""
    return PoolReport(
        role=pool.role,
        ready=ready,
        starting=starting,
        draining=draining,
        pending=pending,
        curve=bid_curve(pool, target_attainment),
        replica_capacity_rps=pool.replica_capacity_rps,
    )


def forecast_of(decision: AgentDecision) -> Forecast | None:
    """The step's load forecast, when it has one (upper never below mean)."""
    if decision.forecast_rps is None or decision.forecast_upper_rps is None:
        return None
    return Forecast(mean_rps=decision.forecast_rps, upper_rps=max(decision.forecast_upper_rps, decision.forecast_rps))
