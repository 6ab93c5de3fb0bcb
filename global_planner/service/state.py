"""The planner's grant/lease state machine: pure (no I/O, time is an argument), so the gRPC server,
the simulator and property tests drive the very same code.

Accounting, per pool (replicas; GPUs = replicas * gpus_per_replica):

* ``grant`` — what the agent may run under its current lease.
* ``usage`` — what the pool may *physically* hold: ``>= grant``. A scale-down lowers ``grant`` at
  once but ``usage`` only when the agent confirms the drain (a report with
  ``applied_decision_id >= pending_release`` whose ready + starting + draining fits the grant, or
  an AckDrained for that decision). A scale-up raises both at once.
* The safety invariant: for every GPU type, ``sum(usage * gpus_per_replica) <= inventory`` after
  every operation. Rounds only grant scale-ups out of ``inventory - committed`` (so a pool's
  freed GPUs go elsewhere only after its drain is confirmed); nothing else raises ``usage``
  except an agent reporting more replicas than it was granted, which is counted (never hidden).

Leases: only allocation rounds issue or extend them (``now + lease_s`` for agents heard from in
the last ``liveness_s``), and rounds are persisted before anyone sees them, so a restarted
planner knows every lease an agent may hold. When a lease lapses the pool keeps
``min(fallback_replicas, usage)`` — exactly what the agent contract lets it fall back to (see
``local_agent.planner_link.client.effective_targets``) — and the rest returns to the fleet.

Restart: :meth:`PlannerState.restore` loads the last audit record's pools as outstanding (no
session); they hold their recorded usage until their lease lapses or their agent registers and
reports again. Decision ids continue after the recorded one.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

from global_planner.allocation import Allocation, AllocationRequest, PoolDemand, allocate, endpoint_plans
from global_planner.policy_file import TenantPolicy
from fleet_planner.contract.models import (
    AckApplied,
    AckDrained,
    AgentReport,
    DemandSummary,
    DeploymentRecord,
    PoolRecord,
    PoolRegistration,
    PoolReport,
    PoolTarget,
    Registration,
    RoundRecord,
    Targets,
)

Solver = Callable[[AllocationRequest], Allocation]


class StateError(Exception):
    """A request the state refuses; subclasses map to one gRPC status each."""


class UnknownDeployment(StateError):
    pass


class UnknownSession(StateError):
    pass


class InvalidRequest(StateError):
    pass


class Conflict(StateError):
    pass


@dataclass
class _Pool:
    spec: PoolRegistration
    grant: int = 0
    usage: int = 0
    pending_release: int | None = None
    grant_decision_id: int = 0
    allocated: int | None = None
    reason: str = "not yet allocated"
    demand: DemandSummary | None = None

    def gpus(self) -> int:
        return self.usage * self.spec.gpus_per_replica

    def confirm(self, in_use: int) -> None:
        """The agent now holds ``in_use`` replicas, having seen the latest reduction."""
        self.usage = max(self.grant, in_use)
        if self.usage == self.grant:
            self.pending_release = None


@dataclass
class _Deployment:
    name: str
    tenant: str
    endpoint: str
    pools: dict[str, _Pool]
    lease_expires_s: float
    session_id: str | None = None
    last_contact_s: float | None = None
    report: AgentReport | None = None
    sequence: int = -1
    applied_decision_id: int = 0
    decision_id: int = 0
    expired: bool = False
    routing: dict[str, float] = field(default_factory=dict)
    admission_rps: float | None = None


@dataclass(frozen=True)
class RoundInput:
    """A snapshot for one allocation: the request and which pools bid in it."""

    time_s: float
    decision_id: int
    request: AllocationRequest | None
    held_gpus: dict[str, int]
    demand: dict[str, DemandSummary]


@dataclass(frozen=True)
class _PoolUpdate:
    grant: int
    usage: int
    pending_release: int | None
    allocated: int
    reason: str


@dataclass(frozen=True)
class Round:
    """The outcome of a round, not yet in force: persist ``record`` first, then ``commit`` it."""

    decision_id: int
    time_s: float
    allocation: Allocation | None
    updates: dict[tuple[str, str], _PoolUpdate]
    leases: dict[str, float]
    routing: dict[str, dict[str, float]]
    admission: dict[str, float]
    record: RoundRecord
    version: int


class PlannerState:
    """Registered deployments, their reports, grants, leases and drains; one allocation per round."""

    def __init__(
        self,
        policy: TenantPolicy,
        *,
        lease_s: float = 30.0,
        liveness_s: float | None = None,
        report_interval_s: float = 5.0,
        time_limit_s: float = 0.2,
    ):
        if lease_s <= 0:
            raise ValueError("lease_s must be > 0")
        self.policy = policy
        self.lease_s = lease_s
        self.liveness_s = liveness_s if liveness_s is not None else lease_s / 2
        self.report_interval_s = report_interval_s
        self.time_limit_s = time_limit_s
        self.next_decision_id = 1
        self._deployments: dict[str, _Deployment] = {}
        self._previous: dict[str, int] = {}
        self._version = 0

    # ----------------------------------------------------------------- queries

    @property
    def inventory(self) -> dict[str, int]:
        return dict(self.policy.fleet.gpus)

    def deployments(self) -> list[str]:
        return sorted(self._deployments)

    def tenant_of(self, deployment: str) -> str | None:
        known = self._deployments.get(deployment)
        return known.tenant if known else None

    def committed_gpus(self) -> dict[str, int]:
        """Granted + draining GPUs per type: what the fleet may physically be using."""
        used: dict[str, int] = dict.fromkeys(self.policy.fleet.gpus, 0)
        for dep in self._deployments.values():
            for pool in dep.pools.values():
                used[pool.spec.gpu_type] = used.get(pool.spec.gpu_type, 0) + pool.gpus()
        return used

    def granted_gpus(self) -> dict[str, dict[str, int]]:
        """Granted GPUs per tenant and type (without drains), for metrics."""
        out: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        for dep in self._deployments.values():
            for pool in dep.pools.values():
                out[dep.tenant][pool.spec.gpu_type] += pool.grant * pool.spec.gpus_per_replica
        return {tenant: dict(by_type) for tenant, by_type in out.items()}

    def usage(self, deployment: str, role: str) -> int:
        """Replicas the planner counts for a pool (grant plus unconfirmed drains)."""
        return self._deployments[deployment].pools[role].usage

    def targets(self, deployment: str, now: float) -> Targets:
        """The deployment's current grant as agents see it."""
        self._expire(now)
        dep = self._deployments.get(deployment)
        if dep is None:
            raise UnknownDeployment(f"deployment {deployment!r} is not registered")
        return self._targets(dep, now)

    def _targets(self, dep: _Deployment, now: float) -> Targets:
        """Decision 0 (no round yet) is a holding lease: keep the replicas already counted."""
        if dep.decision_id == 0:
            pools = [
                PoolTarget(role=role, replicas=p.usage, reason="no allocation yet: holding current replicas")
                for role, p in sorted(dep.pools.items())
            ]
        else:
            pools = [PoolTarget(role=role, replicas=p.grant, reason=p.reason) for role, p in sorted(dep.pools.items())]
        return Targets(
            deployment=dep.name,
            decision_id=dep.decision_id,
            lease_expires_s=dep.lease_expires_s,
            planner_time_s=now,
            pools=pools,
            endpoint=dep.endpoint,
            routing=dict(dep.routing),
            admission_rps=dep.admission_rps,
        )

    # --------------------------------------------------------------- mutations

    def set_policy(self, policy: TenantPolicy) -> None:
        """A new policy takes effect at the next round; grants already given stay until drained."""
        self.policy = policy
        self._version += 1

    def register(self, registration: Registration, session_id: str, now: float) -> Targets:
        """Start a session; pools keep their grants and unconfirmed drains across re-registration."""
        self._expire(now)
        for index, spec in enumerate(registration.pools):
            if spec.gpu_type not in self.policy.fleet.gpus:
                fleet = ", ".join(sorted(self.policy.fleet.gpus))
                raise InvalidRequest(f"pools[{index}].gpu_type: unknown GPU type {spec.gpu_type!r} (fleet has {fleet})")
        known = self._deployments.get(registration.deployment)
        pools = {spec.role: _Pool(spec=spec) for spec in registration.pools}
        if known is not None:
            if known.tenant != registration.tenant:
                raise Conflict(f"deployment {known.name!r} belongs to tenant {known.tenant!r}")
            for role, old in known.pools.items():
                new = pools.get(role)
                if old.usage == 0:
                    continue
                if new is None:
                    raise Conflict(f"pool {role!r} still holds {old.usage} replicas and cannot be dropped")
                if (new.spec.gpu_type, new.spec.gpus_per_replica) != (old.spec.gpu_type, old.spec.gpus_per_replica):
                    raise Conflict(
                        f"pool {role!r} still holds {old.usage} replicas: gpu_type and gpus_per_replica are fixed"
                    )
                new.grant, new.usage, new.pending_release = old.grant, old.usage, old.pending_release
                new.grant_decision_id, new.reason = old.grant_decision_id, old.reason
            known.endpoint, known.pools = registration.endpoint, pools
            dep = known
        else:
            dep = _Deployment(
                name=registration.deployment,
                tenant=registration.tenant,
                endpoint=registration.endpoint,
                pools=pools,
                lease_expires_s=now + self.lease_s,
            )
            self._deployments[dep.name] = dep
        dep.session_id, dep.sequence, dep.last_contact_s, dep.report = session_id, -1, now, None
        self._version += 1
        return self._targets(dep, now)

    def _session(self, deployment: str, session_id: str) -> _Deployment:
        dep = self._deployments.get(deployment)
        if dep is None:
            raise UnknownDeployment(f"deployment {deployment!r} is not registered: call Register first")
        if dep.session_id != session_id:
            raise UnknownSession(f"session {session_id!r} is not current for {deployment!r}: call Register again")
        return dep

    def report(self, report: AgentReport, now: float) -> Targets:
        """Record observations and demand; replica counts update usage (see the module docstring)."""
        self._expire(now)
        dep = self._session(report.deployment, report.session_id)
        for index, pool_report in enumerate(report.pools):
            if pool_report.role not in dep.pools:
                raise InvalidRequest(f"pools[{index}].role: deployment {dep.name!r} has no {pool_report.role!r} pool")
        dep.last_contact_s = now
        if report.sequence <= dep.sequence:
            return self._targets(dep, now)  # stale or replayed: answer, change nothing
        dep.sequence = report.sequence
        dep.report = report
        dep.applied_decision_id = max(dep.applied_decision_id, report.applied_decision_id)
        for pool_report in report.pools:
            pool = dep.pools[pool_report.role]
            if pool.pending_release is None or report.applied_decision_id >= pool.pending_release:
                pool.confirm(pool_report.in_use)
            else:
                pool.usage = max(pool.usage, pool_report.in_use)
        self._version += 1
        return self._targets(dep, now)

    def ack_applied(self, ack: AckApplied, now: float) -> Targets:
        """Targets were set. Usage is left to reports: an ack says what was asked of the
        orchestrator, not which replicas still hold GPUs (and may arrive out of order)."""
        self._expire(now)
        dep = self._session(ack.deployment, ack.session_id)
        for index, applied in enumerate(ack.applied):
            if applied.role not in dep.pools:
                raise InvalidRequest(f"applied[{index}].role: deployment {dep.name!r} has no {applied.role!r} pool")
        if ack.decision_id > self.next_decision_id - 1:
            raise InvalidRequest(f"decision_id: {ack.decision_id} was never issued")
        dep.last_contact_s = now
        dep.applied_decision_id = max(dep.applied_decision_id, ack.decision_id)
        self._version += 1
        return self._targets(dep, now)

    def ack_drained(self, ack: AckDrained, now: float) -> Targets:
        """A drain down to ``decision_id``'s targets is complete: release the pool's excess."""
        self._expire(now)
        dep = self._session(ack.deployment, ack.session_id)
        pool = dep.pools.get(ack.role)
        if pool is None:
            raise InvalidRequest(f"role: deployment {dep.name!r} has no {ack.role!r} pool")
        if ack.decision_id > self.next_decision_id - 1:
            raise InvalidRequest(f"decision_id: {ack.decision_id} was never issued")
        if ack.gpus_freed % pool.spec.gpus_per_replica:
            raise InvalidRequest(
                f"gpus_freed: {ack.gpus_freed} is not a multiple of gpus_per_replica {pool.spec.gpus_per_replica}"
            )
        dep.last_contact_s = now
        if pool.pending_release is not None and ack.decision_id >= pool.pending_release:
            pool.confirm(pool.grant)
        self._version += 1
        return self._targets(dep, now)

    def _expire(self, now: float) -> None:
        """Lapsed leases: each pool keeps what its agent may fall back to, the rest returns."""
        for dep in self._deployments.values():
            if dep.expired or now < dep.lease_expires_s:
                continue
            dep.expired = True
            dep.routing, dep.admission_rps = {}, None
            for pool in dep.pools.values():
                kept = min(pool.spec.fallback_replicas, pool.usage)
                pool.grant = pool.usage = kept
                pool.pending_release = None
                pool.allocated = None
                pool.reason = f"lease expired at {dep.lease_expires_s:.1f}: fallback {kept}"
            self._version += 1

    # ------------------------------------------------------------------ rounds

    def _bidding(self, dep: _Deployment, now: float) -> bool:
        return (
            dep.session_id is not None
            and dep.report is not None
            and dep.last_contact_s is not None
            and now - dep.last_contact_s <= self.liveness_s
        )

    def begin_round(self, now: float) -> RoundInput:
        """Snapshot the bids: live agents with reports bid; everyone else's usage is held.

        A bidder's draining replicas are not held off the budget: the allocation is the target
        state once drains finish, and :meth:`settle` grants scale-ups only out of GPUs free now.
        (Holding them too made every drain shrink the next round's budget, which cut other pools
        to fit the same targets again: one scale-down cascaded into several, then re-grants.)"""
        self._expire(now)
        held: dict[str, int] = defaultdict(int)
        bidders = [dep for dep in self._deployments.values() if self._bidding(dep, now)]
        names = {dep.name for dep in bidders}
        for dep in self._deployments.values():
            if dep.name in names:
                continue
            for pool in dep.pools.values():
                held[pool.spec.gpu_type] += pool.usage * pool.spec.gpus_per_replica
        demands: list[PoolDemand] = []
        summaries: dict[str, DemandSummary] = {}
        for dep in sorted(bidders, key=lambda d: d.name):
            assert dep.report is not None
            rps = _demand_rps(dep.report)
            reports = {p.role: p for p in dep.report.pools}
            paired = "prefill" in dep.pools and "decode" in dep.pools
            for role, pool in sorted(dep.pools.items()):
                demand = _pool_demand(dep, role, pool, reports.get(role), rps, paired)
                demands.append(demand)
                summaries[demand.pool_id] = _summary(dep.report, reports.get(role), demand.demand_weight)
        request = None
        if demands:
            request = AllocationRequest(
                pools=demands,
                inventory=self.inventory,
                tenants=dict(self.policy.tenants),
                overrides=list(self.policy.deployments),
                held_gpus=dict(held),
                previous={k: v for k, v in self._previous.items() if k in summaries} or None,
                time_limit_s=self.time_limit_s,
            )
        return RoundInput(now, self.next_decision_id, request, dict(held), summaries)

    def settle(self, round_input: RoundInput, allocation: Allocation | None, now: float) -> Round:
        """Turn the allocator's answer into grants, gating scale-ups on GPUs actually free now."""
        self._expire(now)
        decision_id = round_input.decision_id
        if decision_id != self.next_decision_id:
            raise RuntimeError(f"round {decision_id} is stale (next is {self.next_decision_id})")
        committed = self.committed_gpus()
        inventory = self.inventory
        updates: dict[tuple[str, str], _PoolUpdate] = {}
        ups: list[tuple[float, str, str, _Pool, int, str]] = []
        targets = allocation.replicas if allocation is not None else {}
        request = round_input.request
        by_id = {p.pool_id: p for p in request.pools} if request is not None else {}
        for dep in self._deployments.values():
            if not self._bidding(dep, now):
                continue
            priority = self.policy.tenants[dep.tenant].priority if dep.tenant in self.policy.tenants else 1.0
            for role, pool in dep.pools.items():
                pool_id = f"{dep.name}/{role}"
                bid = by_id.get(pool_id)
                if pool_id not in targets or bid is None:
                    continue
                if (bid.gpu_type, bid.gpus_per_replica) != (pool.spec.gpu_type, pool.spec.gpus_per_replica):
                    continue  # re-registered with another geometry since the snapshot: next round
                target = targets[pool_id]
                reason = allocation.reasons.get(pool_id, "") if allocation is not None else ""
                if target <= pool.usage:
                    pending = None
                    if target < pool.usage:  # a further cut needs its own confirmation; else keep waiting
                        further = target < pool.grant or pool.pending_release is None
                        pending = decision_id if further else pool.pending_release
                    updates[(dep.name, role)] = _PoolUpdate(target, pool.usage, pending, target, reason)
                else:
                    ups.append((-priority, pool_id, dep.name, pool, target, reason))
        for _, _, name, pool, target, reason in sorted(ups, key=lambda u: (u[0], u[1])):
            gpr, gpu = pool.spec.gpus_per_replica, pool.spec.gpu_type
            room = max(0, inventory.get(gpu, 0) - committed.get(gpu, 0)) // gpr
            extra = min(target - pool.usage, room)
            grant = pool.usage + extra
            committed[gpu] = committed.get(gpu, 0) + extra * gpr
            if grant < target:
                reason += f"; gated: {target - grant} replica(s) wait for {gpu} GPUs still held (drains, silent agents)"
            updates[(name, pool.spec.role)] = _PoolUpdate(grant, grant, None, target, reason)

        leases: dict[str, float] = {}
        granted: dict[str, int] = {}
        demand_pools: list[PoolDemand] = []
        for (name, role), update in updates.items():
            leases[name] = now + self.lease_s
            granted[f"{name}/{role}"] = update.grant
            demand_pools.append(by_id[f"{name}/{role}"])
        plans = endpoint_plans(demand_pools, granted) if demand_pools else {}
        routing = {endpoint: plan.weights for endpoint, plan in plans.items()}
        admission = {endpoint: plan.admission_rps for endpoint, plan in plans.items() if plan.admission_rps is not None}
        record = self._record(decision_id, now, allocation, round_input, updates, leases, routing, admission, committed)
        return Round(decision_id, now, allocation, updates, leases, routing, admission, record, self._version)

    def commit(self, round_: Round) -> Round:
        """Put a settled (and persisted) round in force; nothing may have changed in between."""
        if round_.version != self._version or round_.decision_id != self.next_decision_id:
            raise RuntimeError("state changed between settle and commit")
        for (name, role), update in round_.updates.items():
            pool = self._deployments[name].pools[role]
            if update.grant != pool.grant:
                pool.grant_decision_id = round_.decision_id
            pool.grant, pool.usage, pool.pending_release = update.grant, update.usage, update.pending_release
            pool.allocated, pool.reason = update.allocated, update.reason
        for name, expires in round_.leases.items():
            dep = self._deployments[name]
            dep.lease_expires_s, dep.expired, dep.decision_id = expires, False, round_.decision_id
            dep.routing = dict(round_.routing.get(dep.endpoint, {}))
            dep.admission_rps = round_.admission.get(dep.endpoint)
        self._previous = {f"{n}/{r}": u.allocated for (n, r), u in round_.updates.items()}
        self.next_decision_id = round_.decision_id + 1
        self._version += 1
        return round_

    def plan(self, now: float, solve: Solver = allocate) -> Round:
        """One whole round (snapshot, solve, settle), not yet committed."""
        round_input = self.begin_round(now)
        allocation = solve(round_input.request) if round_input.request is not None else None
        return self.settle(round_input, allocation, now)

    def _record(
        self,
        decision_id: int,
        now: float,
        allocation: Allocation | None,
        round_input: RoundInput,
        updates: dict[tuple[str, str], _PoolUpdate],
        leases: dict[str, float],
        routing: dict[str, dict[str, float]],
        admission: dict[str, float],
        committed: dict[str, int],
    ) -> RoundRecord:
        tenant_gpus: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        deployments: list[DeploymentRecord] = []
        for dep in sorted(self._deployments.values(), key=lambda d: d.name):
            pools: list[PoolRecord] = []
            for role, pool in sorted(dep.pools.items()):
                update = updates.get((dep.name, role))
                grant = update.grant if update else pool.grant
                usage = update.usage if update else pool.usage
                pending = update.pending_release if update else pool.pending_release
                tenant_gpus[dep.tenant][pool.spec.gpu_type] += usage * pool.spec.gpus_per_replica
                summary = round_input.demand.get(f"{dep.name}/{role}") if update else None
                if summary is not None:
                    report = next((p for p in dep.report.pools if p.role == role), None) if dep.report else None
                    summary = summary.model_copy(update=_attainment_at(report, grant))
                pools.append(
                    PoolRecord(
                        role=role,
                        gpu_type=pool.spec.gpu_type,
                        gpus_per_replica=pool.spec.gpus_per_replica,
                        min_replicas=pool.spec.min_replicas,
                        max_replicas=pool.spec.max_replicas,
                        fallback_replicas=pool.spec.fallback_replicas,
                        granted=grant,
                        usage=usage,
                        pending_release=pending,
                        grant_decision_id=decision_id
                        if update and update.grant != pool.grant
                        else pool.grant_decision_id,
                        allocated=update.allocated if update else None,
                        reason=update.reason if update else _held_reason(dep, now),
                        demand=summary,
                        moved_by=allocation.drivers.get(f"{dep.name}/{role}") if allocation and update else None,
                    )
                )
            deployments.append(
                DeploymentRecord(
                    deployment=dep.name,
                    tenant=dep.tenant,
                    endpoint=dep.endpoint,
                    lease_expires_s=leases.get(dep.name, dep.lease_expires_s),
                    decision_id=decision_id if dep.name in leases else dep.decision_id,
                    bidding=dep.name in leases,
                    pools=pools,
                )
            )
        return RoundRecord(
            decision_id=decision_id,
            time_s=now,
            status=allocation.status if allocation is not None else "idle",
            objective=allocation.objective if allocation is not None else None,
            gap=allocation.gap if allocation is not None else None,
            solve_ms=allocation.solve_ms if allocation is not None else None,
            inventory=self.inventory,
            held_gpus=round_input.held_gpus,
            committed_gpus=committed,
            tenant_gpus={t: dict(v) for t, v in sorted(tenant_gpus.items())},
            routing=routing,
            admission_rps=admission,
            deployments=deployments,
        )

    # ----------------------------------------------------------------- restart

    def restore(self, record: RoundRecord) -> None:
        """Adopt a persisted round's pools as outstanding: held until re-reported or lapsed."""
        for rec in record.deployments:
            pools: dict[str, _Pool] = {}
            for p in rec.pools:
                spec = PoolRegistration(
                    role=p.role,
                    gpu_type=p.gpu_type,
                    gpus_per_replica=p.gpus_per_replica,
                    min_replicas=p.min_replicas,
                    max_replicas=p.max_replicas,
                    fallback_replicas=p.fallback_replicas,
                )
                pending = p.pending_release if p.usage > p.granted else None
                if p.usage > p.granted and pending is None:
                    pending = record.decision_id
                pools[p.role] = _Pool(
                    spec=spec,
                    grant=p.granted,
                    usage=p.usage,
                    pending_release=pending,
                    grant_decision_id=p.grant_decision_id,
                    reason=f"restored from decision {record.decision_id}",
                )
            self._deployments[rec.deployment] = _Deployment(
                name=rec.deployment,
                tenant=rec.tenant,
                endpoint=rec.endpoint,
                pools=pools,
                lease_expires_s=rec.lease_expires_s,
                decision_id=rec.decision_id,
            )
        self._previous = {
            f"{d.deployment}/{p.role}": p.allocated
            for d in record.deployments
            for p in d.pools
            if p.allocated is not None
        }
        self.next_decision_id = max(self.next_decision_id, record.decision_id + 1)
        self._version += 1


