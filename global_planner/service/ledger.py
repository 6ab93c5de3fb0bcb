"""Grant state: what each registered pool may run (``grant``) and may physically hold (``usage``).

Per pool (replicas; GPUs = replicas * gpus_per_replica):

* ``grant`` — what the agent may run under its current lease.
* ``usage`` — what the pool may *physically* hold: ``>= grant``. Scale-downs and lapsed leases
  lower ``grant`` at once but ``usage`` only when something confirms the GPUs are free (see
  :mod:`.drains`). A scale-up raises both at once.
* The safety invariant: for every GPU type, ``sum(usage * gpus_per_replica) <= inventory`` after
  every operation. Rounds grant scale-ups only out of ``inventory - committed``; a report can raise
  ``usage`` above what is counted only into GPUs that are free and within its tenant's cap
  (:func:`countable`), so an agent that over-reports takes nothing another pool holds.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from fleet_planner.contract.models import AgentReport, DemandSummary, PoolRegistration, RoundRecord
from fleet_planner.planning import PoolRole
from global_planner.policy_file import TenantPolicy


@dataclass
class PoolState:
    spec: PoolRegistration
    grant: int = 0
    usage: int = 0
    pending_release: int | None = None
    grant_decision_id: int = 0
    allocated: int | None = None
    reason: str = "not yet allocated"
    headroom: int = 0  # replicas of the grant lent from idle GPUs above the ask (fill_idle): not its own
    demand: DemandSummary | None = None

    def gpus(self) -> int:
        return self.usage * self.spec.gpus_per_replica


@dataclass
class DeploymentState:
    name: str
    tenant: str
    endpoint: str
    pools: dict[PoolRole, PoolState]
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
    capacity_rps: float | None = None  # at max_replicas, from the registration

    def holds(self) -> bool:
        return any(pool.usage for pool in self.pools.values())


def committed_gpus(deployments: Iterable[DeploymentState], gpu_types: Iterable[str]) -> dict[str, int]:
    """Granted + draining (+ unconfirmed) GPUs per type: what the fleet may physically be using."""
    used: dict[str, int] = dict.fromkeys(gpu_types, 0)
    for dep in deployments:
        for pool in dep.pools.values():
            used[pool.spec.gpu_type] = used.get(pool.spec.gpu_type, 0) + pool.gpus()
    return used


def lent_gpus(deployments: Iterable[DeploymentState]) -> dict[str, dict[str, int]]:
    """GPUs per tenant and type that pools hold only as idle headroom (``fill_idle``): any ask
    takes them. Tenants and types lending nothing are left out."""
    out: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for dep in deployments:
        for pool in dep.pools.values():
            lent = min(pool.headroom, pool.grant) * pool.spec.gpus_per_replica
            if lent:
                out[dep.tenant][pool.spec.gpu_type] += lent
    return {tenant: dict(by_type) for tenant, by_type in out.items()}


def granted_gpus(deployments: Iterable[DeploymentState]) -> dict[str, dict[str, int]]:
    """Granted GPUs per tenant and type (without drains), for metrics."""
    out: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for dep in deployments:
        for pool in dep.pools.values():
            out[dep.tenant][pool.spec.gpu_type] += pool.grant * pool.spec.gpus_per_replica
    return {tenant: dict(by_type) for tenant, by_type in out.items()}


def countable(
    deployments: Iterable[DeploymentState], policy: TenantPolicy, dep: DeploymentState, pool: PoolState, claimed: int
) -> int:
    """How many of ``claimed`` replicas a report may make the planner count for ``pool``: what it
    already counts, plus at most the GPUs free in the fleet and left under its tenant's cap.

    Replicas beyond that are real only if the agent broke its contract (ran more than granted);
    counting them would take GPUs from pools that hold them, so they are not counted."""
    if claimed <= pool.usage:
        return claimed
    gpu, gpr = pool.spec.gpu_type, pool.spec.gpus_per_replica
    everyone = list(deployments)
    free = policy.fleet.gpus.get(gpu, 0) - committed_gpus(everyone, [gpu])[gpu]
    limits = policy.tenants.get(dep.tenant)
    cap = limits.max_gpus.get(gpu) if limits is not None else None
    if cap is not None:
        tenant_use = committed_gpus((d for d in everyone if d.tenant == dep.tenant), [gpu])[gpu]
        free = min(free, cap - tenant_use)
    return pool.usage + min(claimed - pool.usage, max(0, free) // gpr)


def restored(record: RoundRecord) -> dict[str, DeploymentState]:
    """A persisted round's deployments as outstanding (no session): each pool holds its recorded
    grant and usage; usage above the grant waits for a confirmation as it did before."""
    out: dict[str, DeploymentState] = {}
    for rec in record.deployments:
        pools: dict[PoolRole, PoolState] = {}
        for p in rec.pools:
            spec = PoolRegistration(
                role=p.role,
                gpu_type=p.gpu_type,
                gpus_per_replica=p.gpus_per_replica,
                min_replicas=p.min_replicas,
                max_replicas=p.max_replicas,
                fallback_replicas=p.fallback_replicas,
                startup_s=p.startup_s,
            )
            pending = p.pending_release if p.usage > p.granted else None
            if p.usage > p.granted and pending is None:
                pending = record.decision_id
            pools[p.role] = PoolState(
                spec=spec,
                grant=p.granted,
                usage=p.usage,
                pending_release=pending,
                grant_decision_id=p.grant_decision_id,
                reason=f"restored from decision {record.decision_id}",
                headroom=min(p.headroom, p.granted),
            )
        out[rec.deployment] = DeploymentState(
            name=rec.deployment,
            tenant=rec.tenant,
            endpoint=rec.endpoint,
            pools=pools,
            lease_expires_s=rec.lease_expires_s,
            decision_id=rec.decision_id,
        )
    return out
