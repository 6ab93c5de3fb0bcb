"""Limits every proposal passes last: step caps, per-pool min/max and the local GPU budget."""

from __future__ import annotations

import math

from fleet_planner.planning import DeploymentSpec, PoolRole
from local_agent.decide.options import AgentOptions
from local_agent.decide.reactive import Proposal
from local_agent.models import DecisionReason, PoolDecision, RuntimeLimits

R = DecisionReason


def bounds(spec: DeploymentSpec, limits: RuntimeLimits, role: PoolRole) -> tuple[int, int]:
    """A pool's (min, max): the spec's, tightened by the operator's run-time limits."""
    pool = spec.pools[role]
    low = limits.min_replicas.get(role, pool.min_replicas)
    high = min(limits.max_replicas.get(role, pool.max_replicas), pool.max_replicas)
    return min(low, high), high


def capped(
    proposal: Proposal, current: int, low: int, high: int, options: AgentOptions, enforce_steps: bool = True
) -> tuple[int, DecisionReason]:
    """The target after step caps (unless ``enforce_steps`` is off) and min/max, and its reason."""
    target, reason = proposal.wanted, proposal.reason
    if enforce_steps:
        if options.max_step_up is not None and target > current + options.max_step_up:
            target, reason = current + options.max_step_up, R.STEP_CAPPED
        if target < current - options.max_step_down:
            target, reason = current - options.max_step_down, R.STEP_CAPPED
    if target > high:
        target, reason = high, R.MAX_CAPPED
    if target < low:
        target, reason = low, R.MIN_FLOOR
    return max(0, target), reason


def apply_budget(spec: DeploymentSpec, budget: int | None, decisions: list[PoolDecision]) -> list[PoolDecision]:
    """Local GPU budget: shrink the *increases* proportionally so the total fits; never turn a
    requested increase into a decrease, never exceed a pool's maximum. The budget is counted from
    the agent's own targets, so it cannot fail open when GPU counts cannot be read."""
    if budget is None:
        return decisions
    gpus = {d.role: spec.pools[d.role].gpus_per_replica for d in decisions}
    total = sum(d.target * gpus[d.role] for d in decisions)
    if total <= budget:
        return decisions
    base = {d.role: min(d.target, d.current) for d in decisions}
    base_gpus = sum(base[r] * gpus[r] for r in base)
    while base_gpus > budget:
        # The budget is below what is already held (lowered at run time): a cap holds anyway,
        # so the largest holder gives back one replica at a time (scale-downs drain).
        role = max(base, key=lambda r: base[r] * gpus[r])
        base[role] -= 1
        base_gpus -= gpus[role]
    extra = {d.role: d.target - base[d.role] for d in decisions}
    room = max(0, budget - base_gpus)
    want = sum(extra[r] * gpus[r] for r in extra)
    scale = room / want if want else 0.0
    adjusted = []
    for d in decisions:
        granted = base[d.role] + int(math.floor(extra[d.role] * scale))
        if granted != d.target:
            d = d.model_copy(
                update={"target": granted, "reason": R.BUDGET_CAPPED, "detail": f"local budget {budget} GPUs"}
            )
        adjusted.append(d)
    return adjusted
