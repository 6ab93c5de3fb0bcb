"""Shared endpoints: the share of its endpoint's rate each deployment is told to plan for.

An endpoint served by two or more deployments is split among them (``Targets.endpoint_share``).
By default (tenant policy ``endpoint_split: capacity``) a deployment's share is its registered
capacity at max_replicas over the endpoint's; with ``endpoint_split: cost`` each round chooses the
split by cost and capacity (:mod:`global_planner.allocation.split`). A round's split, like its
grants, takes effect only when the round is committed, and its audit record carries the split, so
a restarted planner resumes it (see docs/global-planner.md, "Splitting a shared endpoint").
"""

from __future__ import annotations

from fleet_planner.contract.models import RoundRecord, SplitRecord
from fleet_planner.planning import PoolRole
from global_planner.allocation.models import overridden
from global_planner.allocation.split import SplitDecision, SplitMember, SplitPool, decide
from global_planner.policy_file import TenantPolicy
from global_planner.service.ledger import DeploymentState
from global_planner.service.rounds import Round

RATIO_SMOOTHING = 0.1  # weight of one report in a pool's sized / nominal capacity ratio


class EndpointSplits:
    """The split of each shared endpoint and what choosing it remembers between rounds.

    It reads the planner's registered deployments by reference (``deployments``, the mapping
    :class:`.state.PlannerState` owns and changes), so it always sees who serves an endpoint now.
    The tenant policy is passed to each call instead of kept: a policy reload replaces it, and
    the next round must use the new one."""

    def __init__(self, deployments: dict[str, DeploymentState]):
        self._deployments = deployments
        # The split in force (chosen by cost), when it last moved, how often.
        self._chosen: dict[str, dict[str, float]] = {}
        self._moved_s: dict[str, float] = {}
        self.changes: dict[str, int] = {}
        self._sent_share: dict[str, float | None] = {}  # the share each agent was last told
        self._report_share: dict[str, float | None] = {}  # the share its last report was planned with
        self._capacity_ratio: dict[tuple[str, str], float] = {}  # sized / nominal capacity, smoothed

    def endpoint_share(self, dep: DeploymentState, policy: TenantPolicy) -> float | None:
        """Its share of its endpoint's rate (None: alone, or no share known); remembered as sent."""
        members = self._members(dep.endpoint)
        shares = self._shares_in_force(dep.endpoint, members, policy) if len(members) >= 2 else None
        share = shares.get(dep.name) if shares else None
        self._sent_share[dep.name] = share
        return share

    def reported(self, deployment: str) -> None:
        """A new report from the deployment: it was planned with the share it was last told."""
        self._report_share[deployment] = self._sent_share.get(deployment)

    def _members(self, endpoint: str) -> list[DeploymentState]:
        return sorted((d for d in self._deployments.values() if d.endpoint == endpoint), key=lambda d: d.name)

    def _shares_in_force(
        self, endpoint: str, members: list[DeploymentState], policy: TenantPolicy
    ) -> dict[str, float] | None:
        """The split chosen by cost (:meth:`decide_round`) when it covers exactly these members,
        else each member's registered capacity at max_replicas over the endpoint's (None when
        fewer than two registered one): the fallback until every member reported capacities.
        A member's capacity is taken at the most its policy lets it run (:func:`_capacity_at_policy`):
        a deployment whose tenant may hold none of its GPU type plans for none of the endpoint,
        and its siblings for all of it, as the router will send it to them."""
        chosen = self._chosen.get(endpoint)
        if policy.endpoint_split == "cost" and chosen is not None and set(chosen) == {m.name for m in members}:
            return chosen
        capacities = {m.name: c for m in members if (c := _capacity_at_policy(m, policy)) is not None}
        if len(capacities) < 2:
            return None
        total = sum(capacities.values())
        if total <= 0:  # none of them may run: the registered split, for what it is worth
            capacities = {m.name: m.capacity_rps for m in members if m.capacity_rps}
            if len(capacities) < 2:
                return None
            total = sum(capacities.values())
        return {name: capacity / total for name, capacity in capacities.items()}

    def decide_round(
        self, now: float, policy: TenantPolicy
    ) -> tuple[dict[str, SplitDecision], dict[tuple[str, str], float] | None]:
        """Each shared endpoint's split for this round, by cost and capacity (tenant policy
        ``endpoint_split: cost``; see :mod:`global_planner.allocation.split`), and the capacity
        ratios smoothed with this round's reports (None: unchanged); both take effect at commit."""
        if policy.endpoint_split != "cost":
            return {}, None
        decisions: dict[str, SplitDecision] = {}
        ratios = dict(self._capacity_ratio)
        for endpoint in sorted({d.endpoint for d in self._deployments.values()}):
            members = self._members(endpoint)
            current = self._shares_in_force(endpoint, members, policy) if len(members) >= 2 else None
            if current is None:
                continue
            since = now - self._moved_s.get(endpoint, float("-inf"))
            _smooth_ratios(members, ratios)
            decisions[endpoint] = decide(
                _split_members(members, current, ratios, policy),
                self._endpoint_rate(members),
                self._budget(endpoint, members, policy),
                since_move_s=since,
            )
        return decisions, ratios

    def _endpoint_rate(self, members: list[DeploymentState]) -> float | None:
        """The endpoint's forecast upper rate: its agents' forecasts over the shares they were
        planned with (each agent forecasts its share of the endpoint's rate)."""
        upper = planned = 0.0
        for member in members:
            share = self._report_share.get(member.name)
            if member.report is not None and member.report.forecast is not None and share:
                upper += member.report.forecast.upper_rps
                planned += share
        return upper / planned if planned > 0 else None

    def _budget(self, endpoint: str, members: list[DeploymentState], policy: TenantPolicy) -> dict[str, int]:
        """GPUs per type the endpoint may plan on: the inventory minus what pools of other
        endpoints hold at the endpoint's priority or above (lower priorities yield to it, as in
        the allocation), and within its tenant's caps when one tenant serves it."""
        tenants = policy.tenants
        priority = min((tenants[m.tenant].priority for m in members if m.tenant in tenants), default=1.0)
        free = dict(policy.fleet.gpus)
        owned: dict[str, int] = {}
        for other in self._deployments.values():
            if other.endpoint == endpoint:
                continue
            limits = tenants.get(other.tenant)
            for pool in other.pools.values():
                gpu = pool.spec.gpu_type
                if limits is None or limits.priority >= priority:
                    free[gpu] = free.get(gpu, 0) - pool.gpus()
                if other.tenant == members[0].tenant:
                    owned[gpu] = owned.get(gpu, 0) + pool.gpus()
        if len({m.tenant for m in members}) == 1 and members[0].tenant in tenants:
            for gpu, cap in tenants[members[0].tenant].max_gpus.items():
                free[gpu] = min(free.get(gpu, 0), cap - owned.get(gpu, 0))
        return {gpu: max(0, count) for gpu, count in free.items()}

    def records(self, splits: dict[str, SplitDecision]) -> dict[str, SplitRecord]:
        """A round's splits as its audit record carries them (with the moves counted so far)."""
        return {
            endpoint: SplitRecord(
                shares=split.shares,
                moved=split.moved,
                reason=split.reason,
                changes=self.changes.get(endpoint, 0) + int(split.moved),
            )
            for endpoint, split in splits.items()
        }

    def commit(self, round_: Round) -> None:
        """The round's splits and capacity ratios in force; what forgotten deployments left behind
        is dropped."""
        if round_.capacity_ratios is not None:
            self._capacity_ratio = dict(round_.capacity_ratios)
        for endpoint, split in round_.splits.items():
            self._chosen[endpoint] = dict(split.shares)
            if split.moved:
                self._moved_s[endpoint] = round_.time_s
                self.changes[endpoint] = self.changes.get(endpoint, 0) + 1
        for table in (self._sent_share, self._report_share):
            for name in [n for n in table if n not in self._deployments]:
                del table[name]
        for key in [k for k in self._capacity_ratio if k[0] not in self._deployments]:
            del self._capacity_ratio[key]

    def restore(self, record: RoundRecord) -> None:
        """Adopt a persisted round's splits and their move counts."""
        for endpoint, split in record.splits.items():  # no saving move for a dwell after a restart
            self._chosen[endpoint], self._moved_s[endpoint] = dict(split.shares), record.time_s
            self.changes[endpoint] = split.changes


