"""The default scale-down descent: a pool started above its need converges on it from above
without undershooting, so the first scale-up rarely comes (issue 10, acceptance point C).

The agent is driven with synthetic windows (helpers of tests/test_agent_weaknesses.py) and its
default options: stabilisation window, dead band, dwell between steps and near-miss memory on.
"""

from __future__ import annotations

import numpy as np
from test_agent_weaknesses import DESCENT_OFF, INPUTS, MODEL, OUTPUTS, TICK, observe, run, spec

from fleet_planner.planning import Distribution
from local_agent.agent import AgentOptions, LocalAgent
from local_agent.decide.guard import LAST_STEP, WARMUP_WAIT
from local_agent.decide.reactive import Proposal
from local_agent.models import AgentInput
from local_agent.models import DecisionReason as R


def agent(initial: int, **options) -> LocalAgent:
    deployment = spec(initial=initial, max_replicas=initial)
    return LocalAgent(deployment, dict.fromkeys(deployment.pools, MODEL), AgentOptions(**options), TICK)


def bursts(t: float, targets: dict) -> list:
    """Quiet load with a one-minute burst every five minutes; latencies always within the SLA."""
    rate = 60.0 if (t // TICK) % 10 in (8, 9) else 15.0
    return [observe("agg", t, rate, ready=targets["agg"])]


def reversals(targets: list[int], start: int) -> int:
    directions = [1 if b > a else -1 for a, b in zip([start] + targets, targets) if b != a]
    return sum(1 for a, b in zip(directions, directions[1:]) if a != b)


def test_a_pool_started_at_its_maximum_descends_under_bursts_and_never_scales_up_again() -> None:
    start = 8
    calm = [d.pools[0].target for d in run(agent(start), 0.0, 120, bursts)]  # one hour
    assert calm[-1] < start  # it does come down
    assert all(b <= a for a, b in zip(calm, calm[1:]))  # and never goes back up: no reversal
    # The descent without the new mechanisms follows the quiet windows down and is pulled back
    # up by the next burst: the reversal the descent exists to avoid.
    eager = [d.pools[0].target for d in run(agent(start, **DESCENT_OFF), 0.0, 120, bursts)]
    assert reversals(eager, start) >= 1
    assert min(calm) >= min(eager)


def test_scale_down_steps_are_a_dwell_apart() -> None:
    a = agent(8)
    decisions = run(a, 0.0, 40, lambda t, targets: [observe("agg", t, 2.0, ready=targets["agg"])])
    downs = [d.time_s for d in decisions if d.pools[0].target < d.pools[0].current]
    assert len(downs) >= 2
    assert all(b - a_ >= a.options.scale_down_dwell_s for a_, b in zip(downs, downs[1:]))


def test_a_decode_pool_steps_down_sooner_than_a_prefill_pool() -> None:
    """A disaggregated decode pool shows a smaller batch in its next window's ITL (no queue to
    drain), so its steps are ``decode_dwell_s`` apart, the prefill pool's ``scale_down_dwell_s``."""
    deployment = spec("disagg", initial=8, max_replicas=8)
    # Without the opening cut, which would take the decode pool to its need in one change.
    a = LocalAgent(deployment, dict.fromkeys(deployment.pools, MODEL), AgentOptions(opening_margin=None), TICK)

    def quiet(t: float, targets: dict) -> list:
        return [observe(role, t, 2.0, ready=targets[role]) for role in ("prefill", "decode")]

    decisions = run(a, 0.0, 60, quiet)
    steps = {
        role: [d.time_s for d in decisions for p in d.pools if p.role == role and p.target < p.current]
        for role in ("prefill", "decode")
    }
    assert a.options.decode_dwell_s is not None and a.options.decode_dwell_s < a.options.scale_down_dwell_s
    for role, dwell in (("prefill", a.options.scale_down_dwell_s), ("decode", a.options.decode_dwell_s)):
        gaps = [b - a_ for a_, b in zip(steps[role], steps[role][1:])]
        assert gaps and min(gaps) >= dwell, (role, steps[role])
    assert min(b - a_ for a_, b in zip(steps["decode"], steps["decode"][1:])) < a.options.scale_down_dwell_s


def test_a_scale_up_on_a_real_miss_is_still_immediate() -> None:
    a = agent(8)
    run(a, 0.0, 40, lambda t, targets: [observe("agg", t, 2.0, ready=targets["agg"])])
    before = a.targets()["agg"]
    assert before < 8
    miss = observe(
        "agg",
        40 * TICK,
        2.0,
        ready=before,
        ttft_ms=Distribution(count=60, mean=700, p50=650, p90=900, p99=1200),  # over the 500 ms target
    )
    decision = a.step(AgentInput(now_s=40 * TICK, observations=[miss])).decision
    assert decision.pools[0].target == before + 1 and decision.pools[0].reason == R.REACTIVE_SLA


def test_a_near_miss_stops_the_descent() -> None:
    """p90 TTFT 300 ms at 4 replicas: 3 would carry 4/3 of the load each, to first order 400 ms;
    at 2 replicas (x2) 600 ms is over the 500 ms target, so the pool stops at 2, where without
    the near-miss memory it would go on."""

    def near(t: float, targets: dict) -> list:
        ttft = Distribution(count=60, mean=200, p50=180, p90=300, p99=400)
        return [observe("agg", t, 2.0, ready=targets["agg"], ttft_ms=ttft, input_tokens=INPUTS, output_tokens=OUTPUTS)]

    guarded = [d.pools[0] for d in run(agent(4), 0.0, 60, near)]
    assert guarded[-1].target == 2 and min(p.target for p in guarded) == 2
    assert any(p.reason == R.MISS_MEMORY for p in guarded)
    plain = [d.pools[0].target for d in run(agent(4, near_miss=False), 0.0, 60, near)]
    assert min(plain) < 2


def test_ticks_without_traffic_data_do_not_pin_the_stabilisation_window() -> None:
    """The first windows carry no admission metric: they recommend nothing, so the pool still
    descends within minutes instead of a whole window later."""

    def late(t: float, targets: dict) -> list:
        return [observe("agg", t, None if t < 3 * TICK else 2.0, ready=targets["agg"])]

    a = agent(8)
    targets = [d.pools[0].target for d in run(a, 0.0, 20, late)]
    assert a.options.stabilization_window_s > 20 * TICK
    assert targets[-1] < 8


def test_no_scale_down_before_the_warm_up_windows() -> None:
    """The model says a light load allows fewer replicas from the first window; the agent waits
    until it has seen ``warmup_windows`` windows of traffic, and only then descends."""

    def light(t: float, targets: dict) -> list:
        return [observe("agg", t, 2.0, ready=targets["agg"])]

    eager = run(agent(8, warmup_windows=0, warmup_until_sized=False), 0.0, 12, light)
    assert eager[0].pools[0].target < 8  # without the warm-up: down on the first window
    warm = agent(8, warmup_until_sized=False)  # (the next test adds the wait for a new sizing)
    decisions = run(warm, 0.0, 12, light)
    first_down = next(i for i, d in enumerate(decisions) if d.pools[0].target < 8)
    assert first_down == warm.options.warmup_windows - 1  # the window that completes the warm-up
    assert all("warming up" in d.pools[0].detail for d in decisions[:first_down])


def test_the_first_descent_waits_for_a_forecast_sized_after_it_was_found_safe() -> None:
    """The sizing in force when the warm-up ends was made from the first window; the first step
    down waits for the next one (a throughput interval later), then goes as before."""

    def light(t: float, targets: dict) -> list:
        return [observe("agg", t, 2.0, ready=targets["agg"])]

    a = agent(8)
    decisions = run(a, 0.0, 20, light)
    first_down = next(i for i, d in enumerate(decisions) if d.pools[0].target < 8)
    warm = a.options.warmup_windows - 1  # the tick the warm-up ends: safe, but sized at 0 s
    interval = round(a.options.throughput_interval_s / TICK)
    assert first_down == interval > warm  # the first sizing after it, not the warm-up's end
    waiting = [d.pools[0].detail for d in decisions[warm:first_down]]
    assert waiting and all("waiting for a forecast sized after it" in w for w in waiting)
    undelayed = run(agent(8, warmup_until_sized=False), 0.0, 20, light)
    assert next(i for i, d in enumerate(undelayed) if d.pools[0].target < 8) == warm
    assert decisions[first_down].pools[0].target == undelayed[warm].pools[0].target  # the same step


def test_the_descent_halves_the_gap_to_the_windows_recommendation() -> None:
    """A light load from the start: every recommendation of the window is the minimum, so each
    step goes half the way there (at least one replica) — fewer changes than one replica per
    step, the same end point, never below it."""

    def light(t: float, targets: dict) -> list:
        return [observe("agg", t, 2.0, ready=targets["agg"])]

    geometric = [d.pools[0].target for d in run(agent(10), 0.0, 80, light)]
    stepwise = [d.pools[0].target for d in run(agent(10, scale_down_gap_fraction=0.0), 0.0, 80, light)]
    end = geometric[-1]
    assert end == stepwise[-1] < 10
    steps = [(a, b) for a, b in zip([10] + geometric, geometric) if b != a]
    assert all(b < a for a, b in steps)  # only down
    assert steps[0][0] - steps[0][1] > 1  # a first step of more than one replica
    for a, b in steps:  # at most half the gap, rounded up; a gap of two in one change
        assert b == end if a - end <= LAST_STEP else a - b <= -(-(a - end) // 2)
    changes = sum(a != b for a, b in zip(stepwise, stepwise[1:]))
    assert len(steps) < changes


def test_a_gap_of_two_goes_in_one_change_unless_the_endpoint_is_shared_and_the_pool_small() -> None:
    """Halving a gap of two replicas is two changes and a dwell for one replica the window vouched
    for throughout; a deployment sharing its endpoint takes them one at a time unless the pool is
    at least three times the gap (a gateway balancing by load moves each step's traffic onto its
    siblings, and a third of a pool's replicas at once pushed a sibling past its SLA)."""

    def steps(initial: int, rps: float, *, shared: bool) -> list[tuple[int, int]]:
        def load(t: float, targets: dict) -> list:
            return [observe("agg", t, rps, ready=targets["agg"], endpoint_admitted=round(rps * TICK))]

        a = agent(initial)
        if shared:
            a.endpoint_share = 1.0  # the whole endpoint's traffic, so the same load; only sharing differs
        decisions = run(a, 0.0, 60, load)
        return [(d.pools[0].current, d.pools[0].target) for d in decisions if d.pools[0].target != d.pools[0].current]

    assert steps(3, 2.0, shared=False) == [(3, 1)]
    assert steps(3, 2.0, shared=True) == [(3, 2), (2, 1)]
    assert steps(8, 30.0, shared=False) == [(8, 5), (5, 3)]
    assert steps(8, 30.0, shared=True) == [(8, 5), (5, 4), (4, 3)]  # 5 is under three times the gap
    assert steps(8, 50.0, shared=False) == steps(8, 50.0, shared=True) == [(8, 6), (6, 4)]


def test_the_entry_pools_warm_up_waits_for_the_ttft_correction() -> None:
    """Windows too thin to teach the TTFT correction (fewer requests with a first token than it
    needs): the warm-up's windows are done, but the entry pool waits — at most ``WARMUP_WAIT``
    warm-ups — because "safe" would be the uncorrected profile's word alone."""
    thin = Distribution(count=5, mean=120, p50=100, p90=200, p99=300)

    def light(t: float, targets: dict) -> list:
        return [observe("agg", t, 2.0, ready=targets["agg"], ttft_ms=thin)]

    def taught(t: float, targets: dict) -> list:
        return [observe("agg", t, 2.0, ready=targets["agg"])]  # 60 first tokens per window

    def first_down(a: LocalAgent, make) -> int:
        return next(i for i, d in enumerate(run(a, 0.0, 40, make)) if d.pools[0].target < 8)

    waiting = agent(8, warmup_until_sized=False)
    warmup = waiting.options.warmup_windows
    assert first_down(agent(8, warmup_until_corrected=False, warmup_until_sized=False), light) == warmup - 1
    assert first_down(waiting, light) == WARMUP_WAIT * warmup - 1
    assert not waiting.sizer.ttft.trusted
    # Windows that do teach it put the correction in force with the warm-up's last window.
    assert first_down(agent(8, warmup_until_sized=False), taught) == warmup - 1


def test_a_scale_down_is_checked_at_the_recent_peak_not_only_this_window() -> None:
    """A busy window a minute ago, a quiet one now: the survivors of a scale-down must carry the
    busy window's rate (the forecast, sized minutes ago, may not have seen it), not this one's."""

    def refusal_rate(check_recent_peak: bool) -> float:
        a = agent(8, check_recent_peak=check_recent_peak, warmup_until_sized=False)
        rates = [40.0] * 20 + [150.0, 40.0]
        run(a, 0.0, len(rates), lambda t, targets: [observe("agg", t, rates[int(t // TICK)], ready=targets["agg"])])
        now = len(rates) * TICK
        current = a.targets()["agg"]
        window = observe("agg", now, 40.0, ready=current)
        a.intake.observe(now, {"agg": window}, None)
        proposal, _ = a.guard.check(
            "agg",
            now + 3600.0,  # past every grace period and dwell
            window,
            current,
            Proposal(current - 1, R.REACTIVE_DOWN, ""),
            0,
            a.targets(),
            40.0,
            a.intake.smoothed_rate(),
            a.intake.lengths(),
        )
        assert proposal.reason == R.CONSOLIDATION_REFUSED, proposal
        return float(proposal.detail.split("absorb ")[1].split()[0])

    assert refusal_rate(True) >= 150.0
    assert refusal_rate(False) < 150.0


def _disagg(initial: int, **options) -> LocalAgent:
    deployment = spec("disagg", initial=initial, max_replicas=initial)
    return LocalAgent(deployment, dict.fromkeys(deployment.pools, MODEL), AgentOptions(**options), TICK)


def _changes(decisions: list, role: str) -> list[tuple[float, int, int, R]]:
    return [
        (d.time_s, p.current, p.target, p.reason)
        for d in decisions
        for p in d.pools
        if p.role == role and p.target != p.current
    ]


def test_a_decode_pool_far_above_its_need_is_cut_once_while_warming_up() -> None:
    """Started at its maximum, the decode pool goes down in one change on its second window (to
    what carries three times the load), the prefill pool waits out its warm-up (its TTFT model is
    not yet corrected), and the decode pool's next step waits for a forecast sized after the cut
    (the first sizing was the first window's, the next one throughput interval later)."""

    def steady(t: float, targets: dict) -> list:
        return [observe(role, t, 60.0, ready=targets[role]) for role in ("prefill", "decode")]

    a = _disagg(8, warmup_until_sized=False)  # (its first step otherwise waits for a new sizing)
    decisions = run(a, 0.0, 40, steady)
    decode, prefill = _changes(decisions, "decode"), _changes(decisions, "prefill")
    cut_s, before, cut, reason = decode[0]
    assert reason == R.OPENING_CUT and cut_s == TICK and before == 8
    assert 1 < cut < 8 - 8 // 2  # further than the half-gap step would have gone, not to the minimum
    assert prefill[0][0] == (a.options.warmup_windows - 1) * TICK and prefill[0][3] != R.OPENING_CUT
    assert decode[1][0] >= a.options.throughput_interval_s and decode[1][3] != R.OPENING_CUT
    waiting = [d.time_s for d in decisions for p in d.pools if p.role == "decode" and "next forecast" in p.detail]
    assert waiting and all(cut_s < t < decode[1][0] for t in waiting)
    # Without the cut, the decode pool's first step waits for the warm-up and goes half the way.
    plain = _changes(run(_disagg(8, opening_margin=None, warmup_until_sized=False), 0.0, 40, steady), "decode")
    assert plain[0][0] == (a.options.warmup_windows - 1) * TICK and plain[0][2] > cut


def test_the_opening_cut_keeps_what_a_wider_margin_needs_and_cuts_nothing_near_the_need() -> None:
    """A wider margin cuts less; a load the pool's count is not far above is not cut at all."""

    def first_cut(rate: float, margin: float) -> int:
        def make(t: float, targets: dict) -> list:
            return [observe(role, t, rate, ready=targets[role]) for role in ("prefill", "decode")]

        decisions = run(_disagg(8, opening_margin=margin), 0.0, 3, make)
        cuts = [target for _, _, target, reason in _changes(decisions, "decode") if reason == R.OPENING_CUT]
        return cuts[0] if cuts else 8

    narrow, default, wide = first_cut(60.0, 0.5), first_cut(60.0, 2.0), first_cut(60.0, 6.0)
    assert narrow <= default <= wide and narrow < wide
    assert first_cut(150.0, 2.0) == 8


def _rising(level_after: float):
    """15 req/s (+-20%) for half an hour, then ``level_after`` (+-20%): a step the descent did not see."""
    rng = np.random.default_rng(0)

    def load(t: float, targets: dict) -> list:
        level = 15.0 if t < 1800 else level_after
        return [observe("agg", t, level * (1 + 0.2 * rng.uniform(-1, 1)), ready=targets["agg"])]

    return load


def test_the_way_back_up_after_a_descent_is_taken_when_needed_on_average_not_for_a_one_in_ten_load() -> None:
    """A scale-up after a scale-down is a direction reversal. Where the counts meet the target on
    average over the forecast's uncertainty, the forecast's upper quantile alone (a one-in-ten load)
    does not take the pool back up (`reversing_up_at: expected`, the default); a rise the average
    needs still does, and so does an observed miss (the reactive loop:
    test_a_scale_up_on_a_real_miss_is_still_immediate)."""
    eager = run(agent(8, reversing_up_at="upper"), 0.0, 240, _rising(33.0))
    calm = run(agent(8), 0.0, 240, _rising(33.0))
    eager_targets = [d.pools[0].target for d in eager]
    calm_targets = [d.pools[0].target for d in calm]
    assert reversals(eager_targets, 8) == 1  # down to its need, then up for the upper quantile
    assert reversals(calm_targets, 8) == 0 and calm_targets[-1] == min(calm_targets)
    assert any("meet the target on average" in d.pools[0].detail for d in calm)
    # A rise the forecast's average needs takes the pool back up, as before.
    steep = [d.pools[0] for d in run(agent(8), 0.0, 240, _rising(40.0))]
    assert any(p.reason == R.PREDICTIVE_UP and p.target > p.current for p in steep)


def test_without_a_reactive_loop_the_way_back_up_stays_at_the_upper_quantile() -> None:
    """`mode: throughput` has no reactive loop to catch a miss, so the forecast's upper rules there."""
    for mode, held in (("both", True), ("throughput", False)):
        a = agent(8, mode=mode)
        run(a, 0.0, 60, _rising(15.0))  # sized on steady traffic
        a.guard.pools["agg"].last_direction = -1  # as after a scale-down
        assert a.sizer.meets_on_average(a.targets())
        assert a._reversal_not_needed("agg") is held
