"""The request reduced to integers both the CP-SAT model and the greedy fallback work on.

Doing this once, in one place, keeps the two solvers' notion of value identical, so the greedy
can serve as a check on CP-SAT and the fallback never optimises a different objective.

Scaling: attainment is kept in units of 1e-4 (``ATT_SCALE``) and unit coefficients
``priority * demand_weight`` are normalised so the largest is ``WEIGHT_SCALE``. The objective is
lexicographic by construction: value (minus churn) is multiplied by ``gpu_tiebreak`` = usable GPUs
+ 1, and each allocated GPU costs 1, so the whole GPU term can never outweigh a single value
quantum — GPUs are only spent for value, and among equal-value answers the cheapest wins.
"""

from __future__ import annotations

import fnmatch
import re
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import accumulate, chain

import numpy as np

from global_planner.allocation.models import (
    Allocation,
    AllocationRequest,
    AllocationStatus,
    PoolDemand,
    PoolOverride,
    TenantLimits,
)

ATT_SCALE = 10_000
WEIGHT_SCALE = 1_000
_DEFAULT_TENANT = TenantLimits()

TenantType = tuple[str, str]


@dataclass(frozen=True)
class PoolPlan:
    """One pool after overrides: its bounds and the counts worth considering.

    ``counts`` are the replica counts of ``[lo, hi]`` worth considering (contiguous, see
    :func:`_hull_counts`), with ``values`` their scaled attainment on the curve's concave hull.
    """

    pool: PoolDemand
    priority: float
    max_step: int | None
    min_replicas: int
    max_replicas: int
    lo: int
    hi: int
    counts: tuple[int, ...]
    values: tuple[int, ...]
    churn: int
    unit: int
    scaled: tuple[int, ...] = ()

    def value_at(self, replicas: int) -> int:
        """Scaled value the allocation credits at ``replicas`` (its hull value; flat past the top;
        below the window, where only a fallback goes, the curve itself)."""
        if replicas < self.counts[0]:
            return self.curve_at(replicas)
        return self.values[min(replicas - self.counts[0], len(self.values) - 1)]

    def demand(self) -> int:
        """Replicas the pool has real demand for, which is all a guarantee reserves: what its
        agent would run alone, and never past the top of its value curve."""
        top = self.counts[-1]
        wanted = self.pool.wanted_replicas
        return top if wanted is None else max(self.lo, min(top, wanted))

    def curve_at(self, replicas: int) -> int:
        """Scaled attainment the agent's curve gives ``replicas`` (flat past its end)."""
        scaled = self.scaled
        return scaled[replicas] if replicas < len(scaled) else scaled[-1]


@dataclass(frozen=True)
class Unit:
    """Pools valued together (a prefill/decode pair, or a lone pool): worth weight * min(value)."""

    members: tuple[int, ...]
    weight: int


@dataclass
class Problem:
    request: AllocationRequest
    pools: list[PoolPlan]
    units: list[Unit]
    budget: dict[str, int]
    caps: dict[TenantType, int]
    floors: dict[TenantType, int]
    floor_notes: dict[TenantType, str]
    minima_fit: bool
    value_scale: float
    gpu_tiebreak: int
    tenant_priority: dict[str, float] = field(default_factory=dict)

    def gpus(self, replicas: list[int]) -> tuple[dict[str, int], dict[TenantType, int]]:
        """GPUs used per type and per (tenant, type)."""
        by_type: dict[str, int] = defaultdict(int)
        by_tenant: dict[TenantType, int] = defaultdict(int)
        for plan, count in zip(self.pools, replicas, strict=True):
            used = count * plan.pool.gpus_per_replica
            by_type[plan.pool.gpu_type] += used
            by_tenant[(plan.pool.tenant, plan.pool.gpu_type)] += used
        return dict(by_type), dict(by_tenant)

    def value(self, replicas: list[int]) -> int:
        """Scaled value minus churn: the quantity both solvers maximise."""
        total = 0
        for unit in self.units:
            total += unit.weight * min(self.pools[i].value_at(replicas[i]) for i in unit.members)
        for plan, count in zip(self.pools, replicas, strict=True):
            total -= plan.churn * abs(count - plan.pool.current_replicas)
        return total


