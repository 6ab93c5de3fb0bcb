"""How an endpoint served by several deployments (GPU types) is split among them: by cost and
capacity, and stably.

Each deployment's agent plans for a share of its endpoint's rate (``Targets.endpoint_share``).
Given each pool's requests/s per replica (the planner derives it from the agents' reports: their
nominal ``replica_capacity_rps`` scaled by what their sizing counts on), GPUs per replica and
bounds, and the endpoint's forecast upper rate, :func:`cheapest_plan` chooses integer replica counts per
deployment that carry that rate with the fewest GPUs: minimum replicas are paid anyway, so their
capacity counts first; beyond them the cheapest requests/s per GPU (a disaggregated deployment's
counts both its pools) until the rate is carried, within each pool's maximum and the GPUs of its
type free for the endpoint. When no plan carries the rate, it serves as much as it can (requests
served within the SLO, ``min(rate, capacity)``, is concave in every deployment's capacity). A
deployment's share is its planned capacity over the endpoint's.

:func:`decide` adds the stability rule: the split moves only when it changes some share by
``min_shift`` or more and the new plan serves clearly more of the rate than keeping the current
split (at once), or carries it with at least one replica's GPUs (and ``min_saving`` of the GPUs)
fewer, no sooner than ``dwell_s`` after the last move. A steady load thus keeps a steady split,
and the agents' grants do not churn with it. The planner uses it under the tenant policy's
``endpoint_split: cost`` (opt-in: measured worse than the fixed capacity split on the shortage
examples, docs/global-planner.md).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from pydantic import Field

from fleet_planner.planning import FrozenModel, PoolRole

_EPS = 1e-9


def _short(rate_rps: float, capacity_rps: float) -> float:
    """Requests/s of ``rate_rps`` that ``capacity_rps`` does not carry (rounding noise is none)."""
    missing = rate_rps - capacity_rps
    return missing if missing > 1e-6 * max(rate_rps, 1.0) else 0.0


Choice = tuple[int, ...]  # replicas per pool of one deployment, in its pools' order


class SplitPool(FrozenModel):
    """One pool of a deployment sharing an endpoint, as the split needs it."""

    role: PoolRole
    gpu_type: str
    gpus_per_replica: int = Field(ge=1)
    min_replicas: int = Field(ge=0)
    max_replicas: int = Field(ge=0)
    replica_capacity_rps: float | None = Field(
        gt=0.0, allow_inf_nan=False, description="requests/s one replica carries at the SLA; None: not reported yet"
    )


class SplitMember(FrozenModel):
    """One deployment of the endpoint: its pools and the share it plans for now."""

    deployment: str
    pools: list[SplitPool] = Field(min_length=1)
    share: float = Field(ge=0.0, le=1.0, allow_inf_nan=False)

    def known(self) -> bool:
        """Every pool reported its capacity (else the split cannot price this deployment)."""
        return all(p.replica_capacity_rps is not None for p in self.pools)


class SplitRule(FrozenModel):
    """When a new split replaces the current one."""

    min_saving: float = Field(
        default=0.1,
        ge=0,
        le=1,
        allow_inf_nan=False,
        description="share of the GPUs a move must save (and >= 1 replica's)",
    )
    serve_margin: float = Field(
        default=0.05,
        ge=0,
        le=1,
        allow_inf_nan=False,
        description="share of the rate a move must newly carry to be urgent",
    )
    dwell_s: float = Field(default=300.0, ge=0, allow_inf_nan=False, description="no saving move sooner after a move")
    min_shift: float = Field(
        default=0.05, ge=0, le=1, allow_inf_nan=False, description="no move changing every share by less than this"
    )


class SplitPlan(FrozenModel):
    """Replicas per pool of each deployment, the capacity they carry and what that costs."""

    replicas: dict[str, dict[str, int]]
    capacity_rps: dict[str, float]
    gpus: int
    unserved_rps: float

    def shares(self) -> dict[str, float] | None:
        """Each deployment's planned capacity over the endpoint's (None: no capacity at all)."""
        total = sum(self.capacity_rps.values())
        return {name: cap / total for name, cap in self.capacity_rps.items()} if total > 0 else None


class SplitDecision(FrozenModel):
    """The split in force after this round and why."""

    shares: dict[str, float]
    moved: bool
    reason: str


def _capacity(member: SplitMember, choice: Choice) -> float:
    """Requests/s these replica counts carry: the bottleneck pool's."""
    return min(n * (p.replica_capacity_rps or 0.0) for n, p in zip(choice, member.pools, strict=True))


