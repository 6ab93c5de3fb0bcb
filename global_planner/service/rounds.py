"""Allocation rounds: snapshot the bids, turn the allocator's answer into grants, record the round.

Pure functions over the ledger (:mod:`.ledger`); :class:`.state.PlannerState` sequences them.
A round is settled against the state *as it is after the solve*, persisted, then committed.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import groupby

from fleet_planner.contract.models import (
    AgentReport,
    DemandSummary,
    DeploymentRecord,
    PoolRecord,
    PoolReport,
    RoundRecord,
)
from fleet_planner.planning import PoolRole
from global_planner.allocation import Allocation, AllocationRequest, PoolDemand, endpoint_plans
from global_planner.allocation.split import SplitDecision
from global_planner.allocation.stability import deal, observed_short
from global_planner.policy_file import TenantPolicy
from global_planner.service import drains
from global_planner.service.ledger import DeploymentState, PoolState, committed_gpus


@dataclass(frozen=True)
class RoundInput:
    """A snapshot for one allocation: the request and which pools bid in it."""

    time_s: float
    decision_id: int
    request: AllocationRequest | None
    held_gpus: dict[str, int]
    demand: dict[str, DemandSummary]
    shedding: frozenset[str] = frozenset()  # endpoints whose gateway sheds under the round in force


@dataclass(frozen=True)
class PoolUpdate:
    grant: int
    usage: int
    pending_release: int | None
    allocated: int
    reason: str
    headroom: int = 0  # replicas of the grant lent from idle GPUs above the ask (fill_idle)


def snapshot(
    bidders: list[DeploymentState],
    others: list[DeploymentState],
    policy: TenantPolicy,
    now: float,
    decision_id: int,
    previous: dict[str, int],
    time_limit_s: float,
) -> RoundInput:
    """Bidders' demands; everyone else's usage is held off the budget.

    A bidder's draining replicas are not held off the budget: the allocation is the target state
    once drains finish, and :func:`settle` grants scale-ups only out of GPUs free now. (Holding
    them too made every drain shrink the next round's budget, which cut other pools to fit the
    same targets again: one scale-down cascaded into several, then re-grants.)"""
    held: dict[str, int] = defaultdict(int)
    for dep in others:
        for pool in dep.pools.values():
            held[pool.spec.gpu_type] += pool.usage * pool.spec.gpus_per_replica
    demands: list[PoolDemand] = []
    summaries: dict[str, DemandSummary] = {}
    for dep in sorted(bidders, key=lambda d: d.name):
        assert dep.report is not None
        for report, demand in _pool_demands(dep, dep.report):
            demands.append(demand)
            summaries[demand.pool_id] = _summary(dep.report, report, demand.demand_weight)
    request = None
    if demands:
        request = AllocationRequest(
            pools=demands,
            inventory=dict(policy.fleet.gpus),
            tenants=dict(policy.tenants),
            overrides=list(policy.deployments),
            held_gpus=dict(held),
            previous={k: v for k, v in previous.items() if k in summaries} or None,
            time_limit_s=time_limit_s,
            stability=policy.stability,
        )
    shedding = frozenset(dep.endpoint for dep in bidders if dep.admission_rps is not None)
    return RoundInput(now, decision_id, request, dict(held), summaries, shedding)


def settle(
    deployments: list[DeploymentState],
    bidders: set[str],
    policy: TenantPolicy,
    round_input: RoundInput,
    allocation: Allocation | None,
    *,
    scale_ups: bool = True,
) -> dict[tuple[str, PoolRole], PoolUpdate]:
    """New grants: cuts at once, scale-ups only into GPUs free now (none while ``scale_ups`` is off)."""
    committed = committed_gpus(deployments, policy.fleet.gpus)
    inventory = policy.fleet.gpus
    updates: dict[tuple[str, PoolRole], PoolUpdate] = {}
    ups: list[tuple[float, str, str, PoolState, int, str, int]] = []
    targets = allocation.replicas if allocation is not None else {}
    request = round_input.request
    by_id = {p.pool_id: p for p in request.pools} if request is not None else {}
    for dep in deployments:
        if dep.name not in bidders:
            continue
        priority = policy.tenants[dep.tenant].priority if dep.tenant in policy.tenants else 1.0
        for role, pool in dep.pools.items():
            pool_id = f"{dep.name}/{role}"
            bid = by_id.get(pool_id)
            if pool_id not in targets or bid is None:
                continue
            if (bid.gpu_type, bid.gpus_per_replica) != (pool.spec.gpu_type, pool.spec.gpus_per_replica):
                continue  # re-registered with another geometry since the snapshot: next round
            target = targets[pool_id]
            reason = allocation.reasons.get(pool_id, "") if allocation is not None else ""
            lent = allocation.headroom.get(pool_id, 0) if allocation is not None else 0
            if target <= pool.usage:
                pending = drains.cut(pool, target, round_input.decision_id)
                updates[(dep.name, role)] = PoolUpdate(target, pool.usage, pending, target, reason, lent)
            else:
                ups.append((-priority, pool_id, dep.name, pool, target, reason, lent))
    ups.sort(key=lambda u: (u[0], u[1]))
    extras = _deal_free_gpus([(u[0], u[3], u[4]) for u in ups], committed, inventory if scale_ups else {})
    for (_, _, name, pool, target, reason, lent), extra in zip(ups, extras, strict=True):
        grant = pool.usage + extra
        if grant < target:
            why = "GPUs still held (drains, silent agents)" if scale_ups else "the end of the restart quarantine"
            reason += f"; gated: {target - grant} replica(s) wait for {pool.spec.gpu_type} {why}"
        updates[(name, pool.spec.role)] = PoolUpdate(
            grant, grant, None, target, reason, max(0, lent - (target - grant))
        )
    return updates


def _deal_free_gpus(
    ups: list[tuple[float, PoolState, int]], committed: dict[str, int], inventory: dict[str, int]
) -> list[int]:
    """Replicas each scale-up (``(-priority, pool, target)``, in order) gets out of the GPUs free
    now: by priority, one replica per pool in turn within a priority, as the allocator deals idle
    GPUs (:func:`deal`). In pool-id order instead, a pair's decode pool cut to make room for its
    prefill took the freed GPUs back before the prefill (sweep seed 111 ``s21``)."""
    free = {gpu: max(0, count - committed.get(gpu, 0)) for gpu, count in inventory.items()}
    tiers = [list(tier) for _, tier in groupby(range(len(ups)), key=lambda i: ups[i][0])]
    held = [pool.usage for _, pool, _ in ups]
    # No tenant room here: caps were the allocation's to keep; only GPUs free now gate a grant.
    groups = [("", pool.spec.gpu_type, pool.spec.gpus_per_replica) for _, pool, _ in ups]
    dealt = deal(tiers, list(held), [target for _, _, target in ups], groups, free, {})
    return [got - count for got, count in zip(dealt, held, strict=True)]


def endpoint_routing(
    updates: dict[tuple[str, PoolRole], PoolUpdate], round_input: RoundInput
) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    """Routing weights and admission limits of the endpoints whose pools got a grant."""
    request = round_input.request
    by_id = {p.pool_id: p for p in request.pools} if request is not None else {}
    granted = {f"{name}/{role}": update.grant for (name, role), update in updates.items()}
    demand_pools = [by_id[pool_id] for pool_id in granted]
    plans = endpoint_plans(demand_pools, granted, round_input.shedding) if demand_pools else {}
    routing = {endpoint: plan.weights for endpoint, plan in plans.items()}
    admission = {endpoint: plan.admission_rps for endpoint, plan in plans.items() if plan.admission_rps is not None}
    return routing, admission


@dataclass(frozen=True)
class Outcome:
    """What a settled round changes, before it is recorded."""

    decision_id: int
    time_s: float
    allocation: Allocation | None
    updates: dict[tuple[str, PoolRole], PoolUpdate]
    leases: dict[str, float]
    routing: dict[str, dict[str, float]]
    admission: dict[str, float]


@dataclass(frozen=True)
class Round(Outcome):
    """A settled round, not yet in force: persist ``record`` first, then ``commit`` it."""

    record: RoundRecord
    version: int
    splits: dict[str, SplitDecision] = field(default_factory=dict)
    # the split's smoothed sized / nominal capacity per (deployment, role), in force once committed
    capacity_ratios: dict[tuple[str, str], float] | None = None


def record(
    deployments: list[DeploymentState], policy: TenantPolicy, round_: Outcome, round_input: RoundInput
) -> RoundRecord:
    """The audit line of a round: enough to explain it and to restart from it."""
    tenant_gpus: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    committed: dict[str, int] = dict.fromkeys(policy.fleet.gpus, 0)
    records: list[DeploymentRecord] = []
    for dep in sorted(deployments, key=lambda d: d.name):
        pools = [_pool_record(dep, role, pool, round_, round_input) for role, pool in sorted(dep.pools.items())]
        for pool in pools:
            gpus = pool.usage * pool.gpus_per_replica
            tenant_gpus[dep.tenant][pool.gpu_type] += gpus
            committed[pool.gpu_type] = committed.get(pool.gpu_type, 0) + gpus
        records.append(
            DeploymentRecord(
                deployment=dep.name,
                tenant=dep.tenant,
                endpoint=dep.endpoint,
                lease_expires_s=round_.leases.get(dep.name, dep.lease_expires_s),
                decision_id=round_.decision_id if dep.name in round_.leases else dep.decision_id,
                bidding=dep.name in round_.leases,
                pools=pools,
            )
        )
    allocation = round_.allocation
    return RoundRecord(
        decision_id=round_.decision_id,
        time_s=round_.time_s,
        status=allocation.status if allocation is not None else "idle",
        objective=allocation.objective if allocation is not None else None,
        gap=allocation.gap if allocation is not None else None,
        solve_ms=allocation.solve_ms if allocation is not None else None,
        inventory=dict(policy.fleet.gpus),
        held_gpus=round_input.held_gpus,
        committed_gpus=committed,
        tenant_gpus={t: dict(v) for t, v in sorted(tenant_gpus.items())},
        routing=round_.routing,
        admission_rps=round_.admission,
        deployments=records,
    )


def _pool_record(
    dep: DeploymentState, role: PoolRole, pool: PoolState, round_: Outcome, round_input: RoundInput
) -> PoolRecord:
    update = round_.updates.get((dep.name, role))
    grant = update.grant if update else pool.grant
    summary = round_input.demand.get(f"{dep.name}/{role}") if update else None
    if summary is not None:
        report = next((p for p in dep.report.pools if p.role == role), None) if dep.report else None
        summary = summary.model_copy(update=_attainment_at(report, grant))
    return PoolRecord(
        role=pool.spec.role,
        gpu_type=pool.spec.gpu_type,
        gpus_per_replica=pool.spec.gpus_per_replica,
        min_replicas=pool.spec.min_replicas,
        max_replicas=pool.spec.max_replicas,
        fallback_replicas=pool.spec.fallback_replicas,
        startup_s=pool.spec.startup_s,
        granted=grant,
        usage=update.usage if update else pool.usage,
        pending_release=update.pending_release if update else pool.pending_release,
        grant_decision_id=round_.decision_id if update and update.grant != pool.grant else pool.grant_decision_id,
        allocated=update.allocated if update else None,
        reason=update.reason if update else _held_reason(dep, pool),
        demand=summary,
        moved_by=round_.allocation.drivers.get(f"{dep.name}/{role}") if round_.allocation and update else None,
        headroom=update.headroom if update else pool.headroom,
    )


def _demand_rps(report: AgentReport | None) -> float | None:
    """The rate a deployment's value is weighted by: the forecast, else the observed rate."""
    if report is None:
        return None
    if report.forecast is not None:
        return report.forecast.mean_rps
    if report.observed is not None and report.observed.admitted_rps is not None:
        return report.observed.admitted_rps
    return None