def _smooth_ratios(members: list[DeploymentState], ratios: dict[tuple[str, str], float]) -> None:
    """Fold each pool's latest :func:`_sized_ratio` into ``ratios`` (a round's working copy):
    smoothing keeps a share's own effect on the agents' sizing from moving the split back and forth."""
    for member in members:
        for role in member.pools:
            ratio = _sized_ratio(member, role)
            if ratio is not None:
                old = ratios.get((member.name, role))
                ratios[(member.name, role)] = ratio if old is None else old + RATIO_SMOOTHING * (ratio - old)


def _split_members(
    members: list[DeploymentState], shares: dict[str, float], ratios: dict[tuple[str, str], float], policy: TenantPolicy
) -> list[SplitMember]:
    """The deployments as the split sees them: bounds (within what the policy lets each pool run,
    :func:`policy_ceiling`), and what one replica of each pool carries
    by its agent's own sizing: its nominal capacity times the share of it the agent counts on
    (``ratios``, see :func:`_smooth_ratios`; a pool never sized above its minimum gets the
    endpoint's lowest ratio). The nominal ``replica_capacity_rps`` alone (the ITL limit's
    throughput) was measured far too optimistic for this: on ``shortage`` it planned 88 rps on six
    H200 GPUs."""
    known = [ratios[(m.name, role)] for m in members for role in m.pools if (m.name, role) in ratios]
    fallback = min(known) if known else 1.0
    out = []
    for member in members:
        nominal = {p.role: p.replica_capacity_rps for p in member.report.pools} if member.report else {}
        ceilings = {role: policy_ceiling(member, role, policy) for role in member.pools}
        pools = [
            SplitPool(
                role=role,
                gpu_type=pool.spec.gpu_type,
                gpus_per_replica=pool.spec.gpus_per_replica,
                min_replicas=min(pool.spec.min_replicas, ceilings[role]),
                max_replicas=ceilings[role],
                replica_capacity_rps=(
                    None if nominal.get(role) is None else nominal[role] * ratios.get((member.name, role), fallback)  # type: ignore[operator]
                ),
            )
            for role, pool in sorted(member.pools.items())
        ]
        share = min(max(shares.get(member.name, 0.0), 0.0), 1.0)
        out.append(SplitMember(deployment=member.name, share=share, pools=pools))
    return out