def _gpus_by_type(member: SplitMember, choice: Choice) -> dict[str, int]:
    used: dict[str, int] = {}
    for n, pool in zip(choice, member.pools, strict=True):
        used[pool.gpu_type] = used.get(pool.gpu_type, 0) + n * pool.gpus_per_replica
    return used


def _ceiling(pool: SplitPool, budget: Mapping[str, int]) -> int:
    """The most replicas the pool may plan for: its maximum and its type's free GPUs (never
    below its minimum, which is paid anyway)."""
    free = budget.get(pool.gpu_type, 0) // pool.gpus_per_replica
    return max(pool.min_replicas, min(pool.max_replicas, free))


def _sized(member: SplitMember, load_rps: float, budget: Mapping[str, int]) -> Choice:
    """The fewest replicas per pool carrying ``load_rps`` (at least the minima, at most the ceilings)."""
    return tuple(
        min(_ceiling(p, budget), max(p.min_replicas, math.ceil(load_rps / (p.replica_capacity_rps or 1.0) - _EPS)))
        for p in member.pools
    )


def _options(member: SplitMember, rate_rps: float, budget: Mapping[str, int]) -> list[Choice]:
    """The deployment's efficient replica counts, from its minima up to the first that carries
    ``rate_rps`` alone (more is never cheaper): each carries one pool's next step of capacity
    with the fewest replicas of the others."""
    levels = {0.0}
    for pool in member.pools:
        step = pool.replica_capacity_rps or 0.0
        levels.update(k * step for k in range(pool.min_replicas, _ceiling(pool, budget) + 1))
    options: list[Choice] = []
    for level in sorted(levels):
        choice = _sized(member, level, budget)
        if choice not in options:
            options.append(choice)
        if not _short(rate_rps, _capacity(member, choice)):
            break
    return options


def cheapest_plan(members: Sequence[SplitMember], rate_rps: float, budget: Mapping[str, int]) -> SplitPlan:
    """Replica counts per deployment carrying ``rate_rps`` with the fewest GPUs (serving as much
    as possible when nothing carries it), with every GPU type's use within ``budget`` (the GPUs
    free for the endpoint; its minima are always allowed). Exact: a search over the deployments'
    efficient options, keyed by GPUs used per type. Every pool's capacity must be known."""
    unknown = [m.deployment for m in members if not m.known()]
    if unknown:
        raise ValueError(f"no replica capacity reported for {', '.join(unknown)}: the split cannot price it")
    limit = _limits(members, budget)
    types = sorted({p.gpu_type for m in members for p in m.pools})
    # GPUs used per type -> (capacity, choices): the most capacity for that use.
    states: dict[tuple[int, ...], tuple[float, tuple[Choice, ...]]] = {tuple(0 for _ in types): (0.0, ())}
    for member in members:
        grown: dict[tuple[int, ...], tuple[float, tuple[Choice, ...]]] = {}
        for choice in _options(member, rate_rps, limit):
            gpus = _gpus_by_type(member, choice)
            capacity = _capacity(member, choice)
            for key, (total, choices) in states.items():
                new_key = tuple(k + gpus.get(gpu, 0) for k, gpu in zip(key, types, strict=True))
                if any(k > limit.get(gpu, 0) for k, gpu in zip(new_key, types, strict=True)):
                    continue
                if new_key not in grown or grown[new_key][0] < total + capacity:
                    grown[new_key] = (total + capacity, (*choices, choice))
        states = grown
    _, (_, choices) = min(
        states.items(), key=lambda item: (_short(rate_rps, item[1][0]), sum(item[0]), -item[1][0], item[0])
    )
    return _plan(members, choices, rate_rps)


