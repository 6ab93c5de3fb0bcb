"""The split of a shared endpoint among its deployments: cheapest first, within maxima and the
inventory, minima used first, stable on a steady load (``global_planner.allocation.split``), and
wired through the planner state to the agents' ``endpoint_share`` and routing."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from fleet_planner.contract.models import AgentReport, Forecast, PoolRegistration, PoolReport, Registration
from global_planner.allocation.split import SplitMember, SplitPool, SplitRule, cheapest_plan, decide
from global_planner.policy_file import TenantPolicy
from global_planner.service.audit import explain
from global_planner.service.state import PlannerState


def _agg(name: str, gpu: str, rps: float | None, *, lo: int = 0, hi: int = 8, gpr: int = 1, share: float = 0.5):
    pool = SplitPool(
        role="agg", gpu_type=gpu, gpus_per_replica=gpr, min_replicas=lo, max_replicas=hi, replica_capacity_rps=rps
    )
    return SplitMember(deployment=name, pools=[pool], share=share)


def _disagg(name: str, gpu: str, prefill_rps: float, decode_rps: float, *, hi: int = 8, share: float = 0.5):
    pools = [
        SplitPool(
            role=role, gpu_type=gpu, gpus_per_replica=1, min_replicas=1, max_replicas=hi, replica_capacity_rps=rps
        )
        for role, rps in (("prefill", prefill_rps), ("decode", decode_rps))
    ]
    return SplitMember(deployment=name, pools=pools, share=share)


PLENTY = {"h200": 64, "a100": 64}


def test_the_cheapest_requests_per_gpu_carry_the_rate() -> None:
    # h200: 10 rps per GPU, a100: 4 rps per GPU; 30 rps fit on three H200s.
    plan = cheapest_plan([_agg("h", "h200", 10.0), _agg("a", "a100", 4.0)], 30.0, PLENTY)
    assert plan.replicas == {"h": {"agg": 3}, "a": {"agg": 0}} and plan.gpus == 3 and plan.unserved_rps == 0
    assert plan.shares() == {"h": 1.0, "a": 0.0}


def test_a_maximum_is_respected_and_the_rest_goes_to_the_next_cheapest() -> None:
    plan = cheapest_plan([_agg("h", "h200", 10.0, hi=2), _agg("a", "a100", 4.0)], 30.0, PLENTY)
    assert plan.replicas == {"h": {"agg": 2}, "a": {"agg": 3}} and plan.gpus == 5
    assert plan.shares() == pytest.approx({"h": 20 / 32, "a": 12 / 32})


def test_no_load_is_planned_onto_gpus_the_inventory_cannot_grant() -> None:
    plan = cheapest_plan([_agg("h", "h200", 10.0), _agg("a", "a100", 4.0)], 30.0, {"h200": 1, "a100": 64})
    assert plan.replicas == {"h": {"agg": 1}, "a": {"agg": 5}}
    short = cheapest_plan([_agg("h", "h200", 10.0), _agg("a", "a100", 4.0)], 30.0, {"h200": 1, "a100": 2})
    assert short.replicas == {"h": {"agg": 1}, "a": {"agg": 2}} and short.unserved_rps == pytest.approx(12.0)


def test_two_deployments_of_one_gpu_type_share_its_free_gpus() -> None:
    members = [_agg("big", "h200", 10.0, gpr=2), _agg("small", "h200", 4.0)]
    plan = cheapest_plan(members, 40.0, {"h200": 5})
    used = sum(n * gpr for (n, gpr) in ((plan.replicas["big"]["agg"], 2), (plan.replicas["small"]["agg"], 1)))
    assert used <= 5 and plan.capacity_rps["big"] + plan.capacity_rps["small"] == pytest.approx(24.0)


def test_minimum_replicas_are_paid_anyway_so_their_capacity_is_used_first() -> None:
    # The a100 deployment must run 2 replicas (8 rps) whatever the split: only 2 rps go to h200.
    plan = cheapest_plan([_agg("h", "h200", 10.0), _agg("a", "a100", 4.0, lo=2)], 10.0, PLENTY)
    assert plan.replicas == {"h": {"agg": 1}, "a": {"agg": 2}} and plan.gpus == 3
    assert plan.shares() == pytest.approx({"h": 10 / 18, "a": 8 / 18})


def test_a_disaggregated_deployment_pays_for_both_its_pools() -> None:
    # Per GPU the h200 pools are faster (12 and 8 rps) but a request needs both: 1/12 + 1/8 GPU per
    # rps = 4.8 rps per GPU, less than the a100's 6. The minima (one of each) are paid anyway.
    members = [_disagg("h", "h200", 12.0, 8.0), _agg("a", "a100", 6.0)]
    plan = cheapest_plan(members, 44.0, PLENTY)
    assert plan.replicas["h"] == {"prefill": 1, "decode": 1} and plan.replicas["a"] == {"agg": 6}
    assert plan.gpus == 8


def test_the_bottleneck_pool_of_a_disaggregated_deployment_sets_its_capacity() -> None:
    plan = cheapest_plan([_disagg("h", "h200", 12.0, 8.0), _agg("a", "a100", 1.0)], 24.0, PLENTY)
    assert plan.replicas["h"] == {"prefill": 2, "decode": 3} and plan.capacity_rps["h"] == 24.0


def test_a_steady_load_keeps_a_steady_split() -> None:
    members = [_agg("h", "h200", 10.0, share=0.5), _agg("a", "a100", 4.0, share=0.5)]
    first = decide(members, 30.0, PLENTY, since_move_s=float("inf"))
    assert first.moved and first.shares == {"h": 1.0, "a": 0.0}
    moved = [_agg("h", "h200", 10.0, share=1.0), _agg("a", "a100", 4.0, share=0.0)]
    for rate in (30.0, 29.0, 31.0, 30.5, 28.0) * 4:  # a steady load with noise, long after the move
        again = decide(moved, rate, PLENTY, since_move_s=3600.0)
        assert not again.moved and again.shares == {"h": 1.0, "a": 0.0}, again.reason


def test_a_rate_wandering_where_the_cheap_type_is_full_does_not_flap() -> None:
    # Three h200 GPUs carry 30 rps; the load wanders around it within the serve margin (5%).
    budget = {"h200": 3, "a100": 64}
    full = [_agg("h", "h200", 10.0, share=1.0), _agg("a", "a100", 4.0, share=0.0)]
    for rate in (29.0, 30.5, 29.5, 31.0, 28.0, 30.0) * 3:
        assert not decide(full, rate, budget, since_move_s=1e9).moved
    spread = decide(full, 34.0, budget, since_move_s=0.0)  # clearly past it: moves at once
    assert spread.moved and spread.shares["a"] > 0
    after = [_agg("h", "h200", 10.0, share=spread.shares["h"]), _agg("a", "a100", 4.0, share=spread.shares["a"])]
    for rate in (34.0, 33.0, 35.0, 34.5):
        assert not decide(after, rate, budget, since_move_s=1e9).moved


def test_a_move_must_save_a_replica_and_a_clear_share_of_the_gpus() -> None:
    # Planned for 21 rps (20 + 5%): keeping 50/50 costs two H200s and three A100s, the cheapest
    # plan three H200s.
    members = [_agg("h", "h200", 10.0), _agg("a", "a100", 4.0)]
    assert decide(members, 20.0, PLENTY, since_move_s=1e9).moved
    assert not decide(members, 20.0, PLENTY, since_move_s=1e9, rule=SplitRule(min_saving=0.6)).moved
    # Nearly equal costs: the current split stays (saving less than one replica's GPUs).
    even = [_agg("x", "h200", 10.0), _agg("y", "a100", 9.5)]
    kept = decide(even, 18.0, PLENTY, since_move_s=1e9)
    assert not kept.moved and kept.shares == {"x": 0.5, "y": 0.5} and "not worth it" in kept.reason
    # A split within min_shift (5 points) of the cheapest is the cheapest: telling agents is not worth it.
    close = [_agg("h", "h200", 10.0, share=0.97), _agg("a", "a100", 4.0, share=0.03)]
    assert "is the current one" in decide(close, 30.0, PLENTY, since_move_s=1e9).reason


def test_a_saving_move_waits_for_the_dwell_but_serving_more_does_not() -> None:
    members = [_agg("h", "h200", 10.0), _agg("a", "a100", 4.0)]
    waited = decide(members, 20.0, PLENTY, since_move_s=60.0)
    assert not waited.moved and "ago" in waited.reason
    # All on h200 and h200 now has one GPU free: the current split leaves 20 rps unserved.
    stuck = [_agg("h", "h200", 10.0, share=1.0), _agg("a", "a100", 4.0, share=0.0)]
    urgent = decide(stuck, 30.0, {"h200": 1, "a100": 64}, since_move_s=60.0)
    assert urgent.moved and urgent.shares == pytest.approx({"h": 10 / 34, "a": 24 / 34}) and "serve" in urgent.reason


def test_unknown_or_missing_capacities_keep_the_current_split() -> None:
    members = [_agg("h", "h200", None, share=0.7), _agg("a", "a100", 4.0, share=0.3)]
    kept = decide(members, 30.0, PLENTY, since_move_s=1e9)
    assert not kept.moved and kept.shares == {"h": 0.7, "a": 0.3} and "no rate or capacity" in kept.reason
    for rate in (None, 0.0):
        assert not decide([_agg("h", "h200", 10.0), _agg("a", "a100", 4.0)], rate, PLENTY, since_move_s=1e9).moved
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValidationError):
            SplitMember(
                deployment="x",
                share=0.5,
                pools=[
                    SplitPool(
                        role="agg",
                        gpu_type="h200",
                        gpus_per_replica=1,
                        min_replicas=0,
                        max_replicas=4,
                        replica_capacity_rps=bad,
                    )
                ],
            )


# ------------------------------------------------------------------ through the planner state


def _register(state: PlannerState, name: str, gpu: str, capacity_rps: float, tenant: str = "acme") -> None:
    pool = PoolRegistration(role="agg", gpu_type=gpu, gpus_per_replica=1, min_replicas=0, max_replicas=8)
    registration = Registration(
        deployment=name, tenant=tenant, endpoint="chat", pools=[pool], capacity_rps=capacity_rps
    )
    state.register(registration, f"s-{name}", 0.0)


def _report(state: PlannerState, name: str, seq: int, now: float, replica_rps: float, upper: float):
    curve = [min(1.0, k / 3) for k in range(9)]
    # No wanted_replicas: the split prices the pool at its nominal capacity (no sizing to calibrate by).
    pool = PoolReport(role="agg", ready=1, curve=curve, replica_capacity_rps=replica_rps)
    report = AgentReport(
        deployment=name,
        session_id=f"s-{name}",
        sequence=seq,
        forecast=Forecast(mean_rps=upper * 0.8, upper_rps=upper),
        pools=[pool],
    )
    return state.report(report, now)


def test_the_cheaper_deployment_gets_the_larger_share_and_a_steady_load_keeps_it() -> None:
    """Two deployments of one endpoint on two GPU types: registered capacities at max scale are
    equal (50/50 at first); a100 replicas carry 3 rps, h200 ones 12 (both one GPU). Agents
    forecast their share of 30 rps (upper); the planner moves the split towards h200 (its two
    GPUs carry 24 rps, two A100s the rest), tells the agents, routes by it, and keeps it while
    the load is steady."""
    policy = TenantPolicy.model_validate(
        {"fleet": {"gpus": {"h200": 2, "a100": 8}}, "tenants": {"acme": {}}, "endpoint_split": "cost"}
    )
    state = PlannerState(policy)
    _register(state, "chat-h200", "h200", 40.0)
    _register(state, "chat-a100", "a100", 40.0)
    rates = {"chat-h200": 12.0, "chat-a100": 3.0}
    shares = dict.fromkeys(rates, 0.5)
    decisions = []
    for tick in range(1, 21):
        now = 10.0 * tick
        for name, replica_rps in rates.items():
            targets = _report(state, name, tick, now, replica_rps, 30.0 * shares[name])
            shares[name] = targets.endpoint_share
        decisions.append(state.commit(state.plan(now + 1)))
    # Planned for 30 rps + 5%: both h200 GPUs (24 rps) and three a100s (9 rps).
    assert shares == pytest.approx({"chat-h200": 24 / 33, "chat-a100": 9 / 33})
    assert state.splits.changes == {"chat": 1}, "one move, then steady"
    moved = [r for r in decisions if r.record.splits["chat"].moved]
    assert len(moved) == 1 and "save" in moved[0].record.splits["chat"].reason
    assert "split chat: chat-a100" in explain(moved[0].record)
    last = decisions[-1]
    weights = last.routing["chat"]
    assert weights["chat-h200"] > weights["chat-a100"], "the router's weights follow the split"


def test_capacity_mode_keeps_the_registered_split() -> None:
    policy = TenantPolicy.model_validate(
        {"fleet": {"gpus": {"h200": 2, "a100": 8}}, "tenants": {"acme": {}}, "endpoint_split": "capacity"}
    )
    state = PlannerState(policy)
    _register(state, "chat-h200", "h200", 30.0)
    _register(state, "chat-a100", "a100", 10.0)
    for tick in range(1, 4):
        _report(state, "chat-h200", tick, 10.0 * tick, 12.0, 18.0)
        targets = _report(state, "chat-a100", tick, 10.0 * tick, 3.0, 6.0)
        record = state.commit(state.plan(10.0 * tick + 1)).record
        assert targets.endpoint_share == pytest.approx(0.25) and record.splits == {}
    assert state.splits.changes == {}


@pytest.mark.parametrize("split", ["capacity", "cost"])
def test_a_deployment_its_policy_lets_run_less_plans_for_less_of_the_endpoint(split: str) -> None:
    """Shares are taken at the most each deployment's policy lets it run: beta may hold no A100
    (its tenant's max_gpus), so acme's H200 deployment plans for the whole endpoint, which the
    router will send it (sweep seed 31, s00: the sibling planned for its registered 10% while it
    carried all of it, and its proven load, capped at its bid, never showed it short). With an
    override halving acme's maximum instead, its share is taken at half its capacity."""

    def shares(policy_fields: dict) -> dict[str, float | None]:
        policy = TenantPolicy.model_validate(
            {"fleet": {"gpus": {"h200": 8, "a100": 8}}, "endpoint_split": split, **policy_fields}
        )
        state = PlannerState(policy)
        _register(state, "chat-h200", "h200", 30.0)
        _register(state, "chat-a100", "a100", 10.0, tenant="beta")
        return {
            name: _report(state, name, 1, 10.0, rps, 6.0).endpoint_share
            for name, rps in (("chat-h200", 12.0), ("chat-a100", 3.0))
        }

    capped = shares({"tenants": {"acme": {}, "beta": {"max_gpus": {"a100": 0}}}})
    assert capped == pytest.approx({"chat-h200": 1.0, "chat-a100": 0.0})
    halved = shares(
        {"tenants": {"acme": {}, "beta": {}}, "deployments": [{"selector": "acme/chat-h200", "max_replicas": 4}]}
    )
    assert halved == pytest.approx({"chat-h200": 0.6, "chat-a100": 0.4})
    assert shares({"tenants": {"acme": {}, "beta": {}}}) == pytest.approx({"chat-h200": 0.75, "chat-a100": 0.25})


def test_a_deployment_with_a_pool_that_may_run_no_replica_plans_for_none_of_the_endpoint() -> None:
    """A disaggregated deployment whose decode pool has max_replicas 0 can serve nothing; its agent
    cannot register a capacity of 0, so it sends none. Its sibling must still be told a share (all
    of the endpoint), not "alone": the router sends a deployment with no decode replica nothing, and
    a sibling planning for only its own traffic saw none, asked for no decode replica, and the
    endpoint was never served (sweep seed 41, s18: 0 of 1,747 requests)."""
    policy = TenantPolicy.model_validate({"fleet": {"gpus": {"h200": 8, "a100": 8}}, "tenants": {"acme": {}}})
    state = PlannerState(policy)
    _register(state, "chat-h200", "h200", 30.0)
    pools = [
        PoolRegistration(role="prefill", gpu_type="a100", gpus_per_replica=1, min_replicas=1, max_replicas=6),
        PoolRegistration(role="decode", gpu_type="a100", gpus_per_replica=1, min_replicas=0, max_replicas=0),
    ]
    state.register(Registration(deployment="chat-a100", tenant="acme", endpoint="chat", pools=pools), "s-a100", 0.0)
    targets = _report(state, "chat-h200", 1, 10.0, 12.0, 6.0)
    assert targets.endpoint_share == pytest.approx(1.0)


def test_a_restarted_planner_keeps_the_split_it_recorded() -> None:
    policy = TenantPolicy.model_validate(
        {"fleet": {"gpus": {"h200": 2, "a100": 8}}, "tenants": {"acme": {}}, "endpoint_split": "cost"}
    )
    state = PlannerState(policy)
    _register(state, "chat-h200", "h200", 40.0)
    _register(state, "chat-a100", "a100", 40.0)
    for name, replica_rps in (("chat-h200", 12.0), ("chat-a100", 3.0)):
        _report(state, name, 1, 10.0, replica_rps, 15.0)
    record = state.commit(state.plan(11.0)).record
    restarted = PlannerState(policy)
    restarted.restore(record)
    assert restarted.splits.changes == {"chat": 1}
    assert restarted.splits._chosen == {"chat": record.splits["chat"].shares}


# ------------------------------------------------------------------ the agent's side


def test_an_agent_forecasts_its_endpoint_and_plans_for_a_new_share_at_once() -> None:
    """The predictor sees the endpoint's rate and the forecast is scaled by the share when the
    agent sizes: a new share is planned for at the next step, with no step in the forecast's
    history (which would lag the mean and widen the upper quantile for an hour)."""
    from test_agent import TICK, agent, observe

    from local_agent.models import AgentInput

    a = agent(predictor="moving_average")
    a.endpoint_share = 0.5

    def tick(i: int):
        window = observe("agg", i * TICK, 10.0, ready=a.targets()["agg"])
        window = window.model_copy(update={"endpoint_admitted": round(20.0 * TICK)})
        return a.step(AgentInput(now_s=i * TICK, observations=[window])).decision

    for i in range(20):
        tick(i)
    assert a.sizer.forecast is not None and a.sizer.forecast.mean == pytest.approx(10.0)
    a.endpoint_share = 1.0
    decision = tick(20)  # 60 s after the last throughput run: sized again at once
    assert decision.loop == "throughput" and decision.observed_rps == pytest.approx(20.0)
    assert a.sizer.forecast.mean == pytest.approx(20.0) and a.sizer.forecast.upper == pytest.approx(20.0)


def _sized_pair(a100: tuple[float, float, int]) -> PlannerState:
    """A cost-split planner whose H200 deployment reported 12 rps per replica, a 12 rps forecast and
    4 replicas wanted, and whose A100 one reported ``a100`` (rps per replica, forecast, wanted)."""
    policy = TenantPolicy.model_validate(
        {"fleet": {"gpus": {"h200": 8, "a100": 8}}, "tenants": {"acme": {}}, "endpoint_split": "cost"}
    )
    state = PlannerState(policy)
    _register(state, "chat-h200", "h200", 40.0)
    _register(state, "chat-a100", "a100", 40.0)
    for name, (replica_rps, upper, wanted) in (("chat-h200", (12.0, 12.0, 4)), ("chat-a100", a100)):
        pool = PoolReport(
            role="agg", ready=1, curve=[0.0, 1.0], replica_capacity_rps=replica_rps, wanted_replicas=wanted
        )
        forecast = Forecast(mean_rps=upper, upper_rps=upper)
        report = AgentReport(deployment=name, session_id=f"s-{name}", sequence=1, forecast=forecast, pools=[pool])
        state.report(report, 10.0)
    return state


def test_the_split_prices_pools_by_what_their_agents_size_for() -> None:
    """The nominal per-replica capacity is the ITL limit's throughput; an agent that wants four
    replicas for 12 rps counts on 3 rps each, and the split prices its pool so. A deployment with
    no load of its own (share 0) is scaled by the endpoint's lowest ratio."""
    from global_planner.service.splits import _smooth_ratios, _split_members

    state = _sized_pair((4.0, 0.0, 0))
    ratios: dict[tuple[str, str], float] = {}
    _smooth_ratios(state.splits._members("chat"), ratios)
    members = _split_members(state.splits._members("chat"), {"chat-a100": 0.0, "chat-h200": 1.0}, ratios, state.policy)
    capacity = {m.deployment: m.pools[0].replica_capacity_rps for m in members}
    assert capacity == pytest.approx({"chat-h200": 3.0, "chat-a100": 1.0})
    # One report moves the remembered ratio by a tenth: a share's effect on sizing is damped.
    ratios[("chat-h200", "agg")] = 0.5
    _smooth_ratios(state.splits._members("chat"), ratios)
    members = _split_members(state.splits._members("chat"), {"chat-a100": 0.0, "chat-h200": 1.0}, ratios, state.policy)
    assert members[1].pools[0].replica_capacity_rps == pytest.approx(12.0 * 0.475)


def test_a_share_of_zero_reaches_the_agent_as_zero_not_as_alone() -> None:
    """A deployment the cost split does not need is told 0 over the wire; None still means alone."""
    from fleet_planner.contract import convert
    from fleet_planner.contract.models import Targets

    for share in (0.0, 0.25, None):
        sent = Targets(deployment="d", planner_time_s=1.0, endpoint_share=share)
        assert convert.targets_from_pb(convert.targets_to_pb(sent), "d").endpoint_share == share


def test_a_settled_round_changes_the_capacity_ratios_only_when_committed() -> None:
    """Settling a round (before it is persisted) leaves the planner's state as it was; the
    smoothed capacity ratios it computed take effect at commit, like everything else."""
    state = _sized_pair((4.0, 8.0, 4))
    round_ = state.settle(state.begin_round(20.0), None, 20.0)
    assert state.splits._capacity_ratio == {}
    assert round_.capacity_ratios == pytest.approx({("chat-h200", "agg"): 0.25, ("chat-a100", "agg"): 0.5})
    state.commit(round_)
    assert state.splits._capacity_ratio == pytest.approx(round_.capacity_ratios)
