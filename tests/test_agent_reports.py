"""What an agent bids: its capacity model's curves and its own sizing, not its current target."""

from __future__ import annotations

from local_agent.models import DecisionReason, PoolDecision
from local_agent.planner_link.reports import bid_curves, pool_report


def _decision(**kw: object) -> PoolDecision:
    fields: dict[str, object] = dict(
        role="agg",
        current=2,
        wanted=5,
        target=5,
        reason=DecisionReason.REACTIVE_SLA,
        curve=[0.0, 0.0, 0.6, 0.99, 1.0],
        curve_low=[0.0, 0.0, 0.2, 0.9, 0.99],
        replica_capacity_rps=8.0,
    )
    fields.update(kw)
    return PoolDecision(**fields)


def test_bid_is_the_model_curves_whatever_the_target() -> None:
    # A starved agent's reactive loop pushes its target to the maximum; the bid must still say
    # that 3 replicas carry the load (a ramp to the target would value them at 3/5).
    for target in (3, 5, 12):
        mean, upper = bid_curves(_decision(target=target, wanted=target))
        assert mean == [0.0, 0.0, 0.6, 0.99, 1.0] and upper == [0.0, 0.0, 0.2, 0.9, 0.99]


def test_report_carries_curves_and_wanted_replicas() -> None:
    report = pool_report(_decision(), ready=2, starting=1)
    assert report.curve[3] == 0.99 and report.pessimistic_curve[3] == 0.9
    assert report.wanted_replicas == 5 and report.in_use == 3 and report.replica_capacity_rps == 8.0
    # Not sized yet: no bid at all (the planner holds the pool), and no wanted count either.
    empty = pool_report(_decision(curve=[], curve_low=[]), ready=1)
    assert empty.curve == [] and empty.pessimistic_curve == [] and empty.wanted_replicas is None
    # ... unless it has no replica and asks for some (requests wait with none): a step at its ask.
    step = pool_report(_decision(curve=[], curve_low=[], current=0, wanted=2, target=2), ready=0)
    assert step.curve == [0.0, 0.0, 1.0] == step.pessimistic_curve and step.wanted_replicas == 2
    # The step sits at the target, within the pool's bounds (an ask past the maximum is worth
    # nothing at any count the planner may grant).
    beyond = pool_report(_decision(curve=[], curve_low=[], current=0, wanted=9, target=2), ready=0)
    assert beyond.curve == [0.0, 0.0, 1.0]
    held = pool_report(_decision(curve=[], curve_low=[], current=0, wanted=0, target=0), ready=0)
    assert held.curve == [] and held.wanted_replicas is None
    # ... or its traffic stopped before it was ever sized: a step at its minimum (it releases).
    idle = _decision(curve=[], curve_low=[], current=1, wanted=0, target=0, reason=DecisionReason.IDLE_TO_MIN)
    assert pool_report(idle, ready=1).curve == [1.0] and pool_report(idle, ready=1).wanted_replicas == 0
    # Each pool reports its own queue (the planner counts it as load that pool has not carried).
    assert pool_report(_decision(queued_requests=7), ready=2).queued_requests == 7
    assert report.queued_requests is None  # not observed is not "nothing waiting"
    # A mismatched pessimistic curve is replaced by the mean one rather than rejected.
    assert bid_curves(_decision(curve_low=[0.0]))[1] == [0.0, 0.0, 0.6, 0.99, 1.0]


def test_each_pool_reports_its_own_queue() -> None:
    """Prompts waiting for a prefill are the prefill pool's backlog, not the decode pool's."""
    from test_agent_weaknesses import agent, observe, pool, run, spec

    a = agent(spec("disagg"))
    (decision,) = run(
        a,
        0.0,
        1,
        lambda t, targets: [
            observe("prefill", t, 10.0, ready=1, queued_requests=12),
            observe("decode", t, 10.0, ready=1, queued_requests=0),
        ],
    )
    assert pool(decision, "prefill").queued_requests == 12 and pool(decision, "decode").queued_requests == 0
    assert pool_report(pool(decision, "prefill"), ready=1).queued_requests == 12
