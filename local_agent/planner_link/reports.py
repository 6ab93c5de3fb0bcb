"""What an agent tells the global planner about one planning step: its pools' demand curves and
replica counts, and its forecast. Shared by the live agent (``local_agent.runtime``) and the
simulator's ``global`` policy (``fleet_sim.adapters.planner``), so both bid exactly alike.
"""

from __future__ import annotations

from fleet_planner.contract.models import Forecast, Observed, PoolReport
from local_agent.models import AgentDecision, DecisionReason, PoolDecision


def bid_curves(pool: PoolDecision) -> tuple[list[float], list[float]]:
    """A pool's bid: SLO attainment for each replica count 0..max, expected over the forecast's
    uncertainty (what the planner values the pool by) and at its upper quantile (for explain).

    These are the agent's capacity-model curves, whatever it runs now: a bid must say what each
    count is worth, not what the agent happens to want this tick. (Bidding a ramp up to the
    agent's own target was measured first: a starved agent's reactive loop raises its target to
    the pool's maximum, which flattens the ramp and makes each replica it lacks look worth less
    the more it is starved.) Until the agent has sized the pool once there is no curve: the
    planner holds the pool, except where the agent decides without its model: a pool with no
    replica that asks for some (requests wait with none to serve them), or one whose traffic
    stopped (it goes to its minimum). Those bid a step at the agent's target (nothing served below
    it, all of it from there on; within the pool's bounds, unlike ``wanted``), so the planner does
    what the agent alone would do at once."""
    if not pool.curve:
        if (pool.current == 0 and pool.target > 0) or pool.reason == DecisionReason.IDLE_TO_MIN:
            step = [0.0] * pool.target + [1.0]
            return step, step
        return [], []
    mean = list(pool.curve)
    upper = list(pool.curve_low) if len(pool.curve_low) == len(mean) else mean
    return mean, upper


def pool_report(
    pool: PoolDecision,
    *,
    ready: int,
    starting: int = 0,
    draining: int = 0,
    pending: int = 0,
) -> PoolReport:
    """One pool's report: its bid curves, what the agent would run alone, and replica counts."""
    curve, pessimistic = bid_curves(pool)
    return PoolReport(
        role=pool.role,
        ready=ready,
        starting=starting,
        draining=draining,
        pending=pending,
        curve=curve,
        pessimistic_curve=pessimistic,
        replica_capacity_rps=pool.replica_capacity_rps,
        wanted_replicas=pool.wanted if curve else None,
        queued_requests=pool.queued_requests,
        late_rps_per_replica=pool.late_rps_per_replica,
    )


def forecast_of(decision: AgentDecision) -> Forecast | None:
    """The step's load forecast, when it has one (upper never below mean)."""
    if decision.forecast_rps is None or decision.forecast_upper_rps is None:
        return None
    return Forecast(mean_rps=decision.forecast_rps, upper_rps=max(decision.forecast_upper_rps, decision.forecast_rps))


def observed_of(decision: AgentDecision, window_s: float) -> Observed | None:
    """The rate the agent observed over its last window, when it has one: the planner checks the
    forecast it bids with against the rate (a tenant cannot win GPUs by inflating a forecast) and,
    over the window, counts each pool's queue (``PoolReport.queued_requests``) as load that pool
    has not carried."""
    if decision.observed_rps is None:
        return None
    return Observed(window_s=window_s, admitted_rps=decision.observed_rps)
