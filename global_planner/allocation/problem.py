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

from collections import defaultdict
from dataclasses import dataclass, field, replace
from itertools import accumulate, chain, groupby

import numpy as np

from global_planner.allocation.models import (
    Allocation,
    AllocationRequest,
    AllocationStatus,
    Driver,
    PoolDemand,
    TenantLimits,
    overridden,
)
from global_planner.allocation.routing import endpoint_plans
from global_planner.allocation.stability import (
    Seat,
    checked_bid,
    contested_endpoints,
    cut_cost,
    deal,
    discounted,
    driver,
    evidence_need,
    first_claims,
    headroom_only,
    held_if_stale,
    observed_short,
    protected_lows,
    shortage_note,
    startup_discount,
    valued_at_evidence,
    want_floor,
)

ATT_SCALE = 10_000
WEIGHT_SCALE = 1_000
_DEFAULT_TENANT = TenantLimits()

TenantType = tuple[str, str]


@dataclass(frozen=True)
class PoolPlan:
    """One pool after overrides and the bid check: its bounds and the counts worth considering.

    ``counts`` are the replica counts of ``[lo, hi]`` worth considering (contiguous, see
    :func:`_hull_counts`), with ``values`` their scaled attainment on the curve's concave hull,
    gains above the current size discounted by their cold start. ``churn`` is charged per replica
    changed either way, ``cut`` per replica below ``anchor`` (what the pool holds and wants; see
    :mod:`global_planner.allocation.stability`).
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
    cut: int = 0
    anchor: int = 0
    note: str | None = None
    contested: bool = True
    ask: int | None = None  # its agent's ask before the bid check (idle GPUs serve it)
    idle: int = 0  # replicas its lower bound took from idle GPUs (see stability.first_claims)
    fill_top: int | None = None  # with fill_idle: how far idle GPUs may raise it (see fill_idle)

    def value_at(self, replicas: int) -> int:
        """Scaled value the allocation credits at ``replicas`` (its hull value; flat past the top;
        below the window, where only a fallback goes, the curve itself)."""
        if replicas < self.counts[0]:
            return self.curve_at(replicas)
        return self.values[min(replicas - self.counts[0], len(self.values) - 1)]

    def change_cost(self, replicas: int) -> int:
        """Scaled value lost to changing the pool to ``replicas``: churn and the cut cost."""
        moved = abs(replicas - self.pool.current_replicas)
        return self.churn * moved + self.cut * max(0, self.anchor - replicas)

    def demand(self) -> int:
        """Replicas the pool has real demand for, which is all a guarantee reserves: what its
        agent would run alone, never past the top of its value curve, and, while its endpoint is
        not observed short, never past what it holds (a guarantee does not evict for headroom)."""
        top = self.counts[-1]
        if not self.contested:
            top = min(top, max(self.pool.current_replicas, self.lo))
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
    minima_conflicts: dict[str | TenantType, str]  # GPU type or (tenant, type) -> why its minimums do not fit
    value_scale: float
    gpu_tiebreak: int
    tenant_priority: dict[str, float] = field(default_factory=dict)

    @property
    def minima_fit(self) -> bool:
        return not self.minima_conflicts

    def gpus(self, replicas: list[int]) -> tuple[dict[str, int], dict[TenantType, int]]:
        """GPUs used per type and per (tenant, type)."""
        by_type: dict[str, int] = defaultdict(int)
        by_tenant: dict[TenantType, int] = defaultdict(int)
        for plan, count in zip(self.pools, replicas, strict=True):
            used = count * plan.pool.gpus_per_replica
            by_type[plan.pool.gpu_type] += used
            by_tenant[(plan.pool.tenant, plan.pool.gpu_type)] += used
        return dict(by_type), dict(by_tenant)

    def spare(
        self, by_type: dict[str, int], by_tenant: dict[TenantType, int]
    ) -> tuple[dict[str, int], dict[TenantType, int]]:
        """GPUs left per type and room left under each tenant cap after that use (:meth:`gpus`)."""
        free = {gpu: budget - by_type.get(gpu, 0) for gpu, budget in self.budget.items()}
        room = {key: cap - by_tenant.get(key, 0) for key, cap in self.caps.items()}
        return free, room

    def value(self, replicas: list[int]) -> int:
        """Scaled value minus the cost of change: the quantity both solvers maximise."""
        total = 0
        for unit in self.units:
            total += unit.weight * min(self.pools[i].value_at(replicas[i]) for i in unit.members)
        for plan, count in zip(self.pools, replicas, strict=True):
            total -= plan.change_cost(count)
        return total


@dataclass(frozen=True)
class _Effective:
    """A pool's bid after the bid check, with the knobs its overrides set."""

    pool: PoolDemand
    priority: float
    max_step: int | None
    low: int
    high: int
    churn: float
    startup_s: float
    note: str | None
    contested: bool = True
    bound: int = 0  # the top of its range before the cut at its checked bid
    ask: int | None = None  # what its agent asks for, before the bid check
    need: int | None = None  # replicas its observed load needs (None: no evidence gate or data)
    fill_idle: bool = False  # its policy lets idle GPUs raise it above its ask