def _matchers(request: AllocationRequest) -> list[tuple[bool, Callable[[str], object], PoolOverride]]:
    """Each override as (matches pool keys?, compiled matcher, override); fnmatch semantics."""
    return [(o.selector.count("/") == 2, re.compile(fnmatch.translate(o.selector)).match, o) for o in request.overrides]


def _effective(
    pool: PoolDemand, request: AllocationRequest, matchers: list[tuple[bool, Callable[[str], object], PoolOverride]]
) -> tuple[float, int | None, int, int, float]:
    """Priority, max_step, min, max and churn weight after the matching overrides."""
    tenant = request.tenants.get(pool.tenant, _DEFAULT_TENANT)
    priority, max_step = tenant.priority, None
    low, high, churn = pool.min_replicas, pool.max_replicas, 0.0
    deployment_key = f"{pool.tenant}/{pool.deployment}"
    pool_key = f"{deployment_key}/{pool.role}"
    for per_pool, match, override in matchers:
        if not match(pool_key if per_pool else deployment_key):
            continue
        priority = override.priority if override.priority is not None else priority
        max_step = override.max_step if override.max_step is not None else max_step
        low = override.min_replicas if override.min_replicas is not None else low
        high = override.max_replicas if override.max_replicas is not None else high
        churn = override.churn_weight if override.churn_weight is not None else churn
    return priority, max_step, low, max(low, high), churn


def _clamp(value: int, low: int, high: int) -> int:
    return max(low, min(high, value))


