"""The local agent's core behaviour: predictive sizing ahead of a ramp, step caps, grace period,
limits, advisory mode, demand curves — and the replay acceptance test that a ``local`` run never
peeks at the trace's future and sees observations only after the configured delay."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_agent_weaknesses import DESCENT_OFF, INPUTS, MODEL, OUTPUTS, PROFILE, TICK, spec

from fleet_planner.planning import DeploymentSpec, Distribution, FleetObservation, PoolObservation
from fleet_sim.adapters.local import LocalAgentsPolicy
from fleet_sim.policies import make_policy
from fleet_sim.runner import FleetSimulation
from fleet_sim.scenario import parse_scenario
from fleet_sim.workload import build_workload
from local_agent.agent import AgentOptions, LocalAgent
from local_agent.models import AgentEffects, AgentInput, RuntimeLimits
from local_agent.models import DecisionReason as R

STARTUP = 60.0  # the pools' start-up in ``spec``


def agent(deployment: DeploymentSpec | None = None, **options) -> LocalAgent:
    deployment = deployment or spec()
    options.setdefault("predictor", "constant")
    # These tests isolate one mechanism each: the scale-down descent (stabilisation window, dead
    # band, dwell between steps, near-miss memory) is off unless a test turns it on; the defaults
    # together are tested in tests/test_agent_descent.py.
    for key, value in DESCENT_OFF.items():
        options.setdefault(key, value)
    return LocalAgent(deployment, dict.fromkeys(deployment.pools, MODEL), AgentOptions(**options), TICK)


def observe(
    role: str, t: float, rps: float, *, ready: int, starting: int = 0, itl_p90: float = 10.0
) -> PoolObservation:
    """A window with ``rps`` admitted and latencies (TTFT well within the SLA, ITL p90 as given)."""
    admitted = round(rps * TICK)
    fields: dict = dict(
        deployment="d",
        role=role,
        time_s=t,
        window_s=TICK,
        ready=ready,
        starting=starting,
        draining=0,
        pending=0,
        admitted=admitted,
    )
    if admitted:
        fields.update(
            input_tokens=INPUTS,
            output_tokens=OUTPUTS,
            ttft_ms=Distribution(count=admitted, mean=120, p50=100, p90=200, p99=300),
            itl_ms=Distribution(count=admitted, mean=8, p50=8, p90=itl_p90, p99=itl_p90 + 2),
        )
    return PoolObservation(**fields)


def step(a: LocalAgent, t: float, rps: float, **kwargs):
    obs = [observe(role, t, rps, ready=a.targets()[role], **kwargs) for role in a.spec.pools]
    return a.step(AgentInput(now_s=t, observations=obs)).decision


def agg(decision):
    return next(p for p in decision.pools if p.role == "agg")


def needed(a: LocalAgent, rps: float) -> int:
    return a.sizer.sized(a.sizer.curves_at(rps, a.intake.lengths()))["agg"]


# ---- predictive sizing ----------------------------------------------------------------------
def test_predictive_sizing_scales_up_before_the_ramp_peak() -> None:
    # The trend-aware predictor at its upper quantile (the default moving average at its median
    # trails a steady ramp by design: docs/local-agent.md, limits).
    a = agent(predictor="kalman", forecast_quantile=0.9)
    rates = [5.0 + 4.0 * i for i in range(30)]  # 5 -> 121 req/s over 15 minutes, peak at the end
    targets = [agg(step(a, i * TICK, rate)).target for i, rate in enumerate(rates)]
    ahead = round(STARTUP / TICK)
    # From the first trend-aware throughput run on, the target already covers the load a replica
    # started now would meet when it is ready.
    first = round(a.options.throughput_interval_s / TICK)
    for i in range(first, len(rates)):
        assert targets[i] >= needed(a, rates[min(i + ahead, len(rates) - 1)]), f"tick {i}"
    # The replicas the peak needs were asked for at least one startup time before the peak.
    peak_needs = needed(a, rates[-1])
    asked = next(i for i, n in enumerate(targets) if n >= peak_needs)
    assert (len(rates) - 1 - asked) * TICK >= STARTUP
    # The trend-aware forecast is never behind last value (whose upper quantile only widens with
    # its past errors) and is ahead of it somewhere on the ramp.
    b = agent(predictor="constant")
    last_value = [agg(step(b, i * TICK, rate)).target for i, rate in enumerate(rates)]
    assert all(k >= c for k, c in zip(targets, last_value)) and targets != last_value


# ---- step caps, grace period ----------------------------------------------------------------
def test_step_caps_limit_each_change() -> None:
    a = agent(max_step_up=1, throughput_interval_s=TICK)
    step(a, 0, 5.0)
    decisions = [step(a, i * TICK, 150.0) for i in range(1, 8)]
    targets = [agg(d).target for d in decisions]
    assert agg(decisions[0]).reason == R.STEP_CAPPED and agg(decisions[0]).wanted > 2
    assert all(b - a_ <= 1 for a_, b in zip([1] + targets, targets))
    assert targets[-1] > 4  # still gets there, one step at a time
    down = agent(spec(initial=8), scale_down_grace_s=0, max_step_down=2, mode="throughput", throughput_interval_s=TICK)
    targets = [agg(step(down, i * TICK, 1.0)).target for i in range(6)]
    assert all(b >= a_ - 2 for a_, b in zip([8] + targets, targets))
    assert targets[0] == 6 and agg(down.decisions[0]).reason == R.STEP_CAPPED
    assert targets[-1] == 1


def test_no_scale_down_during_the_grace_period_after_a_scale_up() -> None:
    a = agent(scale_down_grace_s=300)
    step(a, 0, 5.0)
    up = step(a, TICK, 5.0, itl_p90=60.0)  # ITL over the SLA: reactive +1
    assert agg(up).target == 2 and agg(up).reason == R.REACTIVE_SLA
    quiet = [step(a, TICK * i, 2.0) for i in range(2, 16)]
    in_grace = [d for d in quiet if d.time_s - TICK < 300]
    assert all(agg(d).target == 2 for d in in_grace)
    assert any(agg(d).reason == R.GRACE_PERIOD for d in in_grace)
    after = [d for d in quiet if d.time_s - TICK >= 300]
    assert after and agg(after[-1]).target == 1


# ---- limits and advisory mode ---------------------------------------------------------------
def test_min_max_and_runtime_limits_are_respected() -> None:
    a = agent(spec(initial=2, min_replicas=1, max_replicas=6))
    assert all(1 <= agg(step(a, i * TICK, 400.0)).target <= 6 for i in range(8))
    assert a.targets()["agg"] == 6 and agg(a.decisions[-1]).reason in (R.MAX_CAPPED, R.HOLD)
    a.set_limits(RuntimeLimits(max_replicas={"agg": 3}))
    capped = step(a, 8 * TICK, 400.0)
    assert agg(capped).target == 3 and agg(capped).reason == R.MAX_CAPPED
    a.set_limits(RuntimeLimits(min_replicas={"agg": 5}, max_replicas={"agg": 10}))  # max never above the spec's
    targets = [agg(step(a, i * TICK, 0.5)).target for i in range(9, 30)]
    assert min(targets) >= 5 and max(targets) <= 6
    a.set_limits(RuntimeLimits(min_replicas={"agg": 4}, max_replicas={"agg": 2}))  # min above max: max wins
    assert agg(step(a, 30 * TICK, 0.5)).target == 2
    with pytest.raises(ValueError, match="no prefill pool"):
        a.set_limits(RuntimeLimits(min_replicas={"prefill": 1}))


def test_advisory_mode_decides_but_changes_nothing() -> None:
    a = agent(spec(initial=2), advisory=True)
    decisions = [step(a, i * TICK, 200.0, itl_p90=60.0) for i in range(6)]
    assert all(d.advisory for d in decisions)
    assert any(agg(d).target > 2 for d in decisions)  # what it would do is decided and logged ...
    assert a.targets() == {"agg": 2}  # ... and nothing is changed
    policy = LocalAgentsPolicy([spec(initial=2)], TICK, AgentOptions(predictor="constant", advisory=True))
    observation = FleetObservation(time_s=0, pools=[observe("agg", 0, 200.0, ready=2, itl_p90=60.0)])
    assert policy.decide(TICK, observation).targets == []
    a.set_limits(RuntimeLimits(advisory=False))  # switched off at run time: it acts again
    assert agg(step(a, 6 * TICK, 200.0, itl_p90=60.0)).target > 2 and a.targets()["agg"] > 2


# ---- demand curves --------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["agg", "disagg"])
def test_demand_curves_are_monotone_and_cover_zero_to_max(mode: str) -> None:
    a = agent(spec(mode, max_replicas=6), predictor="kalman")
    for i, rate in enumerate([20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0]):
        obs = [observe(role, i * TICK, rate, ready=a.targets()[role]) for role in a.spec.pools]
        decision = a.step(AgentInput(now_s=i * TICK, observations=obs)).decision
    for pool in decision.pools:
        for curve in (pool.curve, pool.curve_low):
            assert len(curve) == 6 + 1
            assert all(0.0 <= v <= 1.0 for v in curve)
            assert all(b >= a_ - 1e-12 for a_, b in zip(curve, curve[1:]))
        # The pessimistic curve (at the forecast's upper quantile) is never above the mean one.
        assert all(low <= mean + 1e-12 for low, mean in zip(pool.curve_low, pool.curve))
    assert decision.forecast_upper_rps >= decision.forecast_rps


# ---- no peeking, observation delay ----------------------------------------------------------
def write_trace(path: Path, rates: list[tuple[float, float, float]], seed: int = 0) -> Path:
    """CSV trace with Poisson arrivals at ``rate`` over each ``[start, end)``; the random stream of
    each segment is seeded separately so segments before a change are byte-identical."""
    with path.open("w") as out:
        out.write("arrival_s,input_tokens,output_tokens\n")
        for index, (start, end, rate) in enumerate(rates):
            rng = np.random.default_rng([seed, index])
            count = rng.poisson(rate * (end - start))
            for t in np.sort(rng.uniform(start, end, count)):
                out.write(f"{t:.3f},{int(rng.integers(200, 3000))},{int(rng.integers(50, 600))}\n")
    return path


def local_run(trace: Path, delay_s: float | None = None, duration: float = 900):
    planner = {"policy": "local", "interval_s": 15, "predictor": "kalman", "throughput_interval_s": 60}
    if delay_s is not None:
        planner["observation_delay_s"] = delay_s
    data = {
        "name": "peek",
        "duration": duration,
        "seed": 3,
        "gpus": {"h200": 16},
        "planner": planner,
        "deployments": [
            {
                "name": "d",
                "tenant": "t",
                "endpoint": "e",
                "mode": "disagg",
                "sla": {"ttft_ms": 500, "itl_ms": 30},
                "trace": {"path": str(trace), "format": "csv"},
                "pools": {
                    role: {"profile": str(PROFILE), "gpu_type": "h200", "min": 1, "max": 8, "startup_s": 60}
                    for role in ("prefill", "decode")
                },
            }
        ],
    }
    scenario = parse_scenario(data, base_dir=trace.parent)
    workload = build_workload(scenario)
    policy = make_policy(scenario, workload)
    assert isinstance(policy, LocalAgentsPolicy)
    seen: list[tuple[float, list[PoolObservation] | None]] = []
    agent_ = policy.agents["d"]
    original = agent_.step

    def spy(tick: AgentInput) -> AgentEffects:
        seen.append((tick.now_s, tick.observations))
        return original(tick)

    agent_.step = spy
    result = FleetSimulation(scenario, workload, policy).run()
    return result, policy.history, seen


def test_no_peeking_decisions_before_t_ignore_the_trace_after_t(tmp_path: Path) -> None:
    change = 450.0
    calm = write_trace(tmp_path / "calm.csv", [(0, change, 8.0), (change, 900, 8.0)])
    surge = write_trace(tmp_path / "surge.csv", [(0, change, 8.0), (change, 900, 60.0)])
    rows = [np.loadtxt(path, delimiter=",", skiprows=1) for path in (calm, surge)]
    early = [r[r[:, 0] < change] for r in rows]
    assert len(early[0]) > 1000 and np.array_equal(early[0], early[1])  # identical before t
    assert len(rows[1]) > 3 * len(rows[0])  # very different after
    calm_result, calm_history, _ = local_run(calm)
    surge_result, surge_history, _ = local_run(surge)

    def before(history):
        return [d.model_dump() for d in history if d.time_s <= change]

    assert before(calm_history) == before(surge_history)  # every number, every curve
    assert [d for d in calm_result.decisions if d.time_s <= change] == [
        d for d in surge_result.decisions if d.time_s <= change
    ]
    # The test can tell: after t the two runs do differ.
    assert [d.model_dump() for d in calm_history] != [d.model_dump() for d in surge_history]
    assert max(r.target for r in surge_result.timeline) > max(r.target for r in calm_result.timeline)


@pytest.mark.parametrize("delay_s", [None, 45.0])
def test_observations_reach_the_agent_after_the_configured_delay(tmp_path: Path, delay_s: float | None) -> None:
    trace = write_trace(tmp_path / "steady.csv", [(0, 300, 6.0)])
    _, _, seen = local_run(trace, delay_s=delay_s, duration=300)
    delay = 15.0 if delay_s is None else delay_s  # default: like a Prometheus scrape
    delivered = [(now, obs) for now, obs in seen if obs]
    assert delivered and all(obs is None for now, obs in seen if now < delay)
    for now, observations in delivered:
        assert all(o.time_s <= now - delay + 1e-9 for o in observations)
    # ... and the freshest allowed one is delivered (not an older one).
    assert all(max(o.time_s for o in obs) > now - delay - 15 for now, obs in delivered)


def test_agents_see_replica_counts_as_of_now_and_metrics_after_the_delay(tmp_path: Path) -> None:
    """Live, counts come from the orchestrator's API and only metrics from the scrape: a replica
    the agent asked for shows as starting at its next tick, not a scrape later (a simulated agent
    that did not see it read the window before as pressure on the new target and asked again)."""
    trace = write_trace(tmp_path / "surge.csv", [(0, 300, 4.0), (300, 900, 40.0)])
    result, _, seen = local_run(trace, delay_s=45.0, duration=900)
    ups = [d for d in result.decisions if d.to_replicas > d.from_replicas]
    assert ups, "the surge must scale a pool up"
    first = ups[0]
    now, observations = next((now, obs) for now, obs in seen if now > first.time_s and obs)
    pool = next(o for o in observations if o.role == first.role)
    assert pool.time_s <= now - 45.0 + 1e-9  # the window is still the scrape-delayed one ...
    assert pool.ready + pool.starting == first.to_replicas  # ... its counts are the tick's
    assert pool.starting == first.to_replicas - first.from_replicas