def _effective(pool: PoolDemand, request: AllocationRequest, contested: set[str] | None) -> _Effective:
    """The bid after the matching overrides (later ones win field by field), the bid check and,
    on an endpoint not observed short (not in ``contested``; None: no such check), its curve cut
    to headroom above the grant."""
    tenant = request.tenants.get(pool.tenant, _DEFAULT_TENANT)
    settings = overridden(request.overrides, pool.tenant, pool.deployment, pool.role)
    priority = tenant.priority if settings.priority is None else settings.priority
    max_step = settings.max_step
    # An override narrows the pool's range, never past what its deployment registered: a grant above
    # its own maximum is one its agent never runs (a random fleet, sweep seed 73 ``s10``: an override
    # of 3 over a registered 1 reserved the top tenant's guarantee for replicas that never started,
    # while the other tenant's overloaded pool was cut for them).
    low = pool.min_replicas if settings.min_replicas is None else min(settings.min_replicas, pool.max_replicas)
    high = pool.max_replicas if settings.max_replicas is None else min(settings.max_replicas, pool.max_replicas)
    churn = 0.0 if settings.churn_weight is None else settings.churn_weight
    startup = pool.startup_s if settings.startup_s is None else settings.startup_s
    fill = bool(settings.fill_idle)
    if pool.held_replicas is not None:
        # No bid yet: what it runs is held, within the override's maximum. Its minimum is a floor
        # for bids; emptying a pool nobody has priced lost a random fleet its only running replicas
        # to a 361 s cold start (sweep seed 20, s15).
        low = max(low, min(pool.held_replicas, high))
    unstale = held_if_stale(pool)  # before anything reads its ask: a stale one moves nothing
    checked, note = checked_bid(unstale, request.stability.bid_allowance)
    is_contested = contested is None or pool.endpoint in contested
    need = evidence_need(checked) if contested is not None else None
    if is_contested:
        checked, raised = valued_at_evidence(checked, need)
        note = "; ".join(n for n in (note, raised) if n) or None
    if not is_contested or need is not None:
        # uncontested, its ask is headroom above its grant; contested, above what its load needs
        claim = checked.current_replicas if not is_contested else max(checked.current_replicas, need or 0)
        checked = checked.model_copy(update={"curve": headroom_only(checked.curve, claim)})
    wanted = checked.wanted_replicas
    high = max(low, high)
    bound = high
    if wanted is not None:
        high = min(high, max(low, wanted))  # never more than the agent wants: it would be forced on it
    if startup is None:
        startup = request.stability.default_startup_s
    return _Effective(
        checked,
        priority,
        max_step,
        low,
        high,
        churn,
        startup,
        note,
        is_contested,
        bound,
        unstale.own_ask(),
        need,
        fill,
    )


