"""Stable grants: cost of change and hysteresis, the bid check, drivers, a readable CP-SAT model."""

from __future__ import annotations

import math

from ortools.sat.python import cp_model

from fleet_planner.contract.convert import report_from_pb, report_to_pb
from fleet_planner.contract.models import (
    AgentReport,
    Forecast,
    Observed,
    PoolRegistration,
    PoolReport,
    Registration,
)
from global_planner.allocation import (
    AllocationRequest,
    PoolDemand,
    Stability,
    TenantLimits,
    allocate,
    allocate_greedy,
    endpoint_plans,
)
from global_planner.allocation.problem import build_problem
from global_planner.allocation.solver import _Model
from global_planner.allocation.stability import checked_bid, evidence_need, valued_at_evidence
from global_planner.policy_file import TenantPolicy
from global_planner.service.state import PlannerState


def _curve(per_replica_rps: float, rate: float, points: int = 13) -> list[float]:
    """Attainment of k replicas carrying ``rate``: the share of the load they can serve."""
    return [round(min(1.0, k * per_replica_rps / rate), 4) if rate > 0 else 1.0 for k in range(points)]


def _pool(name: str, rate: float, current: int, **kw: object) -> PoolDemand:
    fields: dict[str, object] = dict(
        deployment=name,
        tenant="t",
        endpoint=f"ep-{name}",
        role="agg",
        gpu_type="h100",
        gpus_per_replica=1,
        max_replicas=12,
        current_replicas=current,
        curve=_curve(1.0, rate),
        demand_weight=rate,
    )
    fields.update(kw)
    return PoolDemand(**fields)


def _request(pools: list[PoolDemand], gpus: int, **kw: object) -> AllocationRequest:
    return AllocationRequest(pools=pools, inventory={"h100": gpus}, **kw)


def test_steady_bids_give_a_steady_grant_when_a_trade_gains_less_than_its_cost() -> None:
    # Two pools short of GPUs, marginal values within a few percent: moving a replica from one to
    # the other gains less than the gainer's cold start plus the loser's hysteresis.
    pools = [_pool("a", 6.0, current=4), _pool("b", 6.3, current=4)]
    for solve in (allocate, allocate_greedy):
        answer = solve(_request(pools, 8))
        assert answer.replicas == {"a/agg": 4, "b/agg": 4}
        assert answer.drivers == {"a/agg": "unchanged", "b/agg": "unchanged"}
    # Without the stability terms the same bids move a replica (the old behaviour: thrash).
    loose = Stability(hysteresis=0.0, default_startup_s=0.0)
    moved = allocate(_request(pools, 8, stability=loose))
    assert moved.replicas != {"a/agg": 4, "b/agg": 4}


def test_a_trade_worth_more_than_its_cost_still_happens_and_says_why() -> None:
    pools = [_pool("a", 2.0, current=6), _pool("b", 10.0, current=2)]
    answer = allocate(_request(pools, 8))
    assert answer.replicas["b/agg"] > 2
    assert answer.drivers["a/agg"] == "others"
    assert answer.drivers["b/agg"] == "bid"
    assert "moved by other pools' value" in answer.reasons["a/agg"]


def test_cold_start_discount_makes_a_move_pay_for_its_startup() -> None:
    problem = build_problem(_request([_pool("a", 6.0, current=2, startup_s=300.0)], 12))
    plan = problem.pools[0]
    gain_at_3 = plan.value_at(3) - plan.value_at(2)
    loss_at_1 = plan.value_at(2) - plan.value_at(1)
    # 300 s of a 600 s horizon: half of a new replica's value is lost to its cold start
    assert gain_at_3 < loss_at_1
    assert abs(gain_at_3 - loss_at_1 * 0.5) <= 1


def test_inflated_bid_is_valued_at_the_observed_rate() -> None:
    # Same priority, same size: the tenant that triples its forecast over what it observes must
    # not win the GPUs it would win with an honest bid.
    honest = _pool("honest", 6.0, current=3, observed_rps=6.0, wanted_replicas=6)
    inflated = _pool("inflated", 18.0, current=3, observed_rps=6.0, wanted_replicas=12)
    answer = allocate(_request([honest, inflated], 8))
    assert answer.replicas["inflated/agg"] <= answer.replicas["honest/agg"]
    assert "bid capped" in answer.reasons["inflated/agg"]
    assert "bid capped" not in answer.reasons["honest/agg"]