def short_pool(dep: DeploymentState) -> PoolRole | None:
    """A pool whose last report asks for more replicas than its grant while it is observed short
    (:func:`observed_short`, on the demand a round would build), or None: a round then may move
    GPUs to it, so it need not wait for the next periodic one. On its rate alone: a pool reported
    late waits for the timed round (rounds on lateness moved the gateway's limit on soft-shortage
    seed 5 and cost its total 0.5 point; docs/global-planner.md, *Three late windows in a row are
    proof*)."""
    if dep.report is None:
        return None
    for report, demand in _pool_demands(dep, dep.report):
        asks_more = report is not None and (report.wanted_replicas or 0) > demand.current_replicas
        if asks_more and observed_short(demand, count_late=False):
            return demand.role
    return None


def _pool_demands(dep: DeploymentState, report: AgentReport) -> Iterator[tuple[PoolReport | None, PoolDemand]]:
    """Each pool's report (None when the last report left it out) and its bid, by role."""
    rps = _demand_rps(report)
    reports = {p.role: p for p in report.pools}
    paired = "prefill" in dep.pools and "decode" in dep.pools
    for role, pool in sorted(dep.pools.items()):
        yield reports.get(role), _pool_demand(dep, role, pool, reports.get(role), rps, paired)


def _pool_demand(
    dep: DeploymentState,
    role: PoolRole,
    pool: PoolState,
    report: PoolReport | None,
    weight: float | None,
    paired: bool,
) -> PoolDemand:
    """One pool's bid. Without a curve or a rate the pool bids to hold its grant ("no data" must
    not look like "no traffic" and scale it to zero). The observed rate goes along: the allocator
    checks the bid's rate against it."""
    observed = dep.report.observed if dep.report is not None else None
    observed_rps = observed.admitted_rps if observed is not None else None
    backlog_rps = (
        report.queued_requests / observed.window_s
        if observed is not None and report is not None and report.queued_requests is not None
        else None
    )
    spec = pool.spec
    low = min(max(spec.min_replicas, spec.fallback_replicas), spec.max_replicas)
    curve: list[float]
    held = None
    if report is not None and report.curve and weight is not None:
        curve = list(report.curve)  # expected attainment; the pessimistic curve is for explain
    else:
        curve, weight = [0.0], 0.0
        # Hold what it runs (its first grant may not exist yet): usage counts replicas reported.
        held = low = min(max(low, pool.grant, pool.usage), spec.max_replicas)
    return PoolDemand(
        deployment=dep.name,
        tenant=dep.tenant,
        endpoint=dep.endpoint,
        role=spec.role,
        gpu_type=spec.gpu_type,
        gpus_per_replica=spec.gpus_per_replica,
        min_replicas=low,
        max_replicas=spec.max_replicas,
        current_replicas=pool.grant,
        curve=curve,
        demand_weight=weight,
        pair_group=dep.name if paired and role in ("prefill", "decode") else None,
        replica_capacity_rps=report.replica_capacity_rps if report is not None else None,
        wanted_replicas=report.wanted_replicas if report is not None and report.curve else None,
        observed_rps=observed_rps,
        backlog_rps=backlog_rps,
        late_rps_per_replica=report.late_rps_per_replica if report is not None else None,
        running_replicas=report.ready + report.starting if report is not None else None,
        startup_s=spec.startup_s,
        held_replicas=held,
        headroom_replicas=min(pool.headroom, pool.grant),
    )