def _seat(item: _Effective, lo: int, hi: int, previous: dict[str, int] | None) -> Seat:
    """The pool as :func:`protected_lows` and :func:`first_claims` see it (see :class:`Seat`)."""
    pool = item.pool
    current = pool.own_replicas()  # idle headroom it was lent is not its own: any ask takes it first
    wanted = pool.wanted_replicas
    hold = lo if wanted is None else _clamp(min(current, wanted), lo, hi)  # no bid: its curve decides
    ask = hold if item.ask is None else _clamp(item.ask, item.low, item.bound)
    if item.max_step is not None:
        ask = min(ask, current + item.max_step)
    claim = current  # what it may take from others: nothing unless observed short
    if item.contested:
        claim = hi if item.need is None else min(hi, max(current, item.need))
    return Seat(
        gpu_type=pool.gpu_type,
        gpus_per_replica=pool.gpus_per_replica,
        tenant=pool.tenant,
        priority=item.priority,
        contested=item.contested,
        claim=claim,
        current=current,
        lo=lo,
        hi=hi,
        hold=hold,
        ask=max(ask, hold),
        promised=(previous or {}).get(pool.pool_id, 0),
    )


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
    return _window(counts, values, lo, hi)


def _window(counts: list[int], values: list[int], lo: int, hi: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Every count of the window up to the hull's top, valued on the hull: a segment's rise is
    spread over its counts as evenly as integers allow, larger steps first (concave within it)."""
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


def _step_bounds(item: _Effective) -> tuple[int, int]:
    """Replica range this round: ``[min, max]`` narrowed by ``max_step`` around the current size.

    Bounds beat the step limit: a pool above a lowered ``max_replicas`` goes straight to it. What
    its agent wants does not: it caps the way up, while the way down stays within the step (a
    ``max_step: 0`` pool granted its idle agent's bid of 0 was pinned there; sweep seed 29, s08).
    """
    if item.max_step is None:
        return item.low, item.high
    current = item.pool.current_replicas
    lo = _clamp(current - item.max_step, item.low, item.bound)
    return lo, min(_clamp(current + item.max_step, item.low, item.bound), max(lo, item.high))


def _unfit_groups(
    pools: list[_Effective], lows: list[int], budget: dict[str, int], caps: dict[TenantType, int]
) -> set[object]:
    """GPU types and (tenant, type) caps whose step-limited lower bounds cannot all be held.

    Scale-down step limits only smooth change; when the inventory shrank or a cap was lowered
    they must give way, so those groups fall back to their plain ``min_replicas``.
    """
    by_type: dict[str, int] = defaultdict(int)
    by_tenant: dict[TenantType, int] = defaultdict(int)
    for item, lo in zip(pools, lows, strict=True):
        by_type[item.pool.gpu_type] += lo * item.pool.gpus_per_replica
        by_tenant[(item.pool.tenant, item.pool.gpu_type)] += lo * item.pool.gpus_per_replica
    unfit: set[object] = {gpu for gpu, used in by_type.items() if used > budget.get(gpu, 0)}
    unfit.update(key for key, used in by_tenant.items() if used > caps.get(key, used))
    return unfit


def _group_units(pools: list[_Effective]) -> tuple[list[list[int]], list[int]]:
    """Pools sharing a ``pair_group`` form one unit; returns each unit's members and each pool's unit."""
    unit_members: list[list[int]] = []
    unit_of: list[int] = []
    group_unit: dict[str, int] = {}
    for index, item in enumerate(pools):
        group = item.pool.pair_group
        if group is not None and group in group_unit:
            unit = group_unit[group]
            unit_members[unit].append(index)
        else:
            unit = len(unit_members)
            unit_members.append([index])
            if group is not None:
                group_unit[group] = unit
        unit_of.append(unit)
    return unit_members, unit_of


def _unit_weights(pools: list[_Effective], unit_members: list[list[int]]) -> tuple[list[int], float]:
    """Integer unit weights (the largest is ``WEIGHT_SCALE``) and the value of one scaled unit."""
    coefficient = [item.priority * item.pool.demand_weight for item in pools]
    unit_coef = [max(coefficient[i] for i in members) for members in unit_members]
    top = max(unit_coef, default=0.0) or 1.0
    weights = [0 if coef <= 0 else max(1, round(coef * WEIGHT_SCALE / top)) for coef in unit_coef]
    return weights, top / (WEIGHT_SCALE * ATT_SCALE)


def _limits(request: AllocationRequest) -> tuple[dict[str, int], dict[TenantType, int], dict[str, float]]:
    """GPU budget per type (inventory minus held GPUs), tenant caps and tenant priorities."""
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
    return budget, caps, tenant_priority


def _scaled_curves(pools: list[_Effective]) -> list[list[int]]:
    """Every curve scaled to integers at once (np.rint rounds half to even, like round())."""
    lengths = [len(item.pool.curve) for item in pools]
    offsets = [0, *accumulate(lengths)]
    flat = np.rint(np.fromiter(chain.from_iterable(i.pool.curve for i in pools), float, offsets[-1]) * ATT_SCALE)
    values = flat.astype(np.int64).tolist()
    return [values[offsets[k] : offsets[k + 1]] for k in range(len(pools))]


def _pool_plan(
    item: _Effective,
    lo: int,
    hi: int,
    scaled: list[int],
    unit: int,
    weight: int,
    problem_scale: float,
    request: AllocationRequest,
) -> PoolPlan:
    """One pool's plan: its hull window, discounted for the cold start, and its costs of change."""
    pool = item.pool
    stability = request.stability
    wanted = pool.wanted_replicas
    scaled = want_floor(scaled, min(wanted, item.high) if wanted is not None else None)
    counts, values = _hull_counts(scaled, item.low, item.high, lo, hi)
    discount = startup_discount(item.startup_s, stability.horizon_s)
    current = pool.current_replicas
    values = discounted(counts, values, current, scaled[min(current, len(scaled) - 1)], wanted, discount)
    anchor = pool.own_replicas() if wanted is None else min(pool.own_replicas(), wanted)
    fill_top = None
    if item.fill_idle:
        fill_top = item.bound if item.max_step is None else min(item.bound, current + item.max_step)
    return PoolPlan(
        pool=pool,
        priority=item.priority,
        max_step=item.max_step,
        min_replicas=item.low,
        max_replicas=item.high,
        lo=lo,
        hi=hi,
        counts=counts,
        values=values,
        churn=round(item.churn / problem_scale),
        unit=unit,
        scaled=tuple(scaled),
        cut=cut_cost(counts, values, anchor, weight, discount, stability.hysteresis),
        anchor=anchor,
        note=item.note,
        contested=item.contested,
        ask=item.ask,
        fill_top=fill_top,
    )


def _floors(
    request: AllocationRequest,
    plans: list[PoolPlan],
    budget: dict[str, int],
    caps: dict[TenantType, int],
    tenant_priority: dict[str, float],
) -> tuple[dict[TenantType, int], dict[TenantType, str], dict[str | TenantType, str]]:
    """Tenant floors trimmed to what the tenant's agents want and the inventory holds (highest
    priority first), notes on trimmed ones, and why the pools' minimums cannot all be held."""
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

    conflicts = _minima_conflicts(plans, lo_type, lo_tenant, budget, caps)
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
    return floors, notes, conflicts


def _minima_conflicts(
    plans: list[PoolPlan],
    lo_type: dict[str, int],
    lo_tenant: dict[TenantType, int],
    budget: dict[str, int],
    caps: dict[TenantType, int],
) -> dict[str | TenantType, str]:
    """Each GPU type and tenant cap the pools' lower bounds this round overrun, naming the pools
    and, where a bound is above the pool's minimum (a step limit, or what it holds and wants), the
    minimum: a cap below a deployment's own minimums is a policy that contradicts itself, and the
    operator must see which one (a pair held at its prefill minimum with no decode serves nothing)."""
    over_type = sorted(gpu for gpu, need in lo_type.items() if need > budget.get(gpu, 0))
    over_cap = sorted(key for key, need in lo_tenant.items() if need > caps.get(key, need))
    if not over_type and not over_cap:
        return {}  # the usual round: no pool is named, no text built

    def holders(gpu: str, tenant: str | None = None) -> str:
        """The pools holding a lower bound of ``gpu`` (of ``tenant``'s, when given)."""
        named = []
        for plan in plans:
            pool = plan.pool
            if plan.lo and pool.gpu_type == gpu and tenant in (None, pool.tenant):
                minimum = f" (minimum {plan.min_replicas})" if plan.lo > plan.min_replicas else ""
                named.append(f"{pool.pool_id}: {plan.lo} x {pool.gpus_per_replica}{minimum}")
        return ", ".join(named)

    conflicts: dict[str | TenantType, str] = {
        gpu: f"the pools' lower bounds need {lo_type[gpu]} {gpu} GPUs, {budget.get(gpu, 0)} are free ({holders(gpu)})"
        for gpu in over_type
    }
    for tenant, gpu in over_cap:
        conflicts[(tenant, gpu)] = (
            f"tenant {tenant}'s max_gpus {gpu} is {caps[(tenant, gpu)]}, below the {lo_tenant[(tenant, gpu)]} its "
            f"pools' lower bounds need ({holders(gpu, tenant)})"
        )
    return conflicts


def build_problem(request: AllocationRequest) -> Problem:
    """Apply overrides, the bid check, bounds, change limits, stability terms and dominance;
    trim floors to what can fit."""
    contested = contested_endpoints(request.pools) if request.stability.contest_on_observed else None
    pools = [_effective(pool, request, contested) for pool in request.pools]
    unit_members, unit_of = _group_units(pools)
    weights, value_scale = _unit_weights(pools, unit_members)
    budget, caps, tenant_priority = _limits(request)
    bounds = [_step_bounds(item) for item in pools]
    seats = [_seat(item, lo, hi, request.previous) for item, (lo, hi) in zip(pools, bounds, strict=True)]
    protected = protected_lows(seats)
    lows = first_claims(seats, protected, budget, caps)
    bounds = [(low, max(hi, low)) for low, (_, hi) in zip(lows, bounds, strict=True)]
    relaxed = _unfit_groups(pools, lows, budget, caps)
    plans: list[PoolPlan] = []
    for index, (item, scaled) in enumerate(zip(pools, _scaled_curves(pools), strict=True)):
        lo, hi = bounds[index]
        if item.pool.gpu_type in relaxed or (item.pool.tenant, item.pool.gpu_type) in relaxed:
            lo = item.low
        unit = unit_of[index]
        plan = _pool_plan(item, lo, hi, scaled, unit, weights[unit], value_scale, request)
        idle = lo - max(protected[index], item.pool.current_replicas)
        plans.append(replace(plan, idle=idle) if idle > 0 else plan)
    floors, notes, conflicts = _floors(request, plans, budget, caps, tenant_priority)
    return Problem(
        request=request,
        pools=plans,
        units=[Unit(tuple(m), w) for m, w in zip(unit_members, weights, strict=True)],
        budget=budget,
        caps=caps,
        floors=floors,
        floor_notes=notes,
        minima_conflicts=conflicts,
        value_scale=value_scale,
        gpu_tiebreak=sum(budget.values()) + 1,
        tenant_priority=tenant_priority,
    )


_DRIVER_TEXT: dict[Driver, str] = {
    "unchanged": "",
    "bid": "; moved by its bid",
    "others": "; moved by other pools' value (worth more than the cost of the change)",
    "bounds": "; moved by its bounds",
    "idle": "; moved onto idle GPUs its policy lets it hold above its bid",
}


def _reason(problem: Problem, index: int, count: int, free: dict[str, int], room: dict[TenantType, int]) -> str:
    plan = problem.pools[index]
    pool = plan.pool
    key = (pool.tenant, pool.gpu_type)
    if count < plan.lo:
        capped = key in problem.minima_conflicts
        holder = f"tenant {pool.tenant}'s max_gpus {pool.gpu_type}" if capped else f"{pool.gpu_type} inventory"
        if plan.lo == plan.min_replicas:
            return f"below minimum {plan.lo}: {holder} cannot hold every minimum"
        return (
            f"below its lower bound {plan.lo} this round (minimum {plan.min_replicas}): {holder} cannot hold them all"
        )
    if count == plan.max_replicas < pool.min_replicas:
        # The policy overrides the deployment's own floor: say so even where the agent, told the
        # policy's limit, bids for it too (a random fleet, sweep seed 96 ``s08``, read "as bid").
        return f"at the policy's max_replicas {count} (the deployment's minimum is {pool.min_replicas})"
    if plan.idle and count == plan.lo:
        asked = f"as bid: its agent wants {count}" if plan.ask == count else f"towards its ask of {plan.ask}"
        return f"{asked}; {plan.idle} replica(s) from idle {pool.gpu_type} GPUs at once, highest priority first"
    best = plan.counts[-1]
    wanted = pool.wanted_replicas
    if plan.max_step is not None and wanted is not None and count == plan.lo > max(wanted, plan.min_replicas):
        return f"scaling down by max_step {plan.max_step} towards its agent's ask of {wanted}"
    if count >= best:
        if wanted is not None and count == wanted:
            return f"as bid: its agent wants {count}"
        if count == plan.max_replicas < pool.max_replicas:
            return f"at the policy's max_replicas {count} (the deployment allows {pool.max_replicas})"
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
    """Package a replica vector (idle GPUs lent to pools whose policy says so first): reasons,
    routing, per-tenant usage; refuses an over-budget one."""
    solved = replicas
    replicas = fill_idle(problem, solved)
    by_type, by_tenant = problem.gpus(replicas)
    problem_text = over_budget(problem, replicas)
    if problem_text is not None:
        raise RuntimeError(f"refusing to publish an allocation that {problem_text}")
    free, room = problem.spare(by_type, by_tenant)
    reasons: dict[str, str] = {}
    drivers: dict[str, Driver] = {}
    headroom: dict[str, int] = {}
    for index, (plan, count) in enumerate(zip(problem.pools, replicas, strict=True)):
        key = (plan.pool.tenant, plan.pool.gpu_type)
        wanted = plan.pool.wanted_replicas
        if wanted is not None and plan.ask is not None:
            wanted = max(wanted, min(plan.ask, count))  # idle GPUs serve the ask itself
        moved = driver(count, plan.pool.current_replicas, wanted, plan.lo, plan.hi)
        lent = _lent(plan, solved[index], count)
        if count > solved[index] and count > plan.pool.current_replicas:
            moved = "idle"
        drivers[plan.pool.pool_id] = moved
        text = _reason(problem, index, count, free, room) + _DRIVER_TEXT[moved]
        if lent:
            headroom[plan.pool.pool_id] = lent
            text += f"; {lent} replica(s) of idle {plan.pool.gpu_type} GPUs lent above its ask (fill_idle)"
        if plan.note is not None:
            text += f"; {plan.note}"
        if not plan.contested and plan.pool.wanted_replicas is not None and count < plan.pool.wanted_replicas:
            text += "; the rest of its ask is headroom: its endpoint is not observed short" + shortage_note(plan.pool)
        elif plan.contested and observed_short(plan.pool) and not observed_short(plan.pool, count_late=False):
            text += "; observed short by its lateness" + shortage_note(plan.pool)
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
        drivers=drivers,
        headroom=headroom,
        tenant_gpus=dict(tenant_gpus),
        gpus_used={gpu: by_type.get(gpu, 0) for gpu in sorted(problem.budget)},
    )


def _lent(plan: PoolPlan, solved: int, count: int) -> int:
    """Replicas of ``count`` lent above the pool's own ask (:meth:`PoolDemand.own_ask`; 0 without
    fill_idle): headroom it was lent stays headroom when its agent adopts the count."""
    if plan.fill_top is None:
        return 0
    own = plan.pool.own_replicas() if plan.ask is None else plan.ask  # no bid: a loan stays a loan
    return max(0, count - own)


def fill_idle(problem: Problem, replicas: list[int]) -> list[int]:
    """``replicas`` with the GPUs nobody was granted lent to pools whose policy says ``fill_idle``,
    up to each one's ``fill_top`` (its maximum, within its step limit) and its tenant's cap: first
    back to what each already held (a lent replica stays while nobody asks for its GPUs), then one
    replica at a time, highest priority first. Every ask was served before (the solve and
    :func:`~global_planner.allocation.stability.first_claims` treat lent replicas as nobody's), so
    this only ever uses GPUs that would stand idle."""
    fillers = [i for i, plan in enumerate(problem.pools) if plan.fill_top is not None and plan.fill_top > replicas[i]]
    if not fillers:
        return replicas
    free, room = problem.spare(*problem.gpus(replicas))
    order = sorted(fillers, key=lambda i: -problem.pools[i].priority)
    tiers = [list(tier) for _, tier in groupby(order, key=lambda i: problem.pools[i].priority)]
    groups = [(p.pool.tenant, p.pool.gpu_type, p.pool.gpus_per_replica) for p in problem.pools]
    tops = [plan.fill_top or 0 for plan in problem.pools]
    held = [min(top, plan.pool.current_replicas) for top, plan in zip(tops, problem.pools, strict=True)]
    out = deal(tiers, list(replicas), held, groups, free, room)  # first back to the loans held
    return deal(tiers, out, tops, groups, free, room)