def test_bid_check_leaves_a_ramp_within_the_allowance_alone() -> None:
    pool = _pool("ramp", 8.0, current=3, observed_rps=6.0)
    checked, note = checked_bid(pool, 0.5)
    assert checked is pool and note is None
    big = _pool("big", 30.0, current=3, observed_rps=6.0, wanted_replicas=12, curve=_curve(1.0, 30.0, 40))
    capped, note = checked_bid(big, 0.5)
    assert note is not None
    cap = 6.0 * 1.5 + 3 * math.sqrt(6.0 / 30.0)
    assert math.isclose(capped.demand_weight, cap)
    assert capped.wanted_replicas is not None and capped.wanted_replicas < 12
    # each count is valued as if it carried the capped rate (capacity linear in replicas)
    for k in (2, 5, 8):
        assert math.isclose(capped.curve[k], min(1.0, k / cap), abs_tol=2e-4)


def test_bid_check_can_be_switched_off() -> None:
    pool = _pool("big", 30.0, current=3, observed_rps=6.0)
    checked, note = checked_bid(pool, None)
    assert checked is pool and note is None


def test_model_variables_and_constraints_are_named() -> None:
    pools = [
        _pool("d", 6.0, current=2, role="prefill", pair_group="d"),
        _pool("d", 6.0, current=2, role="decode", pair_group="d"),
        _pool("e", 4.0, current=5),
    ]
    built = _Model(build_problem(_request(pools, 10)))
    proto = built.model.proto
    names = {v.name for v in proto.variables}
    assert {"replicas[d/prefill]", "replicas[d/decode]", "replicas[e/agg]", "attainment[d/prefill+d/decode]"} <= names
    assert "replicas_cut[e/agg]" in names
    assert all(v.name for v in proto.variables)
    constraint_names = {c.name for c in proto.constraints}
    assert "budget[h100]" in constraint_names
    assert all(c.name for c in proto.constraints)
    solver = cp_model.CpSolver()
    assert solver.solve(built.model) in (cp_model.OPTIMAL, cp_model.FEASIBLE)


def test_without_contention_every_pool_gets_what_its_agent_wants() -> None:
    # The curve saturates at 4 replicas but the agent wants 6 (headroom): free GPUs, so 6.
    # Another agent wants 2 although its curve still rises: a grant is never raised past the bid.
    headroom = _pool("headroom", 4.0, current=3, wanted_replicas=6)
    modest = _pool("modest", 10.0, current=1, wanted_replicas=2)
    for solve in (allocate, allocate_greedy):
        answer = solve(_request([headroom, modest], 40))
        assert answer.replicas == {"headroom/agg": 6, "modest/agg": 2}
        assert answer.drivers == {"headroom/agg": "bid", "modest/agg": "bid"}
        assert answer.reasons["headroom/agg"].startswith("as bid: its agent wants 6")
    # A pool holding more than its agent now wants is brought down to the bid, as it would alone.
    shrinking = _pool("shrinking", 10.0, current=8, wanted_replicas=5)
    answer = allocate(_request([shrinking], 40))
    assert answer.replicas == {"shrinking/agg": 5}
    assert answer.drivers == {"shrinking/agg": "bid"}


def test_with_contention_priority_decides_who_misses() -> None:
    high = _pool("high", 6.0, current=2, wanted_replicas=6, tenant="gold")
    low = _pool("low", 6.0, current=6, wanted_replicas=6, tenant="bronze")
    tenants = {"gold": TenantLimits(priority=100), "bronze": TenantLimits(priority=1)}
    answer = allocate(_request([high, low], 8, tenants=tenants))
    assert answer.replicas["high/agg"] == 6
    assert answer.replicas["low/agg"] == 2
    assert answer.drivers["low/agg"] == "others"


def test_decision_record_says_what_moved_each_pool_and_bids_are_checked_against_observed_rates() -> None:
    policy = TenantPolicy.model_validate({"fleet": {"gpus": {"h200": 8}}, "tenants": {"honest": {}, "inflated": {}}})
    state = PlannerState(policy, lease_s=60.0)
    pools = [PoolRegistration(role="agg", gpu_type="h200", gpus_per_replica=1, min_replicas=0, max_replicas=8)]
    for name in ("honest", "inflated"):
        state.register(Registration(deployment=name, tenant=name, endpoint=f"ep-{name}", pools=pools), name, 0.0)
        # both observe 4 rps and need 4 replicas for it; one bids as if it had 12 rps
        rate = 4.0 if name == "honest" else 12.0
        need = 4 if name == "honest" else 12
        state.report(
            AgentReport(
                deployment=name,
                session_id=name,
                sequence=1,
                forecast=Forecast(mean_rps=rate, upper_rps=rate),
                observed=Observed(window_s=30.0, admitted_rps=4.0),
                pools=[
                    PoolReport(
                        role="agg",
                        curve=[min(1.0, k / need) for k in range(9)],
                        wanted_replicas=min(need, 8),
                    )
                ],
            ),
            1.0,
        )
    record = state.commit(state.plan(2.0)).record
    by_name = {dep.deployment: dep.pools[0] for dep in record.deployments}
    assert by_name["honest"].granted == 4
    assert by_name["inflated"].granted <= 4
    assert {p.moved_by for p in by_name.values()} == {"bid"}
    assert "bid capped" in by_name["inflated"].reason


