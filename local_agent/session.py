"""One deployment's side of the agent-planner exchange, as a pure object: no I/O, no asyncio, no
clock of its own. The live runtime (``local_agent.runtime``) and the simulator's ``global`` policy
(``fleet_sim.adapters.planner``) both drive it through :func:`local_agent.planner_link.exchange`, so
report -> grant -> apply -> acknowledge exists once and live and replay cannot drift apart.

One tick: :meth:`AgentSession.report` says what to send for the agent's decision; the planner's
reply (if one came) is handed to :meth:`AgentSession.answered`; :meth:`AgentSession.effects`
returns what to apply, what the agent plans its next step from, what to acknowledge once applied,
and what the endpoint's routing weights and admission limit are.

Fallback contract (mirrored by the planner's accounting in ``global_planner.service.state``):

1. While the last lease is valid (minus ``drain_margin_s``, the time the agent needs to drain
   down), run the last grant.
2. Then run ``min(floor, last grant)`` per pool: the planner keeps exactly that reserved after
   the lease lapses, so the floor never takes GPUs the planner has given to someone else.
3. Before the first allocation round the planner answers with decision 0, a *holding* lease on
   the replicas it has counted from reports; without any lease the session runs
   ``min(floor, replicas last reported to the planner)`` — and, never having reached the planner
   at all (it is down while the agent starts), ``min(floor, replicas running)``, so a restarting
   agent does not scale its deployment to zero.

Lease times are converted to the local clock conservatively: the lease is taken to run from when
the request was *sent*, so clock offsets between agent and planner never lengthen it.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from fleet_planner.contract.models import Forecast, Observed, PoolReport, Registration, Targets
from fleet_planner.planning import FrozenModel
from local_agent.models import AgentDecision
from local_agent.planner_link.reports import forecast_of, observed_of, pool_report


class Lease(FrozenModel):
    """The last grant, with its expiry already moved to the agent's clock."""

    decision_id: int
    replicas: dict[str, int]
    headroom: dict[str, int] = Field(default_factory=dict, description="replicas lent above the ask (fill_idle)")
    fallback_at: float = Field(description="local time at which the agent must be back at its floor")
    routing: dict[str, float] = Field(default_factory=dict)
    admission_rps: float | None = None
    reasons: dict[str, str] = Field(default_factory=dict, description="the planner's reason per pool")
    waiting_for_gpus: bool = Field(
        default=False, description="the planner allocated more than it could grant yet; the same report gets the rest"
    )


class EffectiveTargets(FrozenModel):
    """What the agent may run now, and where that comes from."""

    replicas: dict[str, int]
    source: Literal["planner", "lease", "floor"]
    decision_id: int = 0
    routing: dict[str, float] = Field(default_factory=dict)
    admission_rps: float | None = None
    headroom: dict[str, int] = Field(default_factory=dict, description="replicas lent above the ask (fill_idle)")
    reasons: dict[str, str] = Field(default_factory=dict, description="the planner's reason per pool (a lease)")


def effective_targets(
    lease: Lease | None, floor: dict[str, int], reported: dict[str, int], now: float
) -> EffectiveTargets:
    """What the agent may run at local time ``now`` without hearing from the planner."""
    if lease is not None and now < lease.fallback_at:
        return EffectiveTargets(
            replicas=dict(lease.replicas),
            source="lease",
            decision_id=lease.decision_id,
            routing=dict(lease.routing),
            admission_rps=lease.admission_rps,
            headroom=dict(lease.headroom),
            reasons=dict(lease.reasons),
        )
    if lease is not None:
        replicas = {role: min(floor.get(role, 0), granted) for role, granted in lease.replicas.items()}
        return EffectiveTargets(replicas=replicas, source="floor", decision_id=lease.decision_id)
    return EffectiveTargets(replicas={role: min(n, reported.get(role, 0)) for role, n in floor.items()}, source="floor")


def lease_from_targets(targets: Targets, sent_at: float, drain_margin_s: float) -> Lease:
    """The local-clock lease a response grants."""
    remaining = targets.lease_expires_s - targets.planner_time_s
    return Lease(
        decision_id=targets.decision_id,
        replicas={p.role: p.replicas for p in targets.pools},
        headroom={p.role: p.headroom_replicas for p in targets.pools if p.headroom_replicas},
        fallback_at=sent_at + remaining - drain_margin_s,
        routing=dict(targets.routing),
        admission_rps=targets.admission_rps,
        reasons={p.role: p.reason for p in targets.pools if p.reason},
        waiting_for_gpus=targets.waiting_for_gpus,
    )


