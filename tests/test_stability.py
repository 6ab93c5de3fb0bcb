"""Stable grants: cost of change and hysteresis, the bid check, drivers, a readable CP-SAT model."""

from __future__ import annotations

import math

from ortools.sat.python import cp_model

from fleet_planner.contract.models import (
    AgentReport,
    Forecast,
    Observed,
    PoolRegistration,
    PoolReport,
    Registration,
)
from global_planner.allocation import AllocationRequest, PoolDemand, Stability, TenantLimits, allocate, allocate_greedy
from global_planner.allocation.problem import build_problem
from global_planner.allocation.solver import _Model
from global_planner.allocation.stability import checked_bid
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
    # a bid for more is followed at once, whatever runs
    more = _pool("p", 6.0, current=5, wanted_replicas=7, running_replicas=3)
    assert allocate(_request([more], 12)).replicas == {"p/agg": 7}
