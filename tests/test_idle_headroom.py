"""Idle GPUs lent above a bid (``fill_idle``): only where the policy says so, never held against an ask."""

from __future__ import annotations

import pytest
from agent_link_helpers import agg_decision
from pydantic import ValidationError

from fleet_planner.contract import convert
from fleet_planner.contract.models import (
    AgentReport,
    Forecast,
    Observed,
    PoolRegistration,
    PoolReport,
    PoolTarget,
    Registration,
    Targets,
)
from global_planner.allocation import (
    AllocationRequest,
    PoolDemand,
    PoolOverride,
    TenantLimits,
    allocate,
    allocate_greedy,
)
from global_planner.policy_file import TenantPolicy
from global_planner.service.state import PlannerState
from local_agent.session import AgentSession, TickInput

TENANTS = {"high": TenantLimits(priority=100.0), "low": TenantLimits(priority=1.0)}
LEND_TO_HIGH = [PoolOverride(selector="high/*", fill_idle=True)]


def _pool(name: str, tenant: str, *, current: int, wanted: int, headroom: int = 0, **kw: object) -> PoolDemand:
    """A pool whose agent wants ``wanted`` replicas (1 rps each) for the rate it observes."""
    fields: dict[str, object] = dict(
        deployment=name,
        tenant=tenant,
        endpoint=f"ep-{name}",
        role="agg",
        gpu_type="h100",
        gpus_per_replica=1,
        max_replicas=10,
        current_replicas=current,
        curve=[min(1.0, k / max(wanted, 1)) for k in range(11)],
        demand_weight=float(wanted),
        wanted_replicas=wanted,
        running_replicas=current,
        observed_rps=float(wanted),
        replica_capacity_rps=1.0,
        headroom_replicas=headroom,
    )
    fields.update(kw)
    return PoolDemand(**fields)


def _request(pools: list[PoolDemand], gpus: int = 12, **kw: object) -> AllocationRequest:
    fields: dict[str, object] = {"tenants": TENANTS, **kw}
    return AllocationRequest(pools=pools, inventory={"h100": gpus}, **fields)


def test_without_the_policy_a_grant_never_exceeds_the_bid() -> None:
    for solve in (allocate, allocate_greedy):
        answer = solve(_request([_pool("chat", "high", current=2, wanted=3)]))
        assert answer.replicas == {"chat/agg": 3} and answer.headroom == {}


def test_idle_gpus_are_lent_up_to_the_pools_maximum_and_the_record_says_so() -> None:
    for solve in (allocate, allocate_greedy):
        answer = solve(_request([_pool("chat", "high", current=2, wanted=3)], overrides=LEND_TO_HIGH))
        assert answer.replicas == {"chat/agg": 10}
        assert answer.headroom == {"chat/agg": 7}
        assert answer.drivers["chat/agg"] == "idle"
        assert "7 replica(s) of idle h100 GPUs lent above its ask (fill_idle)" in answer.reasons["chat/agg"]
        assert "moved onto idle GPUs its policy lets it hold above its bid" in answer.reasons["chat/agg"]


def test_lending_keeps_within_tenant_caps_step_limits_and_the_inventory() -> None:
    capped = {**TENANTS, "high": TenantLimits(priority=100.0, max_gpus={"h100": 6})}
    pools = [_pool("chat", "high", current=2, wanted=3), _pool("batch", "low", current=4, wanted=4)]
    answer = allocate(_request(pools, tenants=capped, overrides=LEND_TO_HIGH))
    assert answer.replicas == {"chat/agg": 6, "batch/agg": 4} and answer.headroom == {"chat/agg": 3}
    stepped = [*LEND_TO_HIGH, PoolOverride(selector="high/chat", max_step=2)]
    assert allocate(_request(pools, overrides=stepped)).replicas["chat/agg"] == 4
    assert allocate(_request(pools, gpus=9, overrides=LEND_TO_HIGH)).replicas == {"chat/agg": 5, "batch/agg": 4}


def test_a_lower_priority_ask_takes_lent_gpus_back_at_once() -> None:
    # The high-priority pool holds 10 replicas, 7 of them lent; its agent adopted the grant and
    # bids to keep all 10. A low-priority pool not observed short asks for 2 more: without the
    # loan the high-priority pool's replicas would be protected and the ask headroom; lent, they
    # are nobody's, and the ask is served first.
    lent = _pool("chat", "high", current=10, wanted=10, headroom=7, observed_rps=3.0, demand_weight=3.0)
    asker = _pool("batch", "low", current=2, wanted=4, observed_rps=2.0)
    for solve in (allocate, allocate_greedy):
        answer = solve(_request([lent, asker], overrides=LEND_TO_HIGH))
        assert answer.replicas == {"chat/agg": 8, "batch/agg": 4}
        assert answer.headroom == {"chat/agg": 5}
    # The same pool holding 10 of its own keeps them against a lower priority.
    own = lent.model_copy(update={"headroom_replicas": 0})
    assert allocate(_request([own, asker], overrides=LEND_TO_HIGH)).replicas == {"chat/agg": 10, "batch/agg": 2}


