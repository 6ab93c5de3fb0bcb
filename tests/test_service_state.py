"""Grant/lease state machine: the fleet budget holds at every step, whatever agents do.

The property test drives simulated agents that follow the documented contract (apply targets,
drain slowly, fall back when the lease lapses) through random reports, silences, acks, rounds
and planner restarts, and checks after every single operation that neither the planner's
accounting nor the agents' physical GPUs exceed the inventory.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import pytest

from fleet_planner.contract.models import (
    AckApplied,
    AckDrained,
    AgentReport,
    Forecast,
    Observed,
    PoolRegistration,
    PoolReport,
    Registration,
    Targets,
)
from global_planner.allocation import Allocation, AllocationRequest, Stability, allocate, allocate_greedy
from global_planner.policy_file import TenantPolicy
from global_planner.service.ledger import PoolState
from global_planner.service.rounds import _deal_free_gpus
from global_planner.service.state import InvalidRequest, PlannerState, StateError, UnknownSession
from local_agent.session import Lease, effective_targets, lease_from_targets


def _policy(gpus: dict[str, int], tenants: dict | None = None) -> TenantPolicy:
    return TenantPolicy.model_validate({"fleet": {"gpus": gpus}, "tenants": tenants or {"acme": {}, "beta": {}}})


def _registration(
    name: str,
    tenant: str = "acme",
    gpu: str = "h200",
    max_replicas: int = 8,
    fallback: int = 0,
    gpr: int = 1,
    roles: tuple[str, ...] = ("agg",),
) -> Registration:
    return Registration(
        deployment=name,
        tenant=tenant,
        endpoint=f"ep-{name}",
        pools=[
            PoolRegistration(
                role=role,
                gpu_type=gpu,
                gpus_per_replica=gpr,
                min_replicas=0,
                max_replicas=max_replicas,
                fallback_replicas=fallback,
            )
            for role in roles
        ],
    )


def _curve(need: int, length: int = 9) -> list[float]:
    """Attainment rising to 1.0 at ``need`` replicas."""
    return [min(1.0, k / need) if need else 1.0 for k in range(length)]


def _report(
    name: str, session: str, seq: int, applied: int, in_use: dict[str, tuple[int, int]], need: int, rps: float = 10.0
) -> AgentReport:
    return AgentReport(
        deployment=name,
        session_id=session,
        sequence=seq,
        applied_decision_id=applied,
        forecast=Forecast(mean_rps=rps, upper_rps=rps * 1.2),
        pools=[
            PoolReport(role=role, ready=ready, draining=draining, curve=_curve(need))
            for role, (ready, draining) in in_use.items()
        ],
    )


def _round(state: PlannerState, now: float):
    return state.commit(state.plan(now))


def _grant(targets: Targets, role: str = "agg") -> int:
    return next(p.replicas for p in targets.pools if p.role == role)


def test_the_policy_files_stability_settings_reach_every_round() -> None:
    policy = TenantPolicy.model_validate(
        {
            "fleet": {"gpus": {"h200": 8}},
            "tenants": {"acme": {}},
            "stability": {"hysteresis": 0.6, "bid_allowance": None, "horizon_s": 900},
        }
    )
    state = PlannerState(policy)
    state.register(_registration("a"), "s-a", 0.0)
    state.report(_report("a", "s-a", 1, 0, {"agg": (0, 0)}, need=3), 0.0)
    seen = []

    def solve(request: AllocationRequest) -> Allocation:
        seen.append(request.stability)
        return allocate(request)

    state.commit(state.plan(1.0, solve))
    assert seen == [Stability(hysteresis=0.6, bid_allowance=None, horizon_s=900.0)]
    assert TenantPolicy.model_validate({"fleet": {"gpus": {"h200": 8}}}).stability == Stability()


def test_round_grants_within_inventory_and_ids_increase() -> None:
    state = PlannerState(_policy({"h200": 8}))
    for name in ("a", "b"):
        state.register(_registration(name), f"s-{name}", 0.0)
        state.report(_report(name, f"s-{name}", 1, 0, {"agg": (0, 0)}, need=6), 0.0)
    first = _round(state, 1.0)
    second = _round(state, 2.0)
    assert (first.decision_id, second.decision_id) == (1, 2)
    assert state.committed_gpus()["h200"] <= 8
    assert sum(u.grant for u in second.updates.values()) == 8
    targets = state.targets("a", 2.0)
    assert targets.decision_id == 2 and targets.lease_expires_s == pytest.approx(2.0 + state.lease_s)


def test_drain_gating_frees_gpus_only_after_confirmation() -> None:
    state = PlannerState(_policy({"h200": 8}), lease_s=100.0)
    state.register(_registration("a"), "sa", 0.0)
    state.register(_registration("b"), "sb", 0.0)
    state.report(_report("a", "sa", 1, 0, {"agg": (0, 0)}, need=8, rps=50), 0.0)
    state.report(_report("b", "sb", 1, 0, {"agg": (0, 0)}, need=8, rps=1), 0.0)
    d1 = _round(state, 1.0).decision_id
    assert _grant(state.targets("a", 1.0)) == 8 and _grant(state.targets("b", 1.0)) == 0
    # a runs 8; demand flips: b is now the big one
    state.report(_report("a", "sa", 2, d1, {"agg": (8, 0)}, need=8, rps=1), 2.0)
    state.report(_report("b", "sb", 2, d1, {"agg": (0, 0)}, need=8, rps=50), 2.0)
    d2 = _round(state, 3.0).decision_id
    assert _grant(state.targets("a", 3.0)) < 8
    assert _grant(state.targets("b", 3.0)) == 0, "b must wait for a's drain"
    assert state.committed_gpus()["h200"] == 8
    # a applied d2 but is still draining: nothing moves
    a_grant = _grant(state.targets("a", 3.0))
    state.report(_report("a", "sa", 3, d2, {"agg": (a_grant, 8 - a_grant)}, need=8, rps=1), 4.0)
    state.report(_report("b", "sb", 3, d2, {"agg": (0, 0)}, need=8, rps=50), 4.0)
    _round(state, 5.0)
    assert _grant(state.targets("b", 5.0)) == 0
    # an old report (before a saw d2) claiming fewer replicas cannot release anything either
    state.report(_report("a", "sa", 4, d1, {"agg": (a_grant, 0)}, need=8, rps=1), 5.5)
    assert state.usage("a", "agg") == 8
    # drain confirmed by AckDrained: b gets the GPUs at the next round
    state.ack_drained(
        AckDrained(deployment="a", session_id="sa", decision_id=d2, role="agg", gpus_freed=8 - a_grant), 6.0
    )
    state.report(_report("b", "sb", 4, d2, {"agg": (0, 0)}, need=8, rps=50), 6.0)
    state.report(_report("a", "sa", 5, d2, {"agg": (a_grant, 0)}, need=8, rps=1), 6.0)
    _round(state, 7.0)
    assert _grant(state.targets("b", 7.0)) == 8 - a_grant
    assert state.committed_gpus()["h200"] <= 8


def _asking(report: AgentReport, wanted: int) -> AgentReport:
    return report.model_copy(update={"pools": [p.model_copy(update={"wanted_replicas": wanted}) for p in report.pools]})


def test_the_answer_says_who_waits_for_gpus_still_held() -> None:
    """An agent hears ``waiting_for_gpus`` where the last round allocated one of its pools more
    than it could grant (GPUs still held by another pool's drain) and its report asked for no
    more than that round allocated: sent again between decisions, the same report then receives
    the GPUs once ``AckDrained`` frees them. A pool the round cut is not told to wait: its report
    sent again would ask on stale grounds for what the round gave elsewhere."""
    state = PlannerState(_policy({"h200": 8}), lease_s=60.0)
    state.register(_registration("a"), "sa", 0.0)
    state.register(_registration("b", tenant="beta"), "sb", 0.0)
    state.report(_asking(_report("a", "sa", 1, 0, {"agg": (0, 0)}, need=8, rps=50), 8), 0.0)
    d1 = _round(state, 1.0).decision_id
    assert _grant(state.targets("a", 1.0)) == 8
    state.report(_asking(_report("a", "sa", 2, d1, {"agg": (8, 0)}, need=2, rps=5), 2), 2.0)
    state.report(_asking(_report("b", "sb", 1, 0, {"agg": (0, 0)}, need=6, rps=30), 6), 2.0)
    d2 = _round(state, 3.0).decision_id
    a, b = state.targets("a", 3.0), state.targets("b", 3.0)
    assert _grant(a) < 8 and _grant(b) == 0, "b waits for the GPUs a still holds"
    assert b.waiting_for_gpus and not a.waiting_for_gpus
    again = state.report(_asking(_report("b", "sb", 2, d2, {"agg": (0, 0)}, need=6, rps=30), 6), 3.5)
    assert again.waiting_for_gpus and _grant(again) == 0, "nothing is free before the drain is confirmed"
    state.ack_drained(
        AckDrained(deployment="a", session_id="sa", decision_id=d2, role="agg", gpus_freed=8 - _grant(a)), 4.0
    )
    assert state.asks_for_change("b", 4.0), "the same report again now runs a round that can grant it"
    # An ask the round cut, with no GPUs held back for it, is not told to wait.
    state.report(_asking(_report("a", "sa", 3, d2, {"agg": (_grant(a), 0)}, need=8, rps=50), 8), 4.0)
    state.report(_asking(_report("b", "sb", 3, d2, {"agg": (0, 0)}, need=8, rps=50), 8), 4.0)
    _round(state, 5.0)
    answers = {name: state.targets(name, 5.0) for name in ("a", "b")}
    cut = [name for name, t in answers.items() if _grant(t) < 8]
    assert cut, "8 GPUs cannot serve both asks of 8"
    assert all(not answers[name].waiting_for_gpus for name in cut), "nothing is held back: nobody waits"


def test_gpus_free_now_are_dealt_one_replica_per_pool_in_turn() -> None:
    """A round's scale-ups share the GPUs free now by priority and, within one, a replica per pool
    in turn, as the allocator deals idle GPUs. In pool-id order a pair's decode pool, cut to make
    room for its prefill, took the freed GPUs back before the prefill (sweep seed 111 ``s21``)."""

    def pool(role: str, replicas: int) -> PoolState:
        spec = PoolRegistration(role=role, gpu_type="h100", gpus_per_replica=1, min_replicas=0, max_replicas=8)
        return PoolState(spec=spec, grant=replicas, usage=replicas)

    decode, prefill, batch = pool("decode", 1), pool("prefill", 1), pool("agg", 0)
    ups = [(-1.0, decode, 5), (-1.0, prefill, 2), (-0.5, batch, 2)]
    assert _deal_free_gpus(ups, {"h100": 5}, {"h100": 8}) == [2, 1, 0]
    assert _deal_free_gpus(ups, {"h100": 2}, {"h100": 8}) == [4, 1, 1]
    assert _deal_free_gpus(ups, {"h100": 2}, {}) == [0, 0, 0]  # no scale-ups (restart quarantine)


def test_silent_agent_keeps_grant_until_lease_expiry() -> None:
    state = PlannerState(_policy({"h200": 8}), lease_s=10.0, liveness_s=3.0)
    state.register(_registration("a", fallback=2), "sa", 0.0)
    state.report(_report("a", "sa", 1, 0, {"agg": (0, 0)}, need=8, rps=50), 0.0)
    d1 = _round(state, 1.0).decision_id
    state.report(_report("a", "sa", 2, d1, {"agg": (8, 0)}, need=8, rps=50), 1.0)
    state.register(_registration("b"), "sb", 5.0)
    for t in (5.0, 8.0, 10.5):
        state.report(_report("b", "sb", int(t), 0, {"agg": (0, 0)}, need=8, rps=50), t)
        _round(state, t)
        assert _grant(state.targets("a", t)) == 8, "a is silent but its lease holds"
        assert state.committed_gpus()["h200"] == 8
    state.report(_report("b", "sb", 12, 0, {"agg": (0, 0)}, need=8, rps=50), 12.0)
    _round(state, 12.0)  # a's lease (1 + 10) lapsed: it may run only its fallback floor ...
    assert _grant(state.targets("a", 12.0)) == 2
    # ... but its pods may live on (dead agent, live pods): nothing is re-granted unconfirmed
    assert _grant(state.targets("b", 12.0)) == 0
    assert state.usage("a", "agg") == 8 and state.committed_gpus()["h200"] == 8
    # a stale report of a's old session cannot free them; a's agent comes back and hears a new decision
    with pytest.raises(UnknownSession):
        state.report(_report("a", "old", 9, d1, {"agg": (2, 0)}, need=1, rps=1), 13.0)
    state.register(_registration("a", fallback=2), "sa2", 13.0)
    state.report(_report("a", "sa2", 1, d1, {"agg": (2, 0)}, need=1, rps=1), 13.0)
    assert state.usage("a", "agg") == 8, "applied only a decision from before the lapse"
    d3 = _round(state, 14.0).decision_id
    state.report(_report("a", "sa2", 2, d3, {"agg": (2, 0)}, need=1, rps=1), 15.0)
    assert state.usage("a", "agg") == 2, "a report after a post-lapse decision frees the rest"
    state.report(_report("b", "sb", 16, 0, {"agg": (0, 0)}, need=8, rps=50), 15.0)
    _round(state, 16.0)
    assert _grant(state.targets("b", 16.0)) == 6
    assert state.committed_gpus()["h200"] == 8


def test_bad_report_is_rejected_without_effect() -> None:
    state = PlannerState(_policy({"h200": 8}))
    state.register(_registration("a"), "sa", 0.0)
    state.report(_report("a", "sa", 1, 0, {"agg": (3, 0)}, need=4), 0.0)
    with pytest.raises(InvalidRequest, match=r"pools\[1\]\.role"):
        state.report(_report("a", "sa", 2, 0, {"agg": (0, 0), "decode": (5, 0)}, need=4), 1.0)
    assert state.usage("a", "agg") == 3
    with pytest.raises(UnknownSession):
        state.report(_report("a", "other", 3, 0, {"agg": (0, 0)}, need=4), 1.0)
    with pytest.raises(InvalidRequest, match="gpu_type"):
        state.register(_registration("c", gpu="tpu"), "sc", 1.0)
    # stale sequence numbers change nothing
    state.report(_report("a", "sa", 1, 0, {"agg": (7, 0)}, need=4), 2.0)
    assert state.usage("a", "agg") == 3


def test_restart_from_record_never_over_grants() -> None:
    policy = _policy({"h200": 8})
    state = PlannerState(policy, lease_s=20.0)
    state.register(_registration("a"), "sa", 0.0)
    state.register(_registration("b"), "sb", 0.0)
    state.report(_report("a", "sa", 1, 0, {"agg": (0, 0)}, need=8, rps=50), 0.0)
    state.report(_report("b", "sb", 1, 0, {"agg": (0, 0)}, need=8, rps=1), 0.0)
    d1 = _round(state, 1.0)
    state.report(_report("a", "sa", 2, 1, {"agg": (8, 0)}, need=8, rps=1), 2.0)
    state.report(_report("b", "sb", 2, 1, {"agg": (0, 0)}, need=8, rps=50), 2.0)
    d2 = _round(state, 3.0)  # a told to shrink, b gated
    assert d1.decision_id < d2.decision_id
    restarted = PlannerState(policy, lease_s=20.0)
    restarted.restore(d2.record)
    assert restarted.committed_gpus() == state.committed_gpus()
    # b re-registers and reports at once; a has not reported yet: its old grant still counts
    restarted.register(_registration("b"), "sb2", 4.0)
    restarted.report(_report("b", "sb2", 1, 2, {"agg": (0, 0)}, need=8, rps=50), 4.0)
    r3 = restarted.commit(restarted.plan(5.0))
    assert r3.decision_id == d2.decision_id + 1
    assert restarted.committed_gpus()["h200"] <= 8
    assert _grant(restarted.targets("b", 5.0)) == 0
    # a's lease lapses (3 + 20): its GPUs stay held until its agent confirms them free
    restarted.report(_report("b", "sb2", 2, 2, {"agg": (0, 0)}, need=8, rps=50), 23.5)
    restarted.commit(restarted.plan(23.5))
    assert _grant(restarted.targets("b", 23.5)) == 0
    restarted.register(_registration("a"), "sa2", 24.0)
    restarted.report(_report("a", "sa2", 1, 0, {"agg": (0, 0)}, need=8, rps=1), 24.0)
    d5 = restarted.commit(restarted.plan(25.0)).decision_id
    restarted.report(_report("a", "sa2", 2, d5, {"agg": (0, 0)}, need=8, rps=1), 26.0)
    restarted.report(_report("b", "sb2", 3, 2, {"agg": (0, 0)}, need=8, rps=50), 26.0)
    restarted.commit(restarted.plan(27.0))
    assert _grant(restarted.targets("b", 27.0)) == 8


# ---------------------------------------------------------------- property test


@dataclass
class _SimAgent:
    """An agent honouring the protocol contract through the client's own pure helpers, with
    physical replicas and slow drains."""

    reg: Registration
    session: str = ""
    seq: int = 0
    lease: Lease | None = None
    reported: dict[str, int] = field(default_factory=dict)
    running: dict[str, int] = field(default_factory=dict)
    draining: list[tuple[str, int, float]] = field(default_factory=list)
    down: bool = False

    @property
    def name(self) -> str:
        return self.reg.deployment

    def in_use(self, role: str) -> int:
        return self.running.get(role, 0) + sum(n for r, n, _ in self.draining if r == role)

    def gpus(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for pool in self.reg.pools:
            out[pool.gpu_type] = out.get(pool.gpu_type, 0) + self.in_use(pool.role) * pool.gpus_per_replica
        return out

    def act(self, now: float, rng: random.Random) -> None:
        """Drain finished replicas, then move toward the effective targets."""
        self.draining = [d for d in self.draining if d[2] > now]
        floor = {p.role: p.fallback_replicas for p in self.reg.pools}
        effective = effective_targets(self.lease, floor, self.reported, now)
        for role, target in effective.replicas.items():
            have = self.running.get(role, 0)
            if effective.source == "floor" and self.in_use(role) > target:
                # the contract: back at the floor by the lease expiry (drain margin 0 here)
                self.running[role] = min(have, target)
                self.draining = [d for d in self.draining if d[0] != role]
            elif target < have:
                self.running[role] = target
                self.draining.append((role, have - target, now + rng.uniform(0, 6)))
            elif rng.random() < 0.5:  # scale-ups are not instant: a report may come first
                # new replicas start only on GPUs the draining ones have freed (a cluster's
                # scheduler places no pod on a GPU that is still held)
                self.running[role] = have + max(0, target - self.in_use(role))

    def receive(self, targets: Targets, now: float) -> None:
        if self.lease is None or targets.decision_id >= self.lease.decision_id:
            self.lease = lease_from_targets(targets, now, 0.0)

    def report(self, rng: random.Random) -> AgentReport:
        self.seq += 1
        self.reported = {p.role: self.in_use(p.role) for p in self.reg.pools}
        return AgentReport(
            deployment=self.name,
            session_id=self.session,
            sequence=self.seq,
            applied_decision_id=self.lease.decision_id if self.lease else 0,
            forecast=Forecast(mean_rps=rng.uniform(0, 20), upper_rps=25.0),
            pools=[
                PoolReport(
                    role=p.role,
                    ready=self.running.get(p.role, 0),
                    draining=self.in_use(p.role) - self.running.get(p.role, 0),
                    curve=_curve(rng.randint(0, p.max_replicas), p.max_replicas + 1),
                )
                for p in self.reg.pools
            ],
        )


@pytest.mark.parametrize("seed", range(6))
def test_random_histories_never_exceed_inventory(seed: int) -> None:
    rng = random.Random(seed)
    inventory = {"h200": 12, "h100": 6}
    policy = _policy(inventory, {"acme": {"priority": 10}, "beta": {"priority": 1}})
    agents = [
        _SimAgent(_registration("a", "acme", "h200", 6, fallback=1)),
        _SimAgent(_registration("b", "beta", "h200", 8, fallback=0, gpr=2)),
        _SimAgent(_registration("c", "beta", "h100", 6, fallback=2, roles=("prefill", "decode"))),
        _SimAgent(_registration("d", "acme", "h100", 4, fallback=1)),
    ]
    kw = {"lease_s": 12.0, "liveness_s": 6.0}
    state = PlannerState(policy, **kw)
    last_record = None
    now = 0.0
    sessions = 0

    def check() -> None:
        committed = state.committed_gpus()
        physical: dict[str, int] = {}
        for agent in agents:
            for gpu, used in agent.gpus().items():
                physical[gpu] = physical.get(gpu, 0) + used
            if agent.name in state.deployments():
                for pool in agent.reg.pools:
                    assert agent.in_use(pool.role) <= state.usage(agent.name, pool.role), (agent.name, pool.role)
        for gpu, total in inventory.items():
            assert committed.get(gpu, 0) <= total, f"planner committed {committed} > {inventory}"
            assert physical.get(gpu, 0) <= total, f"agents hold {physical} > {inventory}"

    for _ in range(400):
        now += rng.uniform(0.0, 2.0)
        for agent in agents:
            agent.act(now, rng)
        check()
        for agent in rng.sample(agents, len(agents)):
            if rng.random() < 0.05:
                agent.down = not agent.down
            if agent.down or rng.random() < 0.3:
                continue
            try:
                if not agent.session:
                    sessions += 1
                    agent.session = f"s{sessions}"
                    agent.seq = 0
                    state.register(agent.reg, agent.session, now)
                    check()
                targets = state.report(agent.report(rng), now)
            except StateError:
                agent.session = ""
                continue
            check()
            if rng.random() < 0.3:
                continue  # the response is lost: the agent keeps acting on its older lease
            agent.receive(targets, now)
            agent.act(now, rng)
            check()
            if agent.lease and agent.lease.decision_id and rng.random() < 0.3 and not agent.draining:
                for pool in agent.reg.pools:
                    state.ack_drained(
                        AckDrained(
                            deployment=agent.name,
                            session_id=agent.session,
                            decision_id=agent.lease.decision_id,
                            role=pool.role,
                            gpus_freed=0,
                        ),
                        now,
                    )
                    check()
                state.ack_applied(
                    AckApplied(deployment=agent.name, session_id=agent.session, decision_id=agent.lease.decision_id),
                    now,
                )
        if rng.random() < 0.5:
            round_ = state.plan(now, solve=allocate if seed == 0 else allocate_greedy)
            check()
            state.commit(round_)
            last_record = round_.record
            check()
        if last_record is not None and rng.random() < 0.03:  # planner restart: only the audit record survives
            state = PlannerState(policy, **kw)
            state.restore(last_record)
            check()


def _send(
    state: PlannerState,
    name: str,
    seq: int,
    applied: int,
    pool: PoolReport,
    forecast: Forecast,
    observed: Observed | None = None,
) -> None:
    """Deployment ``name``'s report of one pool (session ``s<name>``), at planner time 1.0."""
    report = AgentReport(
        deployment=name,
        session_id=f"s{name}",
        sequence=seq,
        applied_decision_id=applied,
        forecast=forecast,
        observed=observed,
        pools=[pool],
    )
    state.report(report, 1.0)


def test_a_confirmed_drain_makes_a_waiting_bid_ask_for_a_round() -> None:
    """``wanting`` names what a pool waits for; once a drain of that GPU type is confirmed, its
    bid asks for a round (round on ask grants it then), never before."""
    state = PlannerState(_policy({"h200": 4}, {"acme": {"priority": 100}, "beta": {"priority": 1}}), lease_s=100.0)
    state.register(_registration("a", tenant="beta"), "sa", 0.0)
    state.register(_registration("b", tenant="acme"), "sb", 0.0)

    def report(name: str, seq: int, applied: int, ready: int, draining: int, wanted: int, rps: float) -> None:
        pool = PoolReport(role="agg", ready=ready, draining=draining, curve=_curve(4), wanted_replicas=wanted)
        _send(state, name, seq, applied, pool, Forecast(mean_rps=rps, upper_rps=rps))

    report("a", 1, 0, 0, 0, 4, 10.0)
    d1 = _round(state, 1.0).decision_id
    assert _grant(state.targets("a", 1.0)) == 4
    report("a", 2, d1, 4, 0, 0, 0.1)  # a asks for none: cut at once, its GPUs held until drained
    report("b", 1, 0, 0, 0, 2, 10.0)
    d2 = _round(state, 2.0).decision_id
    assert _grant(state.targets("a", 2.0)) == 0 and state.committed_gpus()["h200"] == 4
    assert state.wanting("b") == {("h200", 1)} and state.wanting("a") == set()
    assert not state.asks_for_change("b", 2.0), "nothing is free while a drains"
    report("a", 3, d2, 0, 4, 0, 0.1)
    assert not state.asks_for_change("b", 3.0), "still draining"
    report("a", 4, d2, 0, 0, 0, 0.1)  # drained, having seen d2: the GPUs are free
    assert state.asks_for_change("b", 4.0)
    _round(state, 4.0)
    assert _grant(state.targets("b", 4.0)) == 2 and state.wanting("b") == set()


def test_a_pool_observed_short_asks_for_a_round_even_with_no_gpu_free() -> None:
    """Round on ask also answers a pool that asks for more while its observed load proves it
    short: that round may take GPUs a lower-priority pool holds, so its drain starts now, not at
    the next timed round. An ask the observations do not prove (headroom) waits for the timer."""
    state = PlannerState(_policy({"h200": 5}, {"acme": {"priority": 100}, "beta": {"priority": 1}}), lease_s=100.0)
    state.register(_registration("a", tenant="beta"), "sa", 0.0)
    state.register(_registration("b", tenant="acme"), "sb", 0.0)

    def report(name: str, seq: int, applied: int, ready: int, wanted: int, observed_rps: float) -> None:
        pool = PoolReport(role="agg", ready=ready, curve=_curve(4), wanted_replicas=wanted, replica_capacity_rps=5.0)
        forecast = Forecast(mean_rps=observed_rps, upper_rps=observed_rps * 1.2)
        _send(state, name, seq, applied, pool, forecast, Observed(window_s=30.0, admitted_rps=observed_rps))

    report("a", 1, 0, 0, 4, 18.0)
    report("b", 1, 0, 0, 1, 4.0)
    first = _round(state, 1.0).decision_id
    assert (_grant(state.targets("a", 1.0)), _grant(state.targets("b", 1.0))) == (4, 1)
    assert state.committed_gpus()["h200"] == 5
    report("a", 2, first, 4, 4, 18.0)
    report("b", 2, first, 1, 2, 4.0)  # wants a second replica: 4 rps is 80% of one replica's 5
    assert not state.asks_for_change("b", 2.0), "headroom: nothing free, nothing proven"
    # Late for several windows in a row at 4 rps: short for the allocation, but a round on ask is
    # for a load past the replicas' nominal capacity (lateness waits for the timed round).
    pool = PoolReport(
        role="agg", ready=1, curve=_curve(4), wanted_replicas=2, replica_capacity_rps=5.0, late_rps_per_replica=4.0
    )
    _send(state, "b", 3, first, pool, Forecast(mean_rps=4.0, upper_rps=4.8), Observed(window_s=30.0, admitted_rps=4.0))
    assert not state.asks_for_change("b", 3.0)
    report("b", 4, first, 1, 2, 4.8)  # 96% of what its one replica carries
    assert state.asks_for_change("b", 4.0) == "agg asks for more and is observed short"
    _round(state, 4.0)
    assert _grant(state.targets("a", 4.0)) == 3, "the round cuts the lower priority to free a GPU"


def test_a_round_keeps_the_shedding_the_round_before_started() -> None:
    """The gateway's limit starts past 1.25x what the running replicas carry and, once on, holds
    down to 0.9x: a round passes the endpoints shedding under the round in force to the next one,
    so a queue the limit drained does not lift it while the pool is still short."""
    state = PlannerState(_policy({"h200": 4}, {"acme": {"priority": 1}}), lease_s=100.0)
    state.register(_registration("a"), "sa", 0.0)

    def shedding_at(seq: int, applied: int, observed_rps: float) -> float | None:
        pool = PoolReport(role="agg", ready=4, curve=_curve(16, 17), wanted_replicas=8, replica_capacity_rps=5.0)
        forecast = Forecast(mean_rps=40.0, upper_rps=40.0)
        _send(state, "a", seq, applied, pool, forecast, Observed(window_s=30.0, admitted_rps=observed_rps))
        return _round(state, float(seq)).admission.get("ep-a")

    assert shedding_at(1, 0, 21.0) is None  # 1.05x the 20 rps its four replicas carry: not yet
    assert shedding_at(2, 1, 30.0) is not None  # 1.5x: the gateway sheds the excess
    assert shedding_at(3, 2, 21.0) is not None  # back to 1.05x under the limit: it holds
    record = state.commit(state.plan(3.5)).record
    restarted = PlannerState(_policy({"h200": 4}, {"acme": {"priority": 1}}), lease_s=100.0)
    restarted.restore(record)  # a restarted planner keeps the limit in force as shedding
    assert restarted._deployments["a"].admission_rps == record.admission_rps["ep-a"]
    assert shedding_at(4, 3, 15.0) is None  # 0.75x: lifted


def test_the_planners_reason_travels_with_the_lease_to_where_a_grant_away_from_the_bid_is_logged() -> None:
    from fleet_planner.contract.models import PoolTarget
    from local_agent.session import TickEffects

    targets = Targets(
        deployment="d",
        decision_id=3,
        lease_expires_s=60.0,
        planner_time_s=0.0,
        pools=[
            PoolTarget(role="prefill", replicas=1, reason="shortage: h100 exhausted, priority 1 outbid"),
            PoolTarget(role="decode", replicas=2, reason="as bid: its agent wants 2"),
        ],
    )
    lease = lease_from_targets(targets, sent_at=0.0, drain_margin_s=0.0)
    effective = effective_targets(lease, {"prefill": 0, "decode": 0}, {}, now=1.0)
    effects = TickEffects(
        apply=effective.replicas,
        granted=effective.replicas,
        ack=None,
        source="lease",
        decision_id=3,
        reasons=effective.reasons,
    )
    assert effects.overruled("prefill", 3) == "shortage: h100 exhausted, priority 1 outbid"
    assert effects.overruled("decode", 2) is None  # granted as bid: nothing to explain
    # A lapsed lease falls back to the floor: the planner's reasons no longer apply.
    assert effective_targets(lease, {"prefill": 0, "decode": 0}, {}, now=61.0).reasons == {}


def test_a_holding_lease_that_counts_fewer_replicas_than_run_says_why() -> None:
    """Before the first round a pool is held at what the planner may count; a tenant capped at 0
    of its pool's GPU type is held at 0 of the 10 it runs, and its reason says so (it used to say
    it was "holding current replicas" while it took the pool to zero)."""
    state = PlannerState(_policy({"a100": 10}, {"acme": {"max_gpus": {"a100": 0}}, "beta": {}}))
    state.register(_registration("a", gpu="a100", max_replicas=16), "s-a", 0.0)
    targets = state.report(_report("a", "s-a", 1, 0, {"agg": (10, 0)}, need=3), 0.0)
    (pool,) = targets.pools
    assert pool.replicas == 0
    assert pool.reason.startswith("no allocation yet: holding the 0 of its 10 replicas"), pool.reason
    # What it may count, it holds, as before.
    state.register(_registration("b", tenant="beta", gpu="a100"), "s-b", 0.0)
    (held,) = state.report(_report("b", "s-b", 1, 0, {"agg": (3, 0)}, need=3), 0.0).pools
    assert held.replicas == 3 and held.reason == "no allocation yet: holding current replicas"


def test_a_holding_lease_under_a_cap_keeps_every_pool_of_a_pair_at_its_minimum_before_the_rest() -> None:
    """A tenant capped at 6 GPUs runs a pair of 6 prefill and 1 decode replicas: counted in the
    report's order, the prefill pool took all 6 and the decode partner was held at 0, a pair that
    serves nothing (sweep fleets, seeds 25 and 27). Each pool is counted up to its minimum (and
    one replica) first."""
    state = PlannerState(_policy({"h100": 8}, {"acme": {"max_gpus": {"h100": 6}}}))
    registration = Registration(
        deployment="d",
        tenant="acme",
        endpoint="ep-d",
        pools=[
            PoolRegistration(role="prefill", gpu_type="h100", gpus_per_replica=1, min_replicas=1, max_replicas=6),
            PoolRegistration(role="decode", gpu_type="h100", gpus_per_replica=1, min_replicas=1, max_replicas=1),
        ],
    )
    state.register(registration, "s", 0.0)
    targets = state.report(_report("d", "s", 1, 0, {"prefill": (6, 0), "decode": (1, 0)}, need=3), 0.0)
    assert _grant(targets, "decode") == 1
    assert _grant(targets, "prefill") == 5
    # A later report counts the same: what is held stays held, nothing more is counted.
    again = state.report(_report("d", "s", 2, 0, {"prefill": (6, 0), "decode": (1, 0)}, need=3), 1.0)
    assert (_grant(again, "prefill"), _grant(again, "decode")) == (5, 1)
    # A partner with no minimum still keeps the one replica it runs: a pair serves with one each.
    loose = PlannerState(_policy({"h100": 8}, {"acme": {"max_gpus": {"h100": 3}}}))
    pools = [p.model_copy(update={"min_replicas": 0}) for p in registration.pools]
    loose.register(registration.model_copy(update={"pools": pools}), "s", 0.0)
    held = loose.report(_report("d", "s", 1, 0, {"prefill": (4, 0), "decode": (1, 0)}, need=3), 0.0)
    assert (_grant(held, "prefill"), _grant(held, "decode")) == (2, 1)


def test_a_pool_without_a_bid_is_held_within_an_overrides_bounds_not_dropped_to_its_minimum() -> None:
    """Before its agent has sized it, a pool bids nothing and the planner holds what it runs; an
    override's ``min_replicas`` (0 here) is a floor for bids, not a reason to empty a pool nobody
    has priced yet. Its ``max_replicas`` (2) still caps it. A random fleet (sweep seed 20, ``s15``)
    lost its only running replicas that way at 10 s and waited 361 s for a cold start."""
    policy = TenantPolicy.model_validate(
        {
            "fleet": {"gpus": {"h200": 8}},
            "tenants": {"acme": {}},
            "deployments": [{"selector": "acme/d/agg", "min_replicas": 0, "max_replicas": 2}],
        }
    )
    state = PlannerState(policy, lease_s=100.0)
    state.register(_registration("d"), "s", now=0.0)
    unpriced = AgentReport(deployment="d", session_id="s", sequence=1, pools=[PoolReport(role="agg", ready=3)])
    state.report(unpriced, now=1.0)
    _round(state, 1.0)
    assert _grant(state.targets("d", 1.0)) == 2
    # Priced, the override's bounds apply as to any bid: no traffic, no replica.
    priced = AgentReport(
        deployment="d",
        session_id="s",
        sequence=2,
        forecast=Forecast(mean_rps=0.0, upper_rps=0.0),
        pools=[PoolReport(role="agg", ready=2, curve=[1.0, 1.0, 1.0], wanted_replicas=0)],
    )
    state.report(priced, now=2.0)
    _round(state, 2.0)
    assert _grant(state.targets("d", 2.0)) == 0