class PoolCounts(FrozenModel):
    """Replicas of one pool as the agent sees them when it reports."""

    ready: int = Field(default=0, ge=0)
    starting: int = Field(default=0, ge=0)
    draining: int = Field(default=0, ge=0)
    pending: int = Field(default=0, ge=0)

    @property
    def in_use(self) -> int:
        """Replicas holding GPUs: running, starting or still draining (pending ones hold none)."""
        return self.ready + self.starting + self.draining


class TickInput(FrozenModel):
    """Everything one tick hands the session: the agent's decision, what runs, and the time
    (on the clock leases are kept on: monotonic live, simulated in replay)."""

    now_s: float
    decision: AgentDecision
    running: dict[str, PoolCounts] = Field(default_factory=dict, description="missing: nothing observed yet")
    window_s: float | None = Field(
        default=None, gt=0, description="the agent's observation window (its tick); None: no observed rate is sent"
    )


class Outgoing(FrozenModel):
    """One report's content, before transport details (session id, sequence) are added."""

    pools: list[PoolReport]
    forecast: Forecast | None
    observed: Observed | None = None  # the rate seen, against which the planner checks the forecast


class TickEffects(FrozenModel):
    """What one tick does: apply ``apply`` (None: advisory, change nothing), plan the next step
    from ``granted``, acknowledge ``ack`` once applied, and route and admit the endpoint's traffic
    as the planner said."""

    apply: dict[str, int] | None
    granted: dict[str, int]
    headroom: dict[str, int] = Field(
        default_factory=dict, description="replicas of the grant lent above the ask (fill_idle): run, not planned"
    )
    descending_to: dict[str, int] = Field(
        default_factory=dict, description="the target of a descent the agent asked for and the grant is still above"
    )
    ack: int | None
    source: Literal["planner", "lease", "floor"]
    decision_id: int
    routing: dict[str, float] = Field(default_factory=dict, description="deployment -> share of the endpoint")
    admission_rps: float | None = Field(default=None, description="the endpoint admits at most this; None: all")
    endpoint_share: float | None = Field(
        default=None, description="share of the endpoint's traffic to plan for (None: alone, or not yet told)"
    )
    reasons: dict[str, str] = Field(
        default_factory=dict, description="why the planner granted what it did, per pool (from the lease in force)"
    )

    def overruled(self, role: str, bid: int) -> str | None:
        """The planner's reason when the pool's grant is not its bid (None otherwise): a pool the
        planner holds away from its agent's bid must say why where it is logged."""
        if self.granted.get(role, bid) == bid:
            return None
        return self.reasons.get(role) or None

    def planned(self, role: str) -> int:
        """What the agent plans its next step from: the grant less the idle headroom it was lent,
        and, while a descent it asked for is under way, never more than that descent's target."""
        own = self.granted[role] - self.headroom.get(role, 0)
        return min(own, self.descending_to.get(role, own))