def policy_ceiling(dep: DeploymentState, role: PoolRole, policy: TenantPolicy) -> int:
    """The most replicas the policy lets the pool run: its registered maximum, a matching
    override's ``max_replicas`` and its tenant's ``max_gpus`` of its type (shared with the
    tenant's other pools of that type, so an upper bound)."""
    spec = dep.pools[role].spec
    ceiling = spec.max_replicas
    override = overridden(policy.deployments, dep.tenant, dep.name, role).max_replicas
    if override is not None:
        ceiling = min(ceiling, override)
    limits = policy.tenants.get(dep.tenant)
    cap = limits.max_gpus.get(spec.gpu_type) if limits is not None else None
    if cap is not None:
        ceiling = min(ceiling, cap // spec.gpus_per_replica)
    return ceiling


def _capacity_at_policy(dep: DeploymentState, policy: TenantPolicy) -> float | None:
    """Requests/s the deployment serves at the most its policy lets it run: its registered
    capacity (at every pool's maximum) times its tightest pool's ceiling over that pool's maximum
    (exact for one pool or a capped bottleneck pool, a lower bound otherwise); 0 when a pool may
    run no replica (a registered or policy maximum of 0: an agent cannot register a capacity of
    0, so it sends none); None when unknown."""
    scales = [
        policy_ceiling(dep, role, policy) / pool.spec.max_replicas if pool.spec.max_replicas > 0 else 0.0
        for role, pool in dep.pools.items()
    ]
    scale = min(scales, default=1.0)
    if scale <= 0:
        return 0.0
    return None if dep.capacity_rps is None else dep.capacity_rps * scale


def _sized_ratio(dep: DeploymentState, role: PoolRole) -> float | None:
    """The share of a pool's nominal per-replica capacity its agent's sizing counts on: its
    forecast upper rate over the replicas it wants, over the nominal. None when the report says
    nothing of it: no rate, or a count held at the pool's minimum or maximum."""
    report = dep.report
    pool = next((p for p in report.pools if p.role == role), None) if report is not None else None
    if report is None or pool is None or pool.replica_capacity_rps is None or report.forecast is None:
        return None
    spec, wanted, upper = dep.pools[role].spec, pool.wanted_replicas, report.forecast.upper_rps
    if wanted is None or not spec.min_replicas < wanted < spec.max_replicas or upper <= 0:
        return None
    return min(1.0, upper / wanted / pool.replica_capacity_rps)