def _demand_rps(report: AgentReport | None) -> float | None:
    """The rate a deployment's value is weighted by: the forecast, else the observed rate."""
    if report is None:
        return None
    if report.forecast is not None:
        return report.forecast.mean_rps
    if report.observed is not None and report.observed.admitted_rps is not None:
        return report.observed.admitted_rps
    return None


def _pool_demand(
    dep: _Deployment, role: str, pool: _Pool, report: PoolReport | None, weight: float | None, paired: bool
) -> PoolDemand:
    """One pool's bid. Without a curve or a rate the pool bids to hold its grant ("no data" must
    not look like "no traffic" and scale it to zero). The observed rate goes along: the allocator
    checks the bid's rate against it."""
    observed = dep.report.observed if dep.report is not None else None
    observed_rps = observed.admitted_rps if observed is not None else None
    spec = pool.spec
    low = min(max(spec.min_replicas, spec.fallback_replicas), spec.max_replicas)
    curve: list[float]
    if report is not None and report.curve and weight is not None:
        curve = list(report.curve)  # expected attainment; the pessimistic curve is for explain
    else:
        curve, weight = [0.0], 0.0
        # Hold what it runs (its first grant may not exist yet): usage counts replicas reported.
        low = min(max(low, pool.grant, pool.usage), spec.max_replicas)
    return PoolDemand(
        deployment=dep.name,
        tenant=dep.tenant,
        endpoint=dep.endpoint,
        role=role,  # type: ignore[arg-type]
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
        running_replicas=report.ready + report.starting if report is not None else None,
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


def _held_reason(dep: _Deployment, now: float) -> str:
    if dep.session_id is None:
        return f"restored: held until its agent reports or the lease lapses at {dep.lease_expires_s:.1f}"
    if dep.expired:
        return "lease expired: holding the fallback floor"
    if dep.report is None:
        return "registered, no report yet"
    return f"silent since {dep.last_contact_s:.1f}: grant kept until the lease lapses at {dep.lease_expires_s:.1f}"