def test_a_loan_stays_where_it_is_while_nobody_asks() -> None:
    # Two pools may borrow; one holds the loan. Round after round the grants do not move.
    both = [PoolOverride(selector="*/*", fill_idle=True)]
    pools = [
        _pool("chat", "high", current=8, wanted=3, headroom=5, max_replicas=12),
        _pool("mail", "high", current=2, wanted=2, max_replicas=12),
    ]
    grants = []
    for _ in range(4):
        answer = allocate(_request(pools, overrides=both))
        grants.append(answer.replicas)
        pools = [
            p.model_copy(
                update={
                    "current_replicas": answer.replicas[p.pool_id],
                    "headroom_replicas": answer.headroom.get(p.pool_id, 0),
                }
            )
            for p in pools
        ]
    assert grants[0]["chat/agg"] >= 8 and all(g == grants[0] for g in grants), grants
    assert sum(grants[0].values()) == 12


def test_an_agent_asking_past_its_grant_owns_all_of_it() -> None:
    pool = _pool("chat", "high", current=6, wanted=8, headroom=4)
    assert pool.own_replicas() == 6
    answer = allocate(_request([pool], gpus=9, overrides=LEND_TO_HIGH))
    assert answer.replicas == {"chat/agg": 9} and answer.headroom == {"chat/agg": 1}


def _registration(name: str, tenant: str) -> Registration:
    pool = PoolRegistration(role="agg", gpu_type="h100", gpus_per_replica=1, min_replicas=0, max_replicas=10)
    return Registration(deployment=name, tenant=tenant, endpoint=f"ep-{name}", pools=[pool])


def _report(name: str, seq: int, applied: int, ready: int, wanted: int, rps: float) -> AgentReport:
    return AgentReport(
        deployment=name,
        session_id=f"s-{name}",
        sequence=seq,
        applied_decision_id=applied,
        forecast=Forecast(mean_rps=rps, upper_rps=rps),
        observed=Observed(admitted_rps=rps, window_s=30.0),
        pools=[
            PoolReport(
                role="agg",
                ready=ready,
                curve=[min(1.0, k / max(wanted, 1)) for k in range(11)],
                wanted_replicas=wanted,
                replica_capacity_rps=1.0,
            )
        ],
    )


def test_the_planner_lends_remembers_and_hands_back_on_ask() -> None:
    policy = TenantPolicy.model_validate(
        {
            "fleet": {"gpus": {"h100": 12}},
            "tenants": {"high": {"priority": 100}, "low": {"priority": 1}},
            "deployments": [{"selector": "high/*", "fill_idle": True}],
        }
    )
    state = PlannerState(policy, lease_s=100.0)
    for name, tenant in (("chat", "high"), ("batch", "low")):
        state.register(_registration(name, tenant), f"s-{name}", 0.0)
    state.report(_report("chat", 1, 0, ready=0, wanted=3, rps=3.0), 0.0)
    state.report(_report("batch", 1, 0, ready=0, wanted=2, rps=2.0), 0.0)
    first = state.commit(state.plan(1.0))
    assert (state.usage("chat", "agg"), state.usage("batch", "agg")) == (10, 2)
    assert next(p.headroom for d in first.record.deployments if d.deployment == "chat" for p in d.pools) == 7
    # The borrower's agent ran the grant and bids to keep it: its own part is still 3, so no round.
    state.report(_report("chat", 2, first.decision_id, ready=10, wanted=10, rps=3.0), 2.0)
    assert state.asks_for_change("chat", 2.0) is None
    # ... and a report giving part of the loan back asks for no round either.
    state.report(_report("chat", 3, first.decision_id, ready=10, wanted=5, rps=3.0), 3.0)
    assert state.asks_for_change("chat", 3.0) is None
    # The low-priority tenant asks for 2 more: no GPU is free, but 7 are only lent.
    state.report(_report("batch", 2, first.decision_id, ready=2, wanted=4, rps=2.0), 4.0)
    assert state.asks_for_change("batch", 4.0) == "asks for more while h100 GPUs are lent as idle headroom"
    second = state.commit(state.plan(5.0))
    chat = next(p for d in second.record.deployments if d.deployment == "chat" for p in d.pools)
    assert chat.granted == 8 and chat.moved_by == "bid"
    # The drain gates the hand-over (never a GPU granted twice); confirmed, the ask is served.
    state.report(_report("chat", 4, second.decision_id, ready=8, wanted=8, rps=3.0), 6.0)
    state.commit(state.plan(7.0))
    assert (state.usage("chat", "agg"), state.usage("batch", "agg")) == (8, 4)


