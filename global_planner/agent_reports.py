"""What an agent tells the global planner about one planning step: its pools' demand curves and
replica counts, and its forecast. Shared by the live agent (``local_agent.runtime``) and the
simulator's ``global`` policy (``global_planner.simulated``), so both bid exactly alike.
"""

from __future__ import annotations

from global_planner.service.models import Forecast, PoolReport
from local_agent.models import AgentDecision, PoolDecision


def capped(values: list[float], target_attainment: float) -> list[float]:
    """Attainment above the SLO target is worth no GPU: curves are capped at it, so the planner
    buys the target at least cost and trades only in a shortage."""
    return [min(value, target_attainment) for value in values]


def pool_report(
    pool: PoolDecision,
    target_attainment: float,
    *,
    ready: int,
    starting: int = 0,
    draining: int = 0,
    pending: int = 0,
) -> PoolReport:
    """One pool's report: capped curves (the pessimistic one only when it matches) and counts."""
    low = capped(pool.curve_low, target_attainment) if len(pool.curve_low) == len(pool.curve) else []
    return PoolReport(
        role=pool.role,
        ready=ready,
        starting=starting,
        draining=draining,
        pending=pending,
        curve=capped(pool.curve, target_attainment),
        pessimistic_curve=low,
    )


def forecast_of(decision: AgentDecision) -> Forecast | None:
    """The step's load forecast, when it has one (upper never below mean)."""
    if decision.forecast_rps is None or decision.forecast_upper_rps is None:
        return None
    return Forecast(mean_rps=decision.forecast_rps, upper_rps=max(decision.forecast_upper_rps, decision.forecast_rps))