def _hull_counts(scaled: list[int], low: int, high: int, lo: int, hi: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The counts of ``[lo, hi]`` worth considering, valued on the upper concave hull of the
    scaled curve over the pool's whole range ``[low, high]``.

    Valuing every count on the hull (the foot of an S-shaped curve, where a pool cannot yet carry
    its load, is credited the chord to the knee) makes each pool's value concave in its replicas:
    the model stays one integer per pool (no per-count booleans) and the greedy is a true
    marginal-gain greedy. The hull spans the whole range, not this round's step-limited window:
    a pool climbing towards its knee a few replicas per round sees each step as progress, or it
    would never start. Counts past the hull's top (worth no more than a smaller count) are
    dropped: they would hold GPUs without value. Returns contiguous counts from ``lo``.
    """
    last = len(scaled) - 1
    counts = [low]
    values = [scaled[min(low, last)]]
    for k in range(low + 1, min(high, last) + 1):
        value = scaled[k]
        if value <= values[-1]:
            continue
        # pop while the last count lies strictly below the chord from its predecessor to k
        while len(counts) >= 2 and (values[-1] - values[-2]) * (k - counts[-2]) < (value - values[-2]) * (
            counts[-1] - counts[-2]
        ):
            counts.pop()
            values.pop()
        counts.append(k)
        values.append(value)

    # Every count of the window up to the hull's top, valued on the hull: a segment's rise is
    # spread over its counts as evenly as integers allow, larger steps first (concave within it).
    window_counts: list[int] = []
    window_values: list[int] = []
    for j in range(len(counts)):
        if j == 0:
            segment = [(counts[0], values[0])]
        else:
            c0, v0 = counts[j - 1], values[j - 1]
            run, rise = counts[j] - c0, values[j] - v0
            step, extra = divmod(rise, run)
            segment = [(c0 + i, v0 + i * step + min(i, extra)) for i in range(1, run + 1)]
        for count, value in segment:
            if lo <= count <= hi:
                window_counts.append(count)
                window_values.append(value)
    if not window_counts:  # lo is past the hull's top: worth the top, nothing above it is
        return (lo,), (values[-1],)
    return tuple(window_counts), tuple(window_values)


def _step_bounds(pool: PoolDemand, max_step: int | None, low: int, high: int) -> tuple[int, int]:
    """Replica range this round: ``[min, max]`` narrowed by ``max_step`` around the current size.

    Bounds beat the step limit: a pool above a lowered ``max_replicas`` goes straight to it.
    """
    if max_step is None:
        return low, high
    return _clamp(pool.current_replicas - max_step, low, high), _clamp(pool.current_replicas + max_step, low, high)


def _unfit_groups(
    raw: list[tuple[PoolDemand, float, int | None, int, int, float]],
    lows: list[int],
    budget: dict[str, int],
    caps: dict[TenantType, int],
) -> set[object]:
    """GPU types and (tenant, type) caps whose step-limited lower bounds cannot all be held.

    Scale-down step limits only smooth change; when the inventory shrank or a cap was lowered
    they must give way, so those groups fall back to their plain ``min_replicas``.
    """
    by_type: dict[str, int] = defaultdict(int)
    by_tenant: dict[TenantType, int] = defaultdict(int)
    for (pool, *_), lo in zip(raw, lows, strict=True):
        by_type[pool.gpu_type] += lo * pool.gpus_per_replica
        by_tenant[(pool.tenant, pool.gpu_type)] += lo * pool.gpus_per_replica
    unfit: set[object] = {gpu for gpu, used in by_type.items() if used > budget.get(gpu, 0)}
    unfit.update(key for key, used in by_tenant.items() if used > caps.get(key, used))
    return unfit


def build_problem(request: AllocationRequest) -> Problem:
    """Apply overrides, bounds, change limits and dominance; trim floors to what can fit."""
    raw: list[tuple[PoolDemand, float, int | None, int, int, float]] = []
    matchers = _matchers(request)
    for pool in request.pools:
        priority, max_step, low, high, churn = _effective(pool, request, matchers)
        raw.append((pool, priority, max_step, low, high, churn))

    coefficient = [prio * pool.demand_weight for pool, prio, *_ in raw]
    unit_members: list[list[int]] = []
    unit_of: list[int] = []
    group_unit: dict[str, int] = {}
    for index, (pool, *_) in enumerate(raw):
        if pool.pair_group is not None and pool.pair_group in group_unit:
            unit = group_unit[pool.pair_group]
            unit_members[unit].append(index)
        else:
            unit = len(unit_members)
            unit_members.append([index])
            if pool.pair_group is not None:
                group_unit[pool.pair_group] = unit
        unit_of.append(unit)

    unit_coef = [max(coefficient[i] for i in members) for members in unit_members]
    top = max(unit_coef, default=0.0) or 1.0
    value_scale = top / (WEIGHT_SCALE * ATT_SCALE)

    def weight(coef: float) -> int:
        return 0 if coef <= 0 else max(1, round(coef * WEIGHT_SCALE / top))

    budget = {
        gpu: max(0, request.inventory.get(gpu, 0) - request.held_gpus.get(gpu, 0))
        for gpu in {*request.inventory, *(p.gpu_type for p in request.pools)}
    }
    caps: dict[TenantType, int] = {}
    tenant_priority: dict[str, float] = {}
    for name in sorted({p.tenant for p in request.pools}):
        limits = request.tenants.get(name, _DEFAULT_TENANT)
        tenant_priority[name] = limits.priority
        for gpu, cap in limits.max_gpus.items():
            caps[(name, gpu)] = cap

    bounds = [_step_bounds(pool, max_step, low, high) for pool, _, max_step, low, high, _ in raw]
    relaxed = _unfit_groups(raw, [lo for lo, _ in bounds], budget, caps)
    # every curve scaled to integers at once (np.rint rounds half to even, like round())
    lengths = [len(pool.curve) for pool in request.pools]
    offsets = [0, *accumulate(lengths)]
    flat = np.rint(np.fromiter(chain.from_iterable(p.curve for p in request.pools), float, offsets[-1]) * ATT_SCALE)
    flat = flat.astype(np.int64).tolist()
    plans: list[PoolPlan] = []
    for index, (pool, priority, max_step, low, high, churn) in enumerate(raw):
        lo, hi = bounds[index]
        if pool.gpu_type in relaxed or (pool.tenant, pool.gpu_type) in relaxed:
            lo = low
        scaled = flat[offsets[index] : offsets[index + 1]]
        counts, values = _hull_counts(scaled, low, high, lo, hi)
        plans.append(
            PoolPlan(
                pool=pool,
                priority=priority,
                max_step=max_step,
                min_replicas=low,
                max_replicas=high,
                lo=lo,
                hi=hi,
                counts=counts,
                values=values,
                churn=round(churn / value_scale),
                unit=unit_of[index],
                scaled=tuple(scaled),
            )
        )
    units = [Unit(tuple(m), weight(c)) for m, c in zip(unit_members, unit_coef, strict=True)]

    lo_type: dict[str, int] = defaultdict(int)
    lo_tenant: dict[TenantType, int] = defaultdict(int)
    usable: dict[TenantType, int] = defaultdict(int)
    for plan in plans:
        key = (plan.pool.tenant, plan.pool.gpu_type)
        lo_type[plan.pool.gpu_type] += plan.lo * plan.pool.gpus_per_replica
        lo_tenant[key] += plan.lo * plan.pool.gpus_per_replica
        usable[key] += plan.demand() * plan.pool.gpus_per_replica

    wanted: dict[TenantType, int] = {}
    for name in tenant_priority:
        limits = request.tenants.get(name, _DEFAULT_TENANT)
        for gpu, guaranteed in limits.guaranteed_gpus.items():
            floor = min(guaranteed, usable.get((name, gpu), 0), caps.get((name, gpu), guaranteed))
            if floor > lo_tenant.get((name, gpu), 0):
                wanted[(name, gpu)] = floor

    minima_fit = all(lo_type[gpu] <= budget.get(gpu, 0) for gpu in lo_type) and all(
        lo_tenant[key] <= caps[key] for key in lo_tenant if key in caps
    )
    floors: dict[TenantType, int] = {}
    notes: dict[TenantType, str] = {}
    spare = {gpu: budget[gpu] - lo_type.get(gpu, 0) for gpu in budget}
    for key in sorted(wanted, key=lambda k: (-tenant_priority[k[0]], k)):
        extra = wanted[key] - lo_tenant.get(key, 0)
        granted = max(0, min(extra, spare[key[1]]))
        spare[key[1]] -= granted
        floors[key] = lo_tenant.get(key, 0) + granted
        if granted < extra:
            notes[key] = f"guarantee trimmed to {floors[key]} {key[1]}: inventory short"

    return Problem(
        request=request,
        pools=plans,
        units=units,
        budget=budget,
        caps=caps,
        floors=floors,
        floor_notes=notes,
        minima_fit=minima_fit,
        value_scale=value_scale,
        gpu_tiebreak=sum(budget.values()) + 1,
        tenant_priority=tenant_priority,
    )


@dataclass(frozen=True)
class EndpointPlan:
    """How an endpoint's traffic is served: each deployment's share, and the admission limit
    (requests/s) when the capacity allocated cannot carry the planned load (None otherwise)."""

    weights: dict[str, float]
    admission_rps: float | None


# A pool carries its planned load at the first count worth this share of its curve's best; it
# saturates (the queue stops draining) around the curve's knee, half of its best.
_REACH = 0.99
_KNEE = 0.5


def _sla_capacity(pool: PoolDemand, replicas: int, reach: float = _REACH) -> float:
    """Requests/s ``replicas`` of ``pool`` carry, read from its own curve: the planned load
    (``demand_weight``) scaled by ``replicas`` over the count whose value reaches ``reach`` of the
    curve's best. Without a usable curve, the nominal ``replicas * replica_capacity_rps`` (1 rps
    per replica when unknown)."""
    curve = pool.curve
    best = max(curve)
    if pool.demand_weight > 0 and best > 0:
        needed = next(k for k, value in enumerate(curve) if value >= reach * best)
        if needed > 0:
            return pool.demand_weight * replicas / needed
    return replicas * (pool.replica_capacity_rps or 1.0)


def endpoint_plans(pools: list[PoolDemand], replicas: dict[str, int]) -> dict[str, EndpointPlan]:
    """Per endpoint, each deployment's traffic share and whether excess traffic must be shed.

    Each deployment receives the load it planned for (its ``demand_weight``) as far as its
    allocated capacity carries it; what some cannot carry goes to those with spare capacity, and
    what nobody can carry is *shed* (``admission_rps``) rather than queued: a queue fed faster
    than it drains delays every request past its SLO, so an overloaded deployment would serve
    almost nobody in time, while admitting only what fits serves that share fully — the value
    the allocation credited a partly served pool with. Routing by planned load rather than raw
    capacity keeps a deployment granted more than its plan from drawing traffic it was not sized
    for. Capacity is a deployment's bottleneck pool's (see :func:`_sla_capacity`). Only endpoints
    the allocation left short of what their agents want (``wanted_replicas``) shed.
    """
    by_endpoint: dict[str, list[PoolDemand]] = defaultdict(list)
    cut: set[str] = set()  # endpoints with a pool granted less than its agent wants
    for pool in pools:
        by_endpoint[pool.endpoint].append(pool)
        if pool.wanted_replicas is not None and replicas[pool.pool_id] < pool.wanted_replicas:
            cut.add(pool.endpoint)
    capacity: dict[str, dict[str, float]] = defaultdict(dict)
    saturation: dict[str, dict[str, float]] = defaultdict(dict)
    planned: dict[str, dict[str, float]] = defaultdict(dict)
    plans: dict[str, EndpointPlan] = {}
    for endpoint, members in by_endpoint.items():
        if endpoint not in cut and len({pool.deployment for pool in members}) == 1:
            plans[endpoint] = EndpointPlan({members[0].deployment: 1.0}, None)  # nothing to split or shed
            continue
        for pool in members:
            count = replicas[pool.pool_id]
            for table, value in (
                (capacity, _sla_capacity(pool, count)),
                (saturation, _sla_capacity(pool, count, _KNEE)),
            ):
                table[endpoint][pool.deployment] = min(table[endpoint].get(pool.deployment, value), value)
            planned[endpoint][pool.deployment] = max(planned[endpoint].get(pool.deployment, 0.0), pool.demand_weight)
    for endpoint, caps in capacity.items():
        names = sorted(caps)
        load = sum(planned[endpoint].values())
        total_capacity = sum(caps.values())
        if load <= 0 or total_capacity <= 0:
            # No plan: split by capacity (evenly without any), admit everything.
            share = caps if total_capacity > 0 else dict.fromkeys(names, 1.0)
            total = sum(share.values())
            plans[endpoint] = EndpointPlan({name: share[name] / total for name in names}, None)
            continue
        share = {name: min(planned[endpoint][name], caps[name]) for name in names}
        spill = load - sum(share.values())
        spare = {name: caps[name] - share[name] for name in names}
        room = sum(spare.values())
        if spill > 0 and room > 0:
            moved = min(spill, room)
            share = {name: share[name] + moved * spare[name] / room for name in names}
            spill -= moved
        total = sum(share.values())
        weights = {name: share[name] / total for name in names} if total > 0 else dict.fromkeys(names, 1.0 / len(names))
        # Shed only where the allocation left a pool short of what its agent wants (an endpoint
        # that got everything asked for keeps every request: its agent's sizing is trusted over
        # this coarser estimate), and only past the replicas' saturation (the curve's knee, not
        # its 99% point): shedding is there to stop a queue that cannot drain, not to turn away
        # requests that would merely be slower.
        limit = max(total, sum(saturation[endpoint].values()))
        short = endpoint in cut and spill > 1e-9 * load and limit < load
        plans[endpoint] = EndpointPlan(weights, limit if short else None)
    return plans


def _reason(problem: Problem, index: int, count: int, free: dict[str, int], room: dict[TenantType, int]) -> str:
    plan = problem.pools[index]
    pool = plan.pool
    key = (pool.tenant, pool.gpu_type)
    if count < plan.lo:
        return f"below minimum {plan.lo}: {pool.gpu_type} inventory cannot hold every minimum"
    best = plan.counts[-1]
    if count >= best:
        if best == plan.lo and plan.values[-1] == plan.curve_at(plan.lo):
            if plan.lo > 0 and plan.lo == plan.min_replicas:
                return f"minimum {plan.lo}: no marginal value above it"
            if plan.max_step is not None and plan.lo > plan.min_replicas:
                return f"scaling down by max_step {plan.max_step}: no marginal value"
            return "no marginal value"
        if (
            plan.max_step is not None
            and best == plan.hi < plan.max_replicas
            and plan.curve_at(plan.hi + 1) > plan.values[-1]
        ):
            return f"limited by max_step {plan.max_step}"
        if best == plan.max_replicas and plan.curve_at(best + 1) > plan.values[-1]:
            return f"at max_replicas {plan.max_replicas}"
        return "enough: curve saturated"
    step = pool.gpus_per_replica
    if room.get(key, step) < step:
        return f"capped by tenant {pool.tenant} max {pool.gpu_type}"
    if free.get(pool.gpu_type, 0) < step:
        return f"shortage: {pool.gpu_type} exhausted, priority {plan.priority:g} outbid"
    partners = problem.units[plan.unit].members
    if len(partners) > 1:
        return "limited by paired pool"
    return "marginal value below cost"


def settle_floors(problem: Problem, replicas: list[int]) -> None:
    """Lower floors ``replicas`` misses to what it reaches, noting why, so the model stays feasible."""
    used = problem.gpus(replicas)[1]
    for key, floor in problem.floors.items():
        reached = used.get(key, 0)
        if reached < floor:
            problem.floors[key] = reached
            problem.floor_notes[key] = f"guarantee of {floor} {key[1]} unreachable at replica granularity or caps"


def over_budget(problem: Problem, replicas: list[int]) -> str | None:
    """Why ``replicas`` breaks the GPU budget or a tenant cap, or None when it is safe."""
    by_type, by_tenant = problem.gpus(replicas)
    for gpu, used in sorted(by_type.items()):
        if used > problem.budget.get(gpu, 0):
            return f"exceeds the {gpu} budget ({used} > {problem.budget.get(gpu, 0)})"
    for key, used in sorted(by_tenant.items()):
        if used > problem.caps.get(key, used):
            return f"exceeds tenant {key[0]} max {key[1]} ({used} > {problem.caps[key]})"
    return None


def finish(
    problem: Problem,
    replicas: list[int],
    *,
    status: AllocationStatus,
    best_bound: float | None,
    gap: float | None,
    solve_ms: float,
) -> Allocation:
    """Package a replica vector: reasons, routing, per-tenant usage; refuses an over-budget one."""
    by_type, by_tenant = problem.gpus(replicas)
    problem_text = over_budget(problem, replicas)
    if problem_text is not None:
        raise RuntimeError(f"refusing to publish an allocation that {problem_text}")
    free = {gpu: problem.budget[gpu] - by_type.get(gpu, 0) for gpu in problem.budget}
    room = {key: cap - by_tenant.get(key, 0) for key, cap in problem.caps.items()}
    reasons: dict[str, str] = {}
    for index, (plan, count) in enumerate(zip(problem.pools, replicas, strict=True)):
        key = (plan.pool.tenant, plan.pool.gpu_type)
        text = _reason(problem, index, count, free, room)
        floor = problem.floors.get(key)
        if floor is not None and by_tenant.get(key, 0) <= floor and count > plan.lo:
            text += f"; guaranteed floor {floor} {plan.pool.gpu_type}"
        if key in problem.floor_notes:
            text += f"; {problem.floor_notes[key]}"
        reasons[plan.pool.pool_id] = text
    by_pool = {plan.pool.pool_id: count for plan, count in zip(problem.pools, replicas, strict=True)}
    tenant_gpus: dict[str, dict[str, int]] = defaultdict(dict)
    for (tenant, gpu), used in sorted(by_tenant.items()):
        tenant_gpus[tenant][gpu] = used
    return Allocation(
        replicas=by_pool,
        routing_weights={e: p.weights for e, p in endpoint_plans(problem.request.pools, by_pool).items()},
        objective=problem.value(replicas) * problem.value_scale,
        best_bound=best_bound,
        gap=gap,
        status=status,
        solve_ms=solve_ms,
        reasons=reasons,
        tenant_gpus=dict(tenant_gpus),
        gpus_used={gpu: by_type.get(gpu, 0) for gpu in sorted(problem.budget)},
    )