def test_cold_start_discount_treats_a_pair_alike_when_a_minimum_lifts_one_pool() -> None:
    # A fresh deployment (nothing running): its decode pool must keep one replica (minimum 1),
    # its prefill pool may go to zero. Both pools' gains are discounted from what runs now (0),
    # so the pair still reaches the count where both are saturated.
    pools = [
        _pool("chat", 4.0, current=0, role="prefill", pair_group="chat", curve=[0.0, 0.6, 0.95, 1.0, 1.0]),
        _pool(
            "chat", 4.0, current=0, role="decode", pair_group="chat", curve=[0.0, 0.9, 1.0, 1.0, 1.0], min_replicas=1
        ),
    ]
    answer = allocate(_request(pools, 12))
    assert answer.replicas == {"chat/prefill": 3, "chat/decode": 2}


def test_a_bid_made_before_the_agent_ran_its_grant_does_not_undo_it() -> None:
    # Granted 5 last round; the agent still runs 3 (it bid before it saw the grant) and bids 3:
    # the grant holds. Once it runs the 5 and still bids 3, the grant follows the bid down.
    stale = _pool("p", 6.0, current=5, wanted_replicas=3, running_replicas=3)
    assert allocate(_request([stale], 12)).replicas == {"p/agg": 5}
    seen = _pool("p", 6.0, current=5, wanted_replicas=3, running_replicas=5)
    assert allocate(_request([seen], 12)).replicas == {"p/agg": 3}
    # a bid for more is followed at once while the agent runs no more than its grant
    more = _pool("p", 6.0, current=5, wanted_replicas=7, running_replicas=3)
    assert allocate(_request([more], 12)).replicas == {"p/agg": 7}


def test_a_bid_made_before_the_agent_applied_a_cut_does_not_raise_the_grant_back() -> None:
    # Cut to 5 last round (its partner needed the GPUs), the agent still runs 7 and bid 7 before it
    # saw the cut: a later round on that report holds the 5, and the freed GPUs are not claimed back
    # at once (a sweep fleet, seed 65 s12: the raise reserved the drained GPU for two intervals).
    for solve in (allocate, allocate_greedy):
        stale = _pool("p", 6.0, current=5, wanted_replicas=7, running_replicas=7)
        assert solve(_request([stale], 12)).replicas == {"p/agg": 5}
        # Once it runs the cut and still bids 7, the bid is followed.
        seen = _pool("p", 6.0, current=5, wanted_replicas=7, running_replicas=5)
        assert solve(_request([seen], 12)).replicas == {"p/agg": 7}


def test_registered_startup_reaches_the_allocation_and_a_policy_override_wins() -> None:
    # The agent registers its pool's cold start; the planner prices the pool's moves with it
    # unless the tenant policy names another one for that pool.
    def demand(policy_extra: dict) -> tuple[PoolDemand, AllocationRequest]:
        policy = TenantPolicy.model_validate({"fleet": {"gpus": {"h200": 8}}, "tenants": {"t": {}}, **policy_extra})
        state = PlannerState(policy, lease_s=60.0)
        pools = [
            PoolRegistration(
                role="agg", gpu_type="h200", gpus_per_replica=1, min_replicas=0, max_replicas=8, startup_s=240.0
            )
        ]
        state.register(Registration(deployment="d", tenant="t", endpoint="ep", pools=pools), "d", 0.0)
        report = AgentReport(
            deployment="d",
            session_id="d",
            sequence=1,
            forecast=Forecast(mean_rps=4.0, upper_rps=4.0),
            pools=[PoolReport(role="agg", curve=[min(1.0, k / 4) for k in range(9)], wanted_replicas=4)],
        )
        state.report(report, 1.0)
        request = state.begin_round(2.0).request
        assert request is not None
        return request.pools[0], request

    pool, request = demand({})
    assert pool.startup_s == 240.0
    assert (
        build_problem(request).pools[0].values[-1]
        < build_problem(request.model_copy(update={"pools": [pool.model_copy(update={"startup_s": 0.0})]}))
        .pools[0]
        .values[-1]
    )
    _, overridden = demand({"deployments": [{"selector": "t/d", "startup_s": 0.0}]})
    assert (
        build_problem(overridden).pools[0].values
        == build_problem(request.model_copy(update={"pools": [pool.model_copy(update={"startup_s": 0.0})]}))
        .pools[0]
        .values
    )