def test_a_pool_without_a_bid_keeps_its_loan_a_loan() -> None:
    # An agent whose report carries no curve yet bids to hold what it runs: its lent replicas
    # must not become its own (protected) on that round.
    quiet = _pool("chat", "high", current=8, wanted=3, headroom=5, wanted_replicas=None, min_replicas=8)
    answer = allocate(_request([quiet], gpus=8, overrides=LEND_TO_HIGH))
    assert answer.replicas == {"chat/agg": 8} and answer.headroom == {"chat/agg": 5}


def test_the_agent_runs_the_loan_and_plans_from_its_own_part() -> None:
    targets = Targets(
        deployment="chat",
        decision_id=3,
        planner_time_s=10.0,
        lease_expires_s=100.0,
        pools=[PoolTarget(role="agg", replicas=8, headroom_replicas=5)],
    )
    assert convert.targets_from_pb(convert.targets_to_pb(targets), "chat") == targets
    with pytest.raises(ValidationError, match="headroom_replicas 9 > replicas 8"):
        PoolTarget(role="agg", replicas=8, headroom_replicas=9)
    session = AgentSession(_registration("chat", "high"))
    session.answered(targets, 10.0, None)
    effects = session.effects(TickInput(now_s=11.0, decision=agg_decision("chat", "high", 3, current=3)), answered=True)
    assert effects.apply == {"agg": 8} and effects.granted == {"agg": 8}
    assert effects.planned("agg") == 3


def test_a_descent_paced_by_max_step_is_planned_from_its_target_and_never_turned_round() -> None:
    """The replicas ``max_step`` keeps above a descent's target are the planner's pace, not the
    agent's wish: planned from, a hold bid them back (random fleet seed 45 ``s23``: 7 -> 6 -> 3 -> 6)."""
    policy = TenantPolicy.model_validate(
        {
            "fleet": {"gpus": {"h100": 12}},
            "tenants": {"high": {"priority": 100}},
            "deployments": [{"selector": "high/*", "max_step": 1}],
        }
    )
    state = PlannerState(policy, lease_s=100.0)
    state.register(_registration("chat", "high"), "s-chat", 0.0)
    state.report(_report("chat", 1, 0, ready=7, wanted=7, rps=7.0), 0.0)
    applied = state.commit(state.plan(1.0)).decision_id
    assert state.usage("chat", "agg") == 7
    session = AgentSession(_registration("chat", "high"))
    granted, planned = [], 7
    for seq in range(2, 8):
        now = float(seq)
        bid = 2  # the agent asks for 2 once, then holds what it plans from
        state.report(_report("chat", seq, applied, ready=state.usage("chat", "agg"), wanted=bid, rps=2.0), now)
        applied = state.commit(state.plan(now + 0.5)).decision_id
        session.answered(state.targets("chat", now + 0.5), now + 0.5, None)
        tick = TickInput(now_s=now + 0.6, decision=agg_decision("chat", "high", bid, current=planned))
        effects = session.effects(tick, answered=True)
        granted.append(effects.granted["agg"])
        planned = effects.planned("agg")
        assert planned == 2
    assert granted == [6, 5, 4, 3, 2, 2]
    # A scale-up ends the descent; a grant below the ask (a shortage) is planned from, as before.
    tick = TickInput(now_s=20.0, decision=agg_decision("chat", "high", 9, current=2))
    assert session.effects(tick, answered=True).planned("agg") == 2


def test_a_grant_above_a_hold_that_began_no_descent_is_planned_from() -> None:
    """An earlier ask granted a round late (4 of 6 at once, the rest when GPUs freed) is the
    agent's own: a hold at the part it had is no ask to give the rest back (soft-shortage seed 5)."""
    session = AgentSession(_registration("chat", "high"))
    targets = Targets(
        deployment="chat",
        decision_id=2,
        planner_time_s=10.0,
        lease_expires_s=100.0,
        pools=[PoolTarget(role="agg", replicas=6)],
    )
    session.answered(targets, 10.0, None)
    up = session.effects(TickInput(now_s=10.0, decision=agg_decision("chat", "high", 6, current=2)), answered=True)
    assert up.planned("agg") == 6
    held = session.effects(TickInput(now_s=11.0, decision=agg_decision("chat", "high", 4, current=4)), answered=True)
    assert held.planned("agg") == 6