def _summary(report: AgentReport, pool: PoolReport | None, weight: float) -> DemandSummary:
    return DemandSummary(
        forecast_rps=report.forecast.mean_rps if report.forecast else None,
        upper_rps=report.forecast.upper_rps if report.forecast else None,
        demand_weight=weight,
        ready=pool.ready if pool else 0,
        starting=pool.starting if pool else 0,
        draining=pool.draining if pool else 0,
        curve_points=len(pool.curve) if pool else 0,
        attainment_at_grant=None,
        pessimistic_at_grant=None,
    )


def _attainment_at(report: PoolReport | None, replicas: int) -> dict[str, float | None]:
    def at(curve: list[float]) -> float | None:
        return curve[min(replicas, len(curve) - 1)] if curve else None

    if report is None:
        return {"attainment_at_grant": None, "pessimistic_at_grant": None}
    return {"attainment_at_grant": at(report.curve), "pessimistic_at_grant": at(report.pessimistic_curve)}


def _held_reason(dep: DeploymentState, pool: PoolState) -> str:
    if dep.expired:
        return pool.reason
    if dep.session_id is None:
        return f"restored: held until its agent reports or the lease lapses at {dep.lease_expires_s:.1f}"
    if dep.report is None:
        return "registered, no report yet"
    return f"silent since {dep.last_contact_s:.1f}: grant kept until the lease lapses at {dep.lease_expires_s:.1f}"