def _served(name: str, endpoint: str, tenant: str, *, current: int, observed: float, **kw: object) -> PoolDemand:
    """A pool whose agent wants 6 replicas for a forecast of 6 rps (1 rps a replica by its curve)
    while it observes ``observed`` rps on ``current`` replicas of 1 rps capacity each."""
    fields: dict[str, object] = dict(
        tenant=tenant,
        endpoint=endpoint,
        wanted_replicas=6,
        running_replicas=current,
        observed_rps=observed,
        replica_capacity_rps=1.0,
    )
    fields.update(kw)
    return _pool(name, 6.0, current=current, **fields)


def _full_holder() -> PoolDemand:
    """A low-priority pool holding 7 replicas and wanting all 7 for the 7 rps it serves."""
    return _served(
        "batch",
        "ep-batch",
        "low",
        current=7,
        observed=7.0,
        wanted_replicas=7,
        curve=_curve(1.0, 7.0),
        demand_weight=7.0,
    )


def test_a_pool_takes_gpus_another_pool_holds_only_when_its_endpoint_is_observed_short() -> None:
    tenants = {"high": TenantLimits(priority=100.0), "low": TenantLimits(priority=1.0)}
    holder = _served("batch", "ep-batch", "low", current=6, observed=6.0)
    for solve in (allocate, allocate_greedy):
        # The high-priority agent asks for 6 on a forecast, but serves 2 rps on 3 replicas: the
        # rest is headroom, worth the idle GPUs only. The holder keeps what it holds and wants.
        fine = _served("chat", "ep-chat", "high", current=3, observed=2.0)
        answer = solve(_request([fine, holder], 10, tenants=tenants))
        assert answer.replicas == {"chat/agg": 4, "batch/agg": 6}
        unchecked = solve(_request([fine, holder], 10, tenants=tenants, stability=Stability(bid_allowance=None)))
        assert unchecked.replicas == {"chat/agg": 4, "batch/agg": 6}  # explain says why not 6
        assert "headroom: its endpoint is not observed short" in unchecked.reasons["chat/agg"]
        # Observed short (3.5 rps on 3 replicas): its curve counts, and priority decides, up to
        # what its observed load needs (3.5 rps at 1 rps a replica: 4; the free GPU first); the rest
        # of its ask is headroom.
        short = _served("chat", "ep-chat", "high", current=3, observed=3.5)
        answer = solve(_request([short, holder], 10, tenants=tenants))
        assert answer.replicas["chat/agg"] == 4 and answer.replicas["batch/agg"] == 6
        hungry = _served("chat", "ep-chat", "high", current=3, observed=4.5)  # needs 5: one from the holder
        answer = solve(_request([hungry, holder], 10, tenants=tenants))
        assert answer.replicas["chat/agg"] == 5 and answer.replicas["batch/agg"] == 5
        assert answer.drivers["batch/agg"] == "others"
        # A one-window spike its forecast does not share (2 rps forecast) is not evidence.
        spike = _served("chat", "ep-chat", "high", current=3, observed=3.5, demand_weight=2.0)
        assert solve(_request([spike, holder], 10, tenants=tenants)).replicas["batch/agg"] == 6
        # Switched off (and the bid check, which would cap this bid near its observed rate): the
        # curves alone decide, as before the check.
        loose = Stability(contest_on_observed=False, bid_allowance=None)
        answer = solve(_request([fine, holder], 10, tenants=tenants, stability=loose))
        assert answer.replicas["chat/agg"] == 6