class AgentSession:
    """The lease, the floor and the acknowledgements of one deployment's agent."""

    def __init__(self, registration: Registration, *, drain_margin_s: float = 0.0):
        self.registration = registration
        self.floor: dict[str, int] = {p.role: p.fallback_replicas for p in registration.pools}
        self.drain_margin_s = drain_margin_s
        self.lease: Lease | None = None
        self.reported: dict[str, int] = {}
        self.applied_decision_id = 0
        self.endpoint_share: float | None = None
        self._answered = False
        # Pools whose agent asked to scale down to a target the grant has not reached yet. The
        # replicas above it are the planner's pace (a policy's ``max_step``), not the agent's
        # wish: planned from, the agent's next hold bid them back as its own and turned the
        # descent round (random fleet seed 45 ``s23``: a decode pool granted 7 -> 6 -> 3 on its
        # way to the 2 its agent asked for went back to 6). A grant above a hold that began no descent,
        # or above a scale-up, is the agent's (an earlier ask granted late) and is planned from.
        self._descending_to: dict[str, int] = {}

    def report(self, tick: TickInput) -> Outgoing:
        """The report for this tick's decision: bid curves and replica counts per pool."""
        pools = []
        for pool in tick.decision.pools:
            counts = tick.running.get(pool.role)
            if counts is None:  # before the first observation the agent knows only what it asked for
                counts = PoolCounts(ready=pool.current)
            pools.append(
                pool_report(
                    pool,
                    ready=counts.ready,
                    starting=counts.starting,
                    draining=counts.draining,
                    pending=counts.pending,
                )
            )
        observed = observed_of(tick.decision, tick.window_s) if tick.window_s is not None else None
        return Outgoing(pools=pools, forecast=forecast_of(tick.decision), observed=observed)

    def answered(self, targets: Targets, sent_at: float, reported: list[PoolReport] | None) -> None:
        """The planner replied (to a request sent at local time ``sent_at``): adopt a newer lease.
        ``reported``: the pools of the report answered, None for a registration — whose holding
        lease (decision 0) does not count, as the planner has counted none of our replicas yet.
        Every reply says the endpoint share (it depends on who is registered, not on a decision)."""
        self.endpoint_share = targets.endpoint_share
        if reported is None and targets.decision_id == 0:
            return
        if reported is not None:
            self._answered = True
            self.reported = {p.role: p.in_use for p in reported}
        lease = lease_from_targets(targets, sent_at, self.drain_margin_s)
        if self.lease is None or lease.decision_id >= self.lease.decision_id:
            self.lease = lease

    def lease_in_force(self, now_s: float) -> Lease | None:
        """The last lease while it holds at ``now_s`` (None before one, or once it lapsed)."""
        return self.lease if self.lease is not None and now_s < self.lease.fallback_at else None

    def waiting(self, now_s: float) -> bool:
        """Whether the planner's last answer, still in force, said GPUs it allocated us wait
        for other pools' drains: between decisions the same report again receives them."""
        lease = self.lease_in_force(now_s)
        return lease is not None and lease.waiting_for_gpus

    def confirm_drains(self, now_s: float, running: dict[str, int]) -> dict[str, int]:
        """Pools that have drained to the grant in force while the planner, by our last report,
        still counts more replicas: role -> GPUs freed, to confirm with ``AckDrained`` (between
        decisions, so the planner can hand them on before the next report). Marks them confirmed."""
        lease = self.lease_in_force(now_s)
        if lease is None:
            return {}
        freed: dict[str, int] = {}
        gpus: dict[str, int] = {p.role: p.gpus_per_replica for p in self.registration.pools}
        for role, counted in self.reported.items():
            grant, in_use = lease.replicas.get(role), running.get(role)
            if grant is not None and in_use is not None and in_use <= grant < counted:
                freed[role] = (counted - in_use) * gpus.get(role, 1)
                self.reported[role] = in_use
        return freed

    def effective(self, now_s: float, running: dict[str, int] | None = None) -> EffectiveTargets:
        """What may run at ``now_s`` by the lease and floor rules; ``running`` (in use per pool)
        stands in for the reported counts while the planner was never reached."""
        reported = self.reported if self._answered or running is None else running
        return effective_targets(self.lease, self.floor, reported, now_s)

    def effects(self, tick: TickInput, *, answered: bool) -> TickEffects:
        """Grant -> apply -> ack for this tick; ``answered``: the planner replied this tick."""
        sent = self.report(tick)
        effective = self.effective(tick.now_s, {p.role: p.in_use for p in sent.pools})
        fresh = answered and effective.source == "lease"
        # The grant is what runs, and the agent plans its next step from it (its bid is its curves).
        granted: dict[str, int] = {p.role: effective.replicas.get(p.role, p.target) for p in tick.decision.pools}
        headroom = {role: min(n, granted[role]) for role, n in effective.headroom.items() if role in granted}
        for pool in tick.decision.pools:
            if pool.target < pool.current:
                self._descending_to[pool.role] = pool.target
            elif pool.target > pool.current:  # it wants more: the descent is over
                self._descending_to.pop(pool.role, None)
            if granted[pool.role] - headroom.get(pool.role, 0) <= self._descending_to.get(pool.role, -1):
                del self._descending_to[pool.role]
        apply = None if tick.decision.advisory else granted
        return TickEffects(
            apply=apply,
            granted=granted,
            headroom=headroom,
            descending_to=dict(self._descending_to),
            ack=effective.decision_id if fresh and apply is not None and effective.decision_id else None,
            source="planner" if fresh else effective.source,
            decision_id=effective.decision_id,
            routing=effective.routing,
            admission_rps=effective.admission_rps,
            endpoint_share=self.endpoint_share,
            reasons=effective.reasons,
        )

    def acked(self, decision_id: int) -> None:
        """A decision's targets are applied; later reports carry it as applied."""
        self.applied_decision_id = max(self.applied_decision_id, decision_id)
