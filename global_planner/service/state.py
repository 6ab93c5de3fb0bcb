"""The planner's state machine: sessions and messages in, grants out. Pure (no I/O, time is an
argument), so the gRPC server, the simulator and property tests drive the very same code.

The concerns live in their own modules: the grant ledger and its safety invariant
(:mod:`.ledger`), when drained GPUs count as free (:mod:`.drains`), leases and what a lapse keeps
(:mod:`.leases`), how a round turns bids into grants and an audit record (:mod:`.rounds`), and
the share of a shared endpoint's rate each deployment plans for (:mod:`.splits`). This class
validates each message against the registration and the policy, then applies it.

Restart: :meth:`PlannerState.resume` loads the newest audit record's pools as outstanding (no
session); they hold their recorded usage until their agent registers and reports again (or, past
the lease, until something confirms them free). Decision ids continue after the highest ever
written. If a record newer than the restored one was unreadable, the planner grants no scale-up
for one lease length (every lease that record may have issued has lapsed by then, and live agents
have reported what they hold).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from fleet_planner.contract.models import (
    AckApplied,
    AckDrained,
    AgentReport,
    PoolTarget,
    Registration,
    RoundRecord,
    Targets,
)
from fleet_planner.planning import PoolRole
from global_planner.allocation import Allocation, AllocationRequest, allocate
from global_planner.policy_file import TenantPolicy
from global_planner.service import drains, leases, ledger, rounds
from global_planner.service.audit import Recovery
from global_planner.service.ledger import DeploymentState, PoolState
from global_planner.service.rounds import Round, RoundInput
from global_planner.service.splits import EndpointSplits

Solver = Callable[[AllocationRequest], Allocation]

__all__ = ["PlannerState", "Round", "RoundInput", "Solver", "StateError"]


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
        self.quarantine_until_s = float("-inf")
        # Bid snapshots taken so far: a round on ask whose report a later snapshot already holds
        # has nothing new to decide (see PlannerServer.run_round).
        self.snapshots = 0
        self.checkpoint_due = False
        self._deployments: dict[str, DeploymentState] = {}
        self._previous: dict[str, int] = {}
        self._version = 0
        self.splits = EndpointSplits(self._deployments)  # shared endpoints' split (:mod:`.splits`)

    # ----------------------------------------------------------------- queries

    @property
    def inventory(self) -> dict[str, int]:
        return dict(self.policy.fleet.gpus)

    def deployments(self) -> list[str]:
        return sorted(self._deployments)

    def committed_gpus(self) -> dict[str, int]:
        """Granted + draining (+ unconfirmed) GPUs per type: what the fleet may physically be using."""
        return ledger.committed_gpus(self._deployments.values(), self.policy.fleet.gpus)

    def asks_for_change(self, deployment: str, now: float) -> str | None:
        """Why a round run at once could move the deployment's grant towards its last report's
        ask, or None: it asks for fewer replicas than its own part of the grant, or, while scale-ups
        are allowed, for more while GPUs of that pool's type are free now (inventory minus committed,
        plus what other pools hold only as idle headroom, which the round takes back) or while
        that pool is observed short, so the round may take GPUs others hold (see
        ``PlannerServer(round_on_ask=...)``). Waiting for the next timed round there cost the
        starved top tenant of ``day-clients d1+d4 supply=0.67`` its 99%: its drain and cold start
        began a round later, into the load's next rise (docs/global-planner.md)."""
        dep = self._deployments.get(deployment)
        if dep is None or dep.report is None:
            return None
        for report in dep.report.pools:
            pool = dep.pools.get(report.role)
            # idle headroom it was lent (fill_idle) is not its own: giving it back needs no round
            if (
                pool is not None
                and report.wanted_replicas is not None
                and report.wanted_replicas < pool.grant - pool.headroom
            ):
                return f"{report.role} asks for fewer replicas than its grant"
        if now < self.quarantine_until_s:
            return None
        committed = self.committed_gpus()
        inventory = self.policy.fleet.gpus
        lent = ledger.lent_gpus(d for d in self._deployments.values() if d.name != deployment).values()
        for gpu, per in sorted(self.wanting(deployment)):
            free = inventory.get(gpu, 0) - committed.get(gpu, 0)
            if free >= per:
                return f"asks for more while {gpu} GPUs are free"
            if free + sum(by_type.get(gpu, 0) for by_type in lent) >= per:
                return f"asks for more while {gpu} GPUs are lent as idle headroom"
        short = rounds.short_pool(dep)
        return None if short is None else f"{short} asks for more and is observed short"

    def freed_for_others(self, deployment: str, committed_before: dict[str, int], now: float) -> str | None:
        """Why a round should run now that a message of ``deployment`` (a report's counts, an
        ``AckDrained``) lowered the committed GPUs from ``committed_before``: another deployment
        asks for more of a type it freed (None otherwise). Its ask is in the planner already, so a
        round grants the GPUs within the message rather than at the next timed round."""
        if now < self.quarantine_until_s:  # scale-ups wait out a restart's quarantine
            return None
        committed = self.committed_gpus()
        freed = {gpu for gpu, before in committed_before.items() if committed.get(gpu, 0) < before}
        if not freed:
            return None
        for other in sorted(self._deployments):
            if other == deployment:
                continue
            for gpu, _ in sorted(self.wanting(other)):
                if gpu in freed:
                    return f"its drain freed {gpu} GPUs that {other} asks for"
        return None

    def wanting(self, deployment: str) -> set[tuple[str, int]]:
        """(GPU type, GPUs per replica) of the deployment's pools whose last report asks for more
        replicas than their grant: what a drain freeing GPUs of that type could serve."""
        dep = self._deployments.get(deployment)
        if dep is None or dep.report is None:
            return set()
        wanting = set()
        for report in dep.report.pools:
            pool = dep.pools.get(report.role)
            if pool is not None and report.wanted_replicas is not None and report.wanted_replicas > pool.grant:
                wanting.add((pool.spec.gpu_type, pool.spec.gpus_per_replica))
        return wanting

    @staticmethod
    def _waiting(dep: DeploymentState) -> bool:
        """Whether the last round allocated one of the deployment's pools more replicas than it
        could grant (the rest wait for GPUs still held: drains, silent agents) and allocated each
        pool what its last report asks, or more than it could grant yet: the same report again
        then asks for nothing that round refused, only for GPUs it already allocated. An ask the
        round cut, made again on the same grounds, would take back GPUs the cut freed (sweep seed
        111 ``s21``: a decode pool cut 5 -> 1 got 5 back from the drain's idle GPUs and was cut
        again; docs/global-planner.md, *Handover the tick a drain is confirmed*)."""
        if dep.report is None or not any(_gated(pool) for pool in dep.pools.values()):
            return False
        for report in dep.report.pools:
            pool = dep.pools.get(report.role)
            if pool is None or pool.allocated is None:
                return False
            asks = report.wanted_replicas if report.wanted_replicas is not None else pool.allocated
            if pool.allocated < asks and not _gated(pool):
                return False
        return True

    def granted_gpus(self) -> dict[str, dict[str, int]]:
        """Granted GPUs per tenant and type (without drains), for metrics."""
        return ledger.granted_gpus(self._deployments.values())

    def lent_gpus(self) -> dict[str, dict[str, int]]:
        """GPUs per tenant and type held only as idle headroom (``fill_idle``), for metrics."""
        return ledger.lent_gpus(self._deployments.values())

    def usage(self, deployment: str, role: PoolRole) -> int:
        """Replicas the planner counts for a pool (grant plus unconfirmed drains)."""
        return self._deployments[deployment].pools[role].usage

    def targets(self, deployment: str, now: float) -> Targets:
        """The deployment's current grant as agents see it."""
        self._expire(now)
        dep = self._deployments.get(deployment)
        if dep is None:
            raise UnknownDeployment(f"deployment {deployment!r} is not registered")
        return self._targets(dep, now)

    def _targets(self, dep: DeploymentState, now: float) -> Targets:
        """Decision 0 (no round yet) is a holding lease: keep the replicas already counted."""
        if dep.decision_id == 0:
            pools = [
                PoolTarget(role=role, replicas=p.usage, reason=_holding_reason(dep, role, p))
                for role, p in sorted(dep.pools.items())
            ]
        else:
            pools = [
                PoolTarget(role=role, replicas=p.grant, reason=p.reason, headroom_replicas=min(p.headroom, p.grant))
                for role, p in sorted(dep.pools.items())
            ]
        return Targets(
            deployment=dep.name,
            decision_id=dep.decision_id,
            lease_expires_s=dep.lease_expires_s,
            planner_time_s=now,
            pools=pools,
            endpoint=dep.endpoint,
            routing=dict(dep.routing),
            admission_rps=dep.admission_rps,
            endpoint_share=self.splits.endpoint_share(dep, self.policy),
            waiting_for_gpus=self._waiting(dep),
        )

    # --------------------------------------------------------------- messages

    def set_policy(self, policy: TenantPolicy) -> None:
        """A new policy takes effect at the next round; grants already given stay until drained."""
        self.policy = policy
        self._version += 1

    def register(self, registration: Registration, session_id: str, now: float) -> Targets:
        """Start a session; pools keep their grants and unconfirmed drains across re-registration."""
        self._expire(now)
        self._check_registration(registration)
        known = self._deployments.get(registration.deployment)
        pools = {spec.role: PoolState(spec=spec) for spec in registration.pools}
        if known is not None:
            _carry_over(known, registration, pools)
            known.endpoint, known.pools = registration.endpoint, pools
            dep = known
        else:
            dep = DeploymentState(
                name=registration.deployment,
                tenant=registration.tenant,
                endpoint=registration.endpoint,
                pools=pools,
                lease_expires_s=now + self.lease_s,
            )
            self._deployments[dep.name] = dep
        dep.session_id, dep.sequence, dep.last_contact_s, dep.report = session_id, -1, now, None
        dep.capacity_rps = registration.capacity_rps
        self._version += 1
        return self._targets(dep, now)

    def _check_registration(self, registration: Registration) -> None:
        if registration.tenant not in self.policy.tenants:
            known = ", ".join(sorted(self.policy.tenants)) or "none"
            raise InvalidRequest(f"tenant: {registration.tenant!r} is not in the tenant policy (tenants: {known})")
        for index, spec in enumerate(registration.pools):
            if spec.gpu_type not in self.policy.fleet.gpus:
                fleet = ", ".join(sorted(self.policy.fleet.gpus))
                raise InvalidRequest(f"pools[{index}].gpu_type: unknown GPU type {spec.gpu_type!r} (fleet has {fleet})")

    def _session(self, deployment: str, session_id: str) -> DeploymentState:
        dep = self._deployments.get(deployment)
        if dep is None:
            raise UnknownDeployment(f"deployment {deployment!r} is not registered: call Register first")
        if dep.session_id != session_id:
            raise UnknownSession(f"session {session_id!r} is not current for {deployment!r}: call Register again")
        return dep

    def report(self, report: AgentReport, now: float) -> Targets:
        """Record observations and demand; replica counts update usage (see :mod:`.drains`).

        Counts are checked against the registration (a pool never holds more than its
        ``max_replicas``), and what is counted above the pool's usage is capped by free GPUs and
        the tenant's cap (:func:`.ledger.countable`)."""
        self._expire(now)
        dep = self._session(report.deployment, report.session_id)
        for index, pool_report in enumerate(report.pools):
            pool = dep.pools.get(pool_report.role)
            if pool is None:
                raise InvalidRequest(f"pools[{index}].role: deployment {dep.name!r} has no {pool_report.role!r} pool")
            if pool_report.in_use > pool.spec.max_replicas:
                raise InvalidRequest(
                    f"pools[{index}]: ready + starting + draining = {pool_report.in_use} exceeds the registered "
                    f"max_replicas {pool.spec.max_replicas}"
                )
        dep.last_contact_s = now
        if report.sequence <= dep.sequence:
            return self._targets(dep, now)  # stale or replayed: answer, change nothing
        dep.sequence = report.sequence
        dep.report = report
        self.splits.reported(dep.name)
        # An agent can only have applied decisions issued to it.
        applied = min(report.applied_decision_id, dep.decision_id)
        dep.applied_decision_id = max(dep.applied_decision_id, applied)
        for role, claimed in _claims_in_order(dep, report):
            pool = dep.pools[role]
            counted = ledger.countable(self._deployments.values(), self.policy, dep, pool, claimed)
            drains.apply_report(pool, counted, applied)
        for pool_report in report.pools:
            pool = dep.pools[pool_report.role]
            if dep.decision_id == 0 and not dep.expired and pool.usage > pool.grant:
                # The holding lease (decision 0) promises what is counted: a later, lower report
                # must not free what an earlier answer let the agent (re)start, and a restart must
                # know it (see :meth:`checkpoint`).
                pool.grant = pool.usage
                self.checkpoint_due = True
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
        self._check_issued(dep, ack.decision_id)
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
        self._check_issued(dep, ack.decision_id)
        if ack.gpus_freed % pool.spec.gpus_per_replica:
            raise InvalidRequest(
                f"gpus_freed: {ack.gpus_freed} is not a multiple of gpus_per_replica {pool.spec.gpus_per_replica}"
            )
        dep.last_contact_s = now
        drains.apply_drained(pool, ack.decision_id)
        self._version += 1
        return self._targets(dep, now)

    def _check_issued(self, dep: DeploymentState, decision_id: int) -> None:
        if decision_id > dep.decision_id:
            raise InvalidRequest(f"decision_id: {decision_id} was never issued to {dep.name!r}")

    def _expire(self, now: float) -> None:
        if leases.expire(self._deployments, now, self.next_decision_id, self.lease_s):
            self._version += 1

    # ------------------------------------------------------------------ rounds

    def begin_round(self, now: float) -> RoundInput:
        """Snapshot the bids: live agents with reports bid; everyone else's usage is held."""
        self.snapshots += 1
        self._expire(now)
        bidders = [d for d in self._deployments.values() if leases.bidding(d, now, self.liveness_s)]
        others = [d for d in self._deployments.values() if not leases.bidding(d, now, self.liveness_s)]
        return rounds.snapshot(
            bidders, others, self.policy, now, self.next_decision_id, self._previous, self.time_limit_s
        )

    def settle(
        self, round_input: RoundInput, allocation: Allocation | None, now: float, trigger: str = "timer"
    ) -> Round:
        """Turn the allocator's answer into grants, gating scale-ups on GPUs actually free now;
        ``trigger`` (what ran the round) goes into its record.

        Settles against the state as it is now (a checkpoint may have taken the snapshot's id)."""
        self._expire(now)
        decision_id = self.next_decision_id
        everyone = list(self._deployments.values())
        bidders = {d.name for d in everyone if leases.bidding(d, now, self.liveness_s)}
        round_input = replace(round_input, decision_id=decision_id)
        updates = rounds.settle(
            everyone, bidders, self.policy, round_input, allocation, scale_ups=now >= self.quarantine_until_s
        )
        lease_ends = {name: now + self.lease_s for name, _ in updates}
        routing, admission = rounds.endpoint_routing(updates, round_input)
        outcome = rounds.Outcome(decision_id, now, allocation, updates, lease_ends, routing, admission)
        record = rounds.record(everyone, self.policy, outcome, round_input)
        splits, ratios = self.splits.decide_round(now, self.policy)
        record = record.model_copy(update={"splits": self.splits.records(splits), "trigger": trigger})
        return Round(
            decision_id, now, allocation, updates, lease_ends, routing, admission, record, self._version, splits, ratios
        )

    def commit(self, round_: Round) -> Round:
        """Put a settled (and persisted) round in force; nothing may have changed in between."""
        if round_.version != self._version or round_.decision_id != self.next_decision_id:
            raise RuntimeError("state changed between settle and commit")
        for (name, role), update in round_.updates.items():
            pool = self._deployments[name].pools[role]
            if update.grant != pool.grant:
                pool.grant_decision_id = round_.decision_id
            pool.grant, pool.usage, pool.pending_release = update.grant, update.usage, update.pending_release
            pool.allocated, pool.reason, pool.headroom = update.allocated, update.reason, update.headroom
        for name, expires in round_.leases.items():
            dep = self._deployments[name]
            dep.lease_expires_s, dep.expired, dep.decision_id = expires, False, round_.decision_id
            dep.routing = dict(round_.routing.get(dep.endpoint, {}))
            dep.admission_rps = round_.admission.get(dep.endpoint)
        if round_.updates:
            self._previous = {f"{n}/{r}": u.allocated for (n, r), u in round_.updates.items()}
        self.splits.commit(round_)
        self.next_decision_id = round_.decision_id + 1
        self.checkpoint_due = False
        self._version += 1
        return round_

    def checkpoint(self, now: float) -> Round:
        """A record of the state that decides nothing: persisted before a holding lease that raised
        what a pool may run is answered, so a restarted planner knows every replica an agent was
        told it may keep. Commit it like a round."""
        self._expire(now)
        empty = RoundInput(now, self.next_decision_id, None, {}, {})
        outcome = rounds.Outcome(self.next_decision_id, now, None, {}, {}, {}, {})
        record = rounds.record(list(self._deployments.values()), self.policy, outcome, empty)
        record = record.model_copy(update={"status": "checkpoint", "trigger": "a holding answer raised a pool's grant"})
        return Round(outcome.decision_id, now, None, {}, {}, {}, {}, record, self._version)

    def plan(self, now: float, solve: Solver = allocate) -> Round:
        """One whole round (snapshot, solve, settle), not yet committed."""
        round_input = self.begin_round(now)
        allocation = solve(round_input.request) if round_input.request is not None else None
        return self.settle(round_input, allocation, now)

    # ----------------------------------------------------------------- restart

    def resume(self, recovery: Recovery, now: float) -> None:
        """Start from what the audit log recovered (see the module docstring)."""
        if recovery.record is not None:
            self.restore(recovery.record)
        self.next_decision_id = max(self.next_decision_id, recovery.high_water + 1)
        if recovery.newest_lost:
            self.quarantine_until_s = now + self.lease_s

    def restore(self, record: RoundRecord) -> None:
        """Adopt a persisted round's pools as outstanding: held until re-reported or lapsed."""
        restored = ledger.restored(record)
        for dep in restored.values():  # the gateway's limits in force: shedding holds across a restart
            dep.admission_rps = record.admission_rps.get(dep.endpoint)
        self._deployments.update(restored)
        self._previous = {
            f"{d.deployment}/{p.role}": p.allocated
            for d in record.deployments
            for p in d.pools
            if p.allocated is not None
        }
        self.splits.restore(record)
        self.next_decision_id = max(self.next_decision_id, record.decision_id + 1)
        self._version += 1