def test_a_backlog_is_load_the_pool_did_not_carry() -> None:
    # A starved pool's forecast lags (it learns from the rate the pool got through): 2.5 rps
    # forecast and observed on 3 replicas is not short, but 60 requests left waiting after a 30 s
    # window are 2 rps more that arrived and were not carried: 4.5 rps, 5 replicas' worth.
    tenants = {"high": TenantLimits(priority=100.0), "low": TenantLimits(priority=1.0)}
    holder = _full_holder()
    for solve in (allocate, allocate_greedy):
        lagging = _served("chat", "ep-chat", "high", current=3, observed=2.5, demand_weight=2.5)
        answer = solve(_request([lagging, holder], 10, tenants=tenants))
        assert answer.replicas["chat/agg"] == 3
        assert (
            "(this pool: 2.50 rps proven, 0.00 of it backlog, against 90% of 3 x 1.00 rps)"
            in answer.reasons["chat/agg"]
        )
        backlogged = lagging.model_copy(update={"backlog_rps": 2.0})
        answer = solve(_request([backlogged, holder], 10, tenants=tenants))
        assert answer.replicas == {"chat/agg": 5, "batch/agg": 5}
        assert answer.drivers["batch/agg"] == "others"
        # A few requests waiting at a window's end (a burst being served) prove nothing more.
        burst = lagging.model_copy(update={"backlog_rps": 0.1})
        assert solve(_request([burst, holder], 10, tenants=tenants)).replicas["chat/agg"] == 3
        # An inflated queue report counts for at most the observed rate: 2.5 + 2.5 rps proves 6
        # replicas' worth, however many the agent wants and whatever queue it claims.
        greedy = lagging.model_copy(update={"backlog_rps": 100.0, "wanted_replicas": 10, "curve": _curve(1.0, 10.0)})
        assert solve(_request([greedy, holder], 10, tenants=tenants)).replicas["chat/agg"] == 6


def test_a_pool_late_at_its_load_is_short_whatever_its_nominal_capacity_and_still_sheds_on_throughput() -> None:
    # 2 rps on 3 replicas of a nominal 1 rps is not short by throughput, but the agent reports the
    # pool late for several windows in a row at 0.6 rps a replica: its capacity is that, 90% of 3 x
    # 0.6 = 1.62 rps < 2, so the endpoint is short and its curve contests the holder's GPUs up to
    # what the load needs there (2 / (0.9 x 0.6): 4 replicas).
    tenants = {"high": TenantLimits(priority=100.0), "low": TenantLimits(priority=1.0)}
    holder = _served("batch", "ep-batch", "low", current=7, observed=7.0, wanted_replicas=7, curve=_curve(1.0, 7.0))
    fine = _served("chat", "ep-chat", "high", current=3, observed=2.0)
    late = fine.model_copy(update={"late_rps_per_replica": 0.6})
    for solve in (allocate, allocate_greedy):
        assert solve(_request([fine, holder], 10, tenants=tenants)).replicas["chat/agg"] == 3
        answer = solve(_request([late, holder], 10, tenants=tenants))
        assert answer.replicas == {"chat/agg": 4, "batch/agg": 6}
        assert answer.drivers["batch/agg"] == "others"
        assert "; observed short by its lateness (this pool: 2.00 rps proven" in answer.reasons["chat/agg"]
        assert "against 90% of 3 x 0.60 rps (late at that load per replica))" in answer.reasons["chat/agg"]
    # Lateness is the agent's word: it counts down to half the nominal capacity at most, so a pool
    # reported late at any load contests for at most twice what its load needs (2 / (0.9 x 0.5): 5
    # replicas, where 0.01 rps a replica would prove 223).
    assert evidence_need(fine) == 3 and evidence_need(late) == 4
    assert evidence_need(fine.model_copy(update={"late_rps_per_replica": 0.01})) == 5
    # Late at a load per replica above its nominal capacity: that capacity stands.
    late_above = fine.model_copy(update={"late_rps_per_replica": 1.5})
    assert allocate(_request([late_above, holder], 10, tenants=tenants)).replicas["chat/agg"] == 3
    # Late, but not at a load that makes it short: explain names the capacity it was weighed at.
    slow = fine.model_copy(update={"late_rps_per_replica": 0.9})
    answer = allocate(_request([slow, holder], 10, tenants=tenants, stability=Stability(bid_allowance=None)))
    assert answer.replicas["chat/agg"] == 3
    assert "against 90% of 3 x 0.90 rps (late at that load per replica))" in answer.reasons["chat/agg"]
    # The gateway sheds on throughput alone: the late pool's 2 rps fit its replicas' nominal 3 rps.
    assert endpoint_plans([late], {"chat/agg": 3})["ep-chat"].admission_rps is None