def _limits(members: Sequence[SplitMember], budget: Mapping[str, int]) -> dict[str, int]:
    """GPUs per type the plan may use: the budget, or the members' minima where they need more."""
    mins: dict[str, int] = {}
    for member in members:
        for gpu, used in _gpus_by_type(member, tuple(p.min_replicas for p in member.pools)).items():
            mins[gpu] = mins.get(gpu, 0) + used
    return {gpu: max(budget.get(gpu, 0), used) for gpu, used in mins.items()}


def _plan(members: Sequence[SplitMember], choices: Sequence[Choice], rate_rps: float) -> SplitPlan:
    capacity = {m.deployment: _capacity(m, c) for m, c in zip(members, choices, strict=True)}
    return SplitPlan(
        replicas={
            m.deployment: {p.role: n for p, n in zip(m.pools, c, strict=True)}
            for m, c in zip(members, choices, strict=True)
        },
        capacity_rps=capacity,
        gpus=sum(sum(_gpus_by_type(m, c).values()) for m, c in zip(members, choices, strict=True)),
        unserved_rps=_short(rate_rps, sum(capacity.values())),
    )


def kept_plan(members: Sequence[SplitMember], rate_rps: float, budget: Mapping[str, int]) -> SplitPlan:
    """What keeping the current shares costs: each deployment sized for its share of the rate
    (within its ceilings); what a deployment cannot carry of its share is unserved."""
    choices = [_sized(m, m.share * rate_rps, budget) for m in members]
    plan = _plan(members, choices, rate_rps)
    unserved = sum(_short(m.share * rate_rps, plan.capacity_rps[m.deployment]) for m in members)
    return plan.model_copy(update={"unserved_rps": unserved})


def decide(
    members: Sequence[SplitMember],
    rate_rps: float | None,
    budget: Mapping[str, int],
    *,
    since_move_s: float,
    rule: SplitRule | None = None,
) -> SplitDecision:
    """The split for this round: the current shares unless the cheapest plan is worth a move (see
    the module docstring). ``since_move_s``: seconds since the split last moved.

    Plans are made for the rate plus ``serve_margin`` and a move is urgent only when the current
    split leaves more than ``serve_margin`` of the rate itself unserved: between the two, a rate
    that wanders near the point where the cheap type is full does not move the split back and
    forth."""
    rule = rule or SplitRule()
    current = {m.deployment: m.share for m in members}
    if rate_rps is None or rate_rps <= 0 or not all(m.known() for m in members):
        return SplitDecision(shares=current, moved=False, reason="kept: no rate or capacity reported")
    high = rate_rps * (1.0 + rule.serve_margin)
    best, kept = cheapest_plan(members, high, budget), kept_plan(members, high, budget)
    shares = best.shares()
    if shares is None:
        return SplitDecision(shares=current, moved=False, reason="kept: no deployment has capacity")
    if max(abs(shares[name] - current[name]) for name in shares) < rule.min_shift:
        return SplitDecision(shares=current, moved=False, reason="kept: the cheapest split is the current one")
    served_more = kept_plan(members, rate_rps, budget).unserved_rps - _short(rate_rps, sum(best.capacity_rps.values()))
    saved = kept.gpus - best.gpus
    at = f"at {rate_rps:.1f} rps (+{rule.serve_margin:.0%}): {best.gpus} GPUs, {best.unserved_rps:.1f} rps unserved"
    at += f", against {kept.gpus} GPUs and {kept.unserved_rps:.1f} unserved for the current split"
    if served_more > rule.serve_margin * rate_rps:
        return SplitDecision(shares=shares, moved=True, reason=f"moved to serve {served_more:.1f} rps more {at}")
    step = max(p.gpus_per_replica for m in members for p in m.pools)
    if best.unserved_rps <= kept.unserved_rps + _EPS and saved >= max(step, rule.min_saving * kept.gpus):
        if since_move_s >= rule.dwell_s:
            return SplitDecision(shares=shares, moved=True, reason=f"moved to save {saved} GPUs {at}")
        return SplitDecision(shares=current, moved=False, reason=f"kept: moved {since_move_s:.0f} s ago ({at})")
    return SplitDecision(shares=current, moved=False, reason=f"kept: a move is not worth it ({at})")