def _gated(pool: PoolState) -> bool:
    """The last round allocated the pool more than it granted (GPUs still held)."""
    return pool.allocated is not None and pool.allocated > pool.grant


def _carry_over(known: DeploymentState, registration: Registration, pools: dict[PoolRole, PoolState]) -> None:
    """A re-registration keeps each pool's grant and unconfirmed drains; a pool still holding
    replicas can be neither dropped nor changed in GPU type or size."""
    if known.tenant != registration.tenant:
        raise Conflict(f"deployment {known.name!r} belongs to tenant {known.tenant!r}")
    for role, old in known.pools.items():
        new = pools.get(role)
        if old.usage == 0:
            continue
        if new is None:
            raise Conflict(f"pool {role!r} still holds {old.usage} replicas and cannot be dropped")
        if (new.spec.gpu_type, new.spec.gpus_per_replica) != (old.spec.gpu_type, old.spec.gpus_per_replica):
            raise Conflict(f"pool {role!r} still holds {old.usage} replicas: gpu_type and gpus_per_replica are fixed")
    for role, old in known.pools.items():
        new = pools.get(role)
        if new is not None and old.usage:
            new.grant, new.usage, new.pending_release = old.grant, old.usage, old.pending_release
            new.grant_decision_id, new.reason = old.grant_decision_id, old.reason