def test_the_planner_reads_each_pools_backlog_and_lateness_from_the_agents_report() -> None:
    """Each pool's queue is its own evidence: prompts waiting for a prefill say nothing about the
    decode pool (the deployment's summed queue used to count for both)."""
    state = PlannerState(
        TenantPolicy.model_validate({"fleet": {"gpus": {"h100": 8}}, "tenants": {"t": {}}}), lease_s=100.0
    )
    pools = [
        PoolRegistration(role=role, gpu_type="h100", gpus_per_replica=1, min_replicas=1, max_replicas=4)
        for role in ("prefill", "decode")
    ]
    state.register(Registration(deployment="d", tenant="t", endpoint="e", pools=pools), "s", now=0.0)
    curve = [0.0, 0.5, 1.0]
    report = AgentReport(
        deployment="d",
        session_id="s",
        sequence=1,
        agent_time_s=30.0,
        forecast=Forecast(mean_rps=3.0, upper_rps=4.0),
        observed=Observed(window_s=30.0, admitted_rps=3.0),
        pools=[
            PoolReport(
                role="prefill",
                ready=2,
                curve=curve,
                replica_capacity_rps=1.5,
                queued_requests=45,
                late_rps_per_replica=1.2,
            ),
            PoolReport(role="decode", ready=2, curve=curve, replica_capacity_rps=8.0, queued_requests=0),
        ],
    )
    assert report_from_pb(report_to_pb(report)) == report  # what goes over the wire, field by field
    state.report(report, now=30.0)
    request = state.begin_round(now=30.0).request
    assert request is not None
    backlog = {demand.role: demand.backlog_rps for demand in request.pools}
    assert backlog == {"prefill": 1.5, "decode": 0.0}
    late = {demand.role: demand.late_rps_per_replica for demand in request.pools}
    assert late == {"prefill": 1.2, "decode": None}
    assert all(demand.observed_rps == 3.0 for demand in request.pools)


def test_a_deployment_at_zero_contests_through_its_endpoint_and_missing_data_keeps_the_curves() -> None:
    tenants = {"high": TenantLimits(priority=100.0), "low": TenantLimits(priority=1.0)}
    holder = _served("batch", "ep-batch", "low", current=8, observed=8.0)
    overflow = _served("chat-b", "ep-chat", "high", current=0, observed=0.0)
    busy = _served("chat-a", "ep-chat", "high", current=2, observed=5.0)  # 5 rps on 2 replicas
    answer = allocate(_request([overflow, busy, holder], 10, tenants=tenants))
    assert answer.replicas["chat-b/agg"] > 0
    blind = _pool("chat", 6.0, current=2, tenant="high", endpoint="ep-chat", wanted_replicas=6)  # no observation
    answer = allocate(_request([blind, holder], 10, tenants=tenants))
    assert answer.replicas["chat/agg"] == 6


def test_a_deployment_at_zero_is_short_only_if_its_siblings_cannot_carry_its_share() -> None:
    # chat-b runs nothing; its planned share of the endpoint (3 rps) goes to chat-a, which carries
    # 2 rps on 6 replicas of 1 rps: room for it, so the endpoint is not short and the low-priority
    # holder keeps what it holds and wants (sweep seed 31, s22: a warm-up bid took three prefill
    # replicas given back a round later). So too when chat-b runs replicas but has not reported a
    # rate yet while chat-a has. With chat-a at 4 replicas (1.6 rps of room) chat-b's 3 rps do not
    # fit: the endpoint is short and chat-b takes a replica from the holder.
    tenants = {"high": TenantLimits(priority=100.0), "low": TenantLimits(priority=1.0)}
    holder = _served("batch", "ep-batch", "low", current=7, observed=7.0, wanted_replicas=7)
    roomy = _served("chat-a", "ep-chat", "high", current=6, observed=2.0)
    at_zero = _served("chat-b", "ep-chat", "high", current=0, observed=3.0)
    silent = _pool("chat-b", 6.0, current=1, tenant="high", endpoint="ep-chat", wanted_replicas=6)
    for other, gpus in ((at_zero, 13), (silent, 14)):
        for solve in (allocate, allocate_greedy):
            answer = solve(_request([roomy, other, holder], gpus, tenants=tenants))
            assert answer.replicas["batch/agg"] == 7, other
    tight = _served("chat-a", "ep-chat", "high", current=4, observed=2.0)
    answer = allocate(_request([tight, at_zero, holder], 11, tenants=tenants))
    assert answer.replicas["chat-b/agg"] >= 1 and answer.replicas["batch/agg"] < 7
    # A pair whose prefill runs but whose decode pool is at zero serves nothing either (sweep
    # seed 42, s01: its decode replica was taken from a busy deployment while a sibling carried
    # its share).
    pair = [
        _served("chat-b", "ep-chat", "high", current=n, observed=3.0, role=role, pair_group="chat-b")
        for role, n in (("prefill", 1), ("decode", 0))
    ]
    for solve in (allocate, allocate_greedy):
        answer = solve(_request([roomy, *pair, holder], 14, tenants=tenants))
        assert answer.replicas["batch/agg"] == 7 and answer.replicas["chat-b/decode"] == 0


def test_a_guarantee_does_not_evict_for_headroom() -> None:
    tenants = {"high": TenantLimits(priority=100.0, guaranteed_gpus={"h100": 6}), "low": TenantLimits(priority=1.0)}
    holder = _full_holder()
    fine = _served("chat", "ep-chat", "high", current=3, observed=2.0)
    answer = allocate(_request([fine, holder], 10, tenants=tenants))
    assert answer.replicas == {"chat/agg": 3, "batch/agg": 7}
    short = _served("chat", "ep-chat", "high", current=3, observed=3.5)
    assert allocate(_request([short, holder], 10, tenants=tenants)).replicas["chat/agg"] == 6


def test_the_gateway_sheds_only_an_endpoint_observed_short() -> None:
    # Granted 2 of the 6 replicas its agent wants for a 6 rps forecast: by the curve, 2 replicas
    # carry 2 rps. Observed serving 1.5 rps on them, nothing is shed; observed at 3 rps, the
    # excess over the curve's capacity is.
    fine = _served("chat", "ep-chat", "high", current=2, observed=1.5)
    assert endpoint_plans([fine], {"chat/agg": 2})["ep-chat"].admission_rps is None
    short = _served("chat", "ep-chat", "high", current=2, observed=3.0)
    assert endpoint_plans([short], {"chat/agg": 2})["ep-chat"].admission_rps is not None


def test_shedding_stops_only_below_the_bar_of_a_shortage() -> None:
    # Two replicas of 1 rps: shedding starts past 1.25x their capacity (2.5 rps) and, once on,
    # holds down to 0.9x (1.8 rps), so a queue the shedding drained does not lift it next round.
    between = _served("chat", "ep-chat", "high", current=2, observed=2.2)
    assert endpoint_plans([between], {"chat/agg": 2})["ep-chat"].admission_rps is None
    assert endpoint_plans([between], {"chat/agg": 2}, shedding={"ep-chat"})["ep-chat"].admission_rps is not None
    below = _served("chat", "ep-chat", "high", current=2, observed=1.7)
    assert endpoint_plans([below], {"chat/agg": 2}, shedding={"ep-chat"})["ep-chat"].admission_rps is None
    # Shedding elsewhere holds no limit here.
    assert endpoint_plans([between], {"chat/agg": 2}, shedding={"ep-other"})["ep-chat"].admission_rps is None


def test_the_bid_check_stops_winning_gpus_not_holding_them() -> None:
    # A pool holding 7 replicas whose forecast (19 rps) is far above one window's observed rate
    # (2.8 rps): the check values the bid at the observed rate, but keeps the 7 it holds — one
    # quiet window of a bursty load must not drain the pool (measured: 20.5 reversals per hour).
    pool = _pool("p", 19.0, current=7, wanted_replicas=7, observed_rps=2.8, running_replicas=7)
    checked, note = checked_bid(pool, 0.25)
    assert note is not None and checked.demand_weight < 19.0
    assert checked.wanted_replicas == 7
    assert allocate(_request([pool], 12)).replicas == {"p/agg": 7}
    # A pool holding less still cannot win more on the inflated forecast.
    small = _pool("p", 19.0, current=2, wanted_replicas=7, observed_rps=2.8, running_replicas=2)
    assert checked_bid(small, 0.25)[0].wanted_replicas == 2


def test_idle_gpus_go_to_a_higher_priority_ask_at_once_without_evidence() -> None:
    # One idle GPU; the high-priority pool asks for it on its forecast alone (not observed short),
    # the low-priority one is observed short and its curve values the GPU far more. First come,
    # or the value model, could give it to the low priority; priority decides, at once.
    tenants = {"high": TenantLimits(priority=100.0), "low": TenantLimits(priority=1.0)}
    calm = _served("chat", "ep-chat", "high", current=3, observed=2.0, wanted_replicas=4)
    busy = _served("batch", "ep-batch", "low", current=6, observed=9.0, wanted_replicas=9, curve=_curve(1.0, 9.0))
    for solve in (allocate, allocate_greedy):
        answer = solve(_request([calm, busy], 10, tenants=tenants))
        assert answer.replicas == {"chat/agg": 4, "batch/agg": 6}
        assert answer.drivers["chat/agg"] == "bid"
        assert "1 replica(s) from idle h100 GPUs at once, highest priority first" in answer.reasons["chat/agg"]