def _claims_in_order(dep: DeploymentState, report: AgentReport) -> list[tuple[PoolRole, int]]:
    """The report's replica counts in the order the planner counts them against free GPUs and
    the tenant's cap: what no pool grows by first (a shrinking pool frees GPUs for the others),
    then each growing pool up to what it needs to serve at all (its registered minimum, and one
    replica), then the rest of each. Counted in the report's order alone, a pair's prefill pool
    took every GPU its tenant's cap left and the decode partner was counted at 0, and the holding
    lease took a running pair to one that serves nothing (sweep fleets, seed 25 `s20`, seed 27
    `s00`)."""
    shrinking = [(p.role, p.in_use) for p in report.pools if p.in_use <= dep.pools[p.role].usage]
    growing = [(p.role, p.in_use) for p in report.pools if p.in_use > dep.pools[p.role].usage]
    needed = {role: max(dep.pools[role].spec.min_replicas, 1) for role, _ in growing}
    minimums = [
        (role, min(claimed, needed[role]))
        for role, claimed in growing
        if dep.pools[role].pending_release is None and needed[role] > dep.pools[role].usage
    ]
    return shrinking + minimums + growing


def _holding_reason(dep: DeploymentState, role: PoolRole, pool: PoolState) -> str:
    """Why a holding lease (no round yet) grants what it does: what the pool runs, or, when the
    agent reported more than the free GPUs and its tenant's cap let the planner count, that
    count (a cap of 0 took a pool to 0 at its first answer under a reason saying it was held)."""
    reported = next((p.in_use for p in dep.report.pools if p.role == role), None) if dep.report else None
    if reported is not None and reported > pool.usage:
        return (
            f"no allocation yet: holding the {pool.usage} of its {reported} replicas that the free "
            f"{pool.spec.gpu_type} GPUs and tenant {dep.tenant}'s max_gpus let the planner count"
        )
    return "no allocation yet: holding current replicas"