def test_a_pair_gets_its_ask_past_its_partner_on_idle_gpus() -> None:
    # A disaggregated deployment's prefill asks one more replica than the pair's min values:
    # on idle GPUs it gets it (as it would alone), although its decode partner asks nothing more.
    common = dict(deployment="d", tenant="t", endpoint="ep", gpu_type="h100", gpus_per_replica=1, max_replicas=8)
    prefill = PoolDemand(role="prefill", current_replicas=2, wanted_replicas=3, curve=_curve(1.0, 2.0, 9), **common)
    decode = PoolDemand(role="decode", current_replicas=1, wanted_replicas=1, curve=_curve(1.0, 1.0, 9), **common)
    pair = [p.model_copy(update={"pair_group": "d"}) for p in (prefill, decode)]
    for solve in (allocate, allocate_greedy):
        assert solve(_request(pair, 8)).replicas == {"d/prefill": 3, "d/decode": 1}


def test_a_lower_priority_never_takes_what_a_pool_holds_and_wants() -> None:
    # The low-priority pool is observed far short and its curve is steep; the high-priority pool's
    # curve is flat where it is (its replicas look worthless). Its replicas stay its own.
    tenants = {"high": TenantLimits(priority=100.0), "low": TenantLimits(priority=1.0)}
    flat = _served("chat", "ep-chat", "high", current=5, observed=1.0, wanted_replicas=5, curve=_curve(1.0, 1.0))
    starving = _served("batch", "ep-batch", "low", current=5, observed=12.0, wanted_replicas=12, demand_weight=12.0)
    starving = starving.model_copy(update={"curve": _curve(1.0, 12.0)})
    for solve in (allocate, allocate_greedy):
        answer = solve(_request([flat, starving], 10, tenants=tenants))
        assert answer.replicas == {"chat/agg": 5, "batch/agg": 5}
    # Without the protection's reason to exist (equal priorities), the value model trades as before.
    equal = {"high": TenantLimits(priority=1.0), "low": TenantLimits(priority=1.0)}
    assert allocate(_request([flat, starving], 10, tenants=equal)).replicas["batch/agg"] > 5


def test_a_steady_bid_gives_a_steady_grant_round_after_round() -> None:
    # Three pools contending for 10 GPUs, the same bids every round (what each holds fed back as
    # its current grant): after the first answer no grant changes again.
    tenants = {"high": TenantLimits(priority=100.0), "low": TenantLimits(priority=10.0)}
    pools = [
        _served("chat", "ep-chat", "high", current=2, observed=3.5, wanted_replicas=5),
        _served("batch", "ep-batch", "low", current=4, observed=6.0, wanted_replicas=8),
        _served("bulk", "ep-bulk", "low", current=4, observed=5.0, wanted_replicas=7),
    ]
    grants: list[dict[str, int]] = []
    for _ in range(8):
        answer = allocate(_request(pools, 10, tenants=tenants))
        grants.append(answer.replicas)
        pools = [p.model_copy(update={"current_replicas": answer.replicas[p.pool_id]}) for p in pools]
    assert all(g == grants[1] for g in grants[1:]), grants
    assert sum(grants[-1].values()) == 10


def test_a_short_pool_is_valued_at_its_proven_load_not_its_stale_bid() -> None:
    # The agent's curve was made at 2.5 rps (its last sizing): worth 100% from 3 replicas on. Its
    # pool now observes 4.5 rps with 60 requests left waiting after a 30 s window on those 3
    # replicas (1 rps each): proven 2.5 + 2 rps, 5 replicas' worth. Valued by the stale curve, a
    # 4th and 5th replica are worth nothing, and the low-priority holder keeps its GPUs.
    tenants = {"high": TenantLimits(priority=100.0), "low": TenantLimits(priority=1.0)}
    stale = _served(
        "chat", "ep-chat", "high", current=3, observed=4.5, demand_weight=2.5, curve=_curve(1.0, 2.5), backlog_rps=2.0
    )
    raised, note = valued_at_evidence(stale, need=5)
    assert raised.demand_weight == 4.5 and note is not None and "4.50 rps proven, bid at 2.50 rps" in note
    assert raised.curve[3] < 0.7 < raised.curve[4] < raised.curve[5]  # 3 replicas carry about 3 of the 4.5 rps
    for solve in (allocate, allocate_greedy):
        answer = solve(_request([stale, _full_holder()], 10, tenants=tenants))
        assert answer.replicas == {"chat/agg": 5, "batch/agg": 5}
        assert "valued at its proven load" in answer.reasons["chat/agg"]
    # Only where the proven load needs more than the pool holds, and only upwards.
    assert valued_at_evidence(stale, need=3) == (stale, None)
    assert valued_at_evidence(stale.model_copy(update={"demand_weight": 7.0}), need=5)[1] is None  # proven 6.5
