"""Each single-deployment weakness of the public anchor (../shared/BRIEF.md), reproduced and handled.

The agent is driven directly with synthetic observation sequences where the behaviour is a
decision (fast and exact), and with short simulator runs where it is physical (draining).
Prefix-cache reuse, also on the list, is covered in tests/test_prefix_cache.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fleet_planner.perf import PerfModel, load_profile
from fleet_planner.planning import (
    SLA,
    Decision,
    DeploymentSpec,
    Distribution,
    FleetObservation,
    Policy,
    PoolObservation,
    PoolSpec,
)
from fleet_sim.engine import DRAINING
from fleet_sim.policies import make_policy
from fleet_sim.results import COMPLETED
from fleet_sim.runner import FleetSimulation
from fleet_sim.scenario import parse_scenario
from fleet_sim.workload import build_workload
from local_agent.agent import AgentOptions, LocalAgent
from local_agent.decide.limits import apply_budget
from local_agent.decide.reactive import Proposal
from local_agent.models import AgentInput, RuntimeLimits
from local_agent.models import DecisionReason as R

ROOT = Path(__file__).resolve().parent.parent
PROFILE = ROOT / "examples" / "profiles" / "llama3.1-8b_h200_vllm_tp1"
MODEL = PerfModel(load_profile(str(PROFILE)))
TICK = 30.0
INPUTS = Distribution(count=100, mean=1000, p50=800, p90=2000, p99=4000)
OUTPUTS = Distribution(count=100, mean=200, p50=150, p90=400, p99=800)
# With these lengths and SLA one replica of this engine sustains about 30 req/s, two about 60.
ONE_REPLICA_RPS, TWO_REPLICAS_RPS = 20.0, 40.0


def spec(
    mode: str = "agg", *, initial: int = 1, min_replicas: int = 1, max_replicas: int = 8, gpus_per_replica: int = 1
) -> DeploymentSpec:
    roles = ("agg",) if mode == "agg" else ("prefill", "decode")
    return DeploymentSpec(
        name="d",
        tenant="t",
        endpoint="e",
        mode=mode,
        sla=SLA(ttft_ms=500, itl_ms=30),
        pools={
            role: PoolSpec(
                deployment="d",
                role=role,
                profile_path=str(PROFILE),
                gpu_type="h200",
                gpus_per_replica=gpus_per_replica,
                min_replicas=min_replicas,
                max_replicas=max_replicas,
                initial_replicas=initial,
                startup_s=60,
            )
            for role in roles
        },
    )


DESCENT_OFF = {
    "stabilization_window_s": 0.0,
    "down_margin": 0.0,
    "decode_down_margin": 0.0,
    "scale_down_dwell_s": 0.0,
    "near_miss": False,
    "warmup_windows": 0,
    "warmup_until_sized": False,
}


def agent(deployment: DeploymentSpec, **options) -> LocalAgent:
    options.setdefault("predictor", "constant")
    # These tests isolate one mechanism each: the scale-down descent (stabilisation window, dead
    # band, dwell between steps, near-miss memory) is off unless a test turns it on; the defaults
    # together are tested in tests/test_agent_descent.py.
    for key, value in DESCENT_OFF.items():
        options.setdefault(key, value)
    return LocalAgent(deployment, dict.fromkeys(deployment.pools, MODEL), AgentOptions(**options), TICK)


def observe(
    role: str,
    t: float,
    rps: float | None,
    *,
    ready: int,
    pending: int = 0,
    starting: int = 0,
    healthy: bool = True,
    **extra,
) -> PoolObservation:
    """One window of a pool: ``rps`` admitted (None = the metric is missing), latencies within the
    SLA when ``healthy`` and there was traffic, absent (None) otherwise."""
    admitted = None if rps is None else round(rps * TICK)
    fields: dict = dict(
        deployment="d",
        role=role,
        time_s=t,
        window_s=TICK,
        ready=ready,
        starting=starting,
        draining=0,
        pending=pending,
        admitted=admitted,
    )
    if admitted:
        fields.update(input_tokens=INPUTS, output_tokens=OUTPUTS)
        if healthy:
            fields.update(
                ttft_ms=Distribution(count=admitted, mean=120, p50=100, p90=200, p99=300),
                itl_ms=Distribution(count=admitted, mean=8, p50=8, p90=10, p99=12),
            )
    fields.update(extra)
    return PoolObservation(**fields)


def run(a: LocalAgent, start: float, ticks: int, make) -> list:
    """Step ``a`` ``ticks`` times from ``start``; ``make(t, targets)`` builds the observations."""
    out = []
    for i in range(ticks):
        t = start + i * TICK
        out.append(a.step(AgentInput(now_s=t, observations=make(t, a.targets()))).decision)
    return out


def pool(decision, role: str = "agg"):
    return next(p for p in decision.pools if p.role == role)


# ---- scale-down kills in-flight requests -------------------------------------------------------
class DrainRecorder(FleetSimulation):
    """Notes, right after each applied decision, the draining replicas and the requests on them."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.drains: list[dict] = []

    def _apply(self, decision, now):
        super()._apply(decision, now)
        for p in self.pools.values():
            draining = [r for r in p.replicas if r.state == DRAINING]
            if draining:
                in_flight = [request for r in draining for _, request in r.finish_heap]
                self.drains.append(
                    {
                        "time": now,
                        "target": p.target,
                        "gpus_held": p.gpus_held,
                        "gpus_per_replica": p.gpus_per_replica,
                        "in_flight": in_flight,
                    }
                )


def test_scale_down_while_busy_drains_and_every_request_completes(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    duration, rate = 480, 4.0
    arrivals = np.sort(rng.uniform(0, duration, int(rate * duration)))
    trace = tmp_path / "steady.csv"
    with trace.open("w") as out:
        out.write("arrival_s,input_tokens,output_tokens\n")
        for t in arrivals:  # long outputs: every replica always has sequences in flight
            out.write(f"{t:.3f},{int(rng.integers(200, 1500))},{int(rng.integers(500, 1500))}\n")
    data = {
        "name": "drain",
        "duration": duration,
        "seed": 1,
        "gpus": {"h200": 8},
        "planner": {
            "policy": "local",
            "interval_s": 15,
            "predictor": "constant",
            "scale_down_grace_s": 0,
            "throughput_interval_s": 60,
        },
        "deployments": [
            {
                "name": "d",
                "tenant": "t",
                "endpoint": "e",
                "mode": "agg",
                "sla": {"ttft_ms": 500, "itl_ms": 30},
                "trace": {"path": str(trace), "format": "csv"},
                "pools": {"agg": {"profile": str(PROFILE), "gpu_type": "h200", "min": 1, "max": 4, "initial": 4}},
            }
        ],
    }
    scenario = parse_scenario(data, base_dir=tmp_path)
    workload = build_workload(scenario)
    simulation = DrainRecorder(scenario, workload, make_policy(scenario, workload))
    result = simulation.run()

    downs = [d for d in result.decisions if d.to_replicas < d.from_replicas]
    assert downs, "the over-provisioned pool should have been scaled down"
    busy = [d for d in simulation.drains if d["in_flight"]]
    assert busy, "some scale-down should have hit a replica with requests in flight"
    for drain in busy:  # GPUs stay held while the replica drains
        assert drain["gpus_held"] > drain["target"] * drain["gpus_per_replica"]
    drained = {request for d in busy for request in d["in_flight"]}
    assert (result.requests.status[sorted(drained)] == COMPLETED).all()
    assert (result.requests.status == COMPLETED).all()  # 0 unfinished, 0 rejected
    final = next(row for row in result.timeline if row.time_s == result.timeline[-1].time_s)
    assert final.gpus == final.target  # drained replicas released their GPUs afterwards


# ---- no scale-down when traffic drops to zero (metrics invalid/absent, tick skipped) -----------
def test_traffic_stop_scales_to_min_even_without_latency_metrics() -> None:
    a = agent(spec(initial=3), idle_after_s=120)
    run(a, 0, 10, lambda t, _: [observe("agg", t, 2 * ONE_REPLICA_RPS, ready=3)])
    stop = 10 * TICK
    # Traffic stops: admitted is 0, and with nothing completing TTFT/ITL are None.
    decisions = run(a, stop, 8, lambda t, _: [observe("agg", t, 0.0, ready=a.targets()["agg"])])
    assert all(d.observed_rps == 0.0 for d in decisions)
    idle = [d for d in decisions if pool(d).reason == R.IDLE_TO_MIN]
    assert idle and pool(idle[0]).target == 1
    # The last admission was seen at stop - TICK: idle within idle_after_s plus one tick of that.
    assert idle[0].time_s <= stop - TICK + 120 + TICK
    assert a.targets() == {"agg": 1}


def test_a_pool_slower_to_start_than_the_idle_period_waits_its_start_up_before_going_idle() -> None:
    """Releasing a pool that takes longer to come back than the silence has lasted so far loses
    more than it saves if the traffic returns: the idle period is never shorter than the slowest
    pool's start-up (here 600 s against ``idle_after_s`` 120 s)."""
    slow = spec(initial=3)
    slow = slow.model_copy(update={"pools": {"agg": slow.pools["agg"].model_copy(update={"startup_s": 600.0})}})
    a = agent(slow, idle_after_s=120)
    run(a, 0, 10, lambda t, _: [observe("agg", t, 2 * ONE_REPLICA_RPS, ready=3)])
    stop = 10 * TICK
    decisions = run(a, stop, 30, lambda t, _: [observe("agg", t, 0.0, ready=a.targets()["agg"])])
    idle = [d for d in decisions if pool(d).reason == R.IDLE_TO_MIN]
    assert idle and idle[0].time_s >= stop - TICK + 600
    assert idle[0].time_s <= stop - TICK + 600 + TICK


def test_missing_admission_metric_is_not_zero_traffic() -> None:
    a = agent(spec(initial=3), idle_after_s=120)
    run(a, 0, 10, lambda t, _: [observe("agg", t, 2.5 * ONE_REPLICA_RPS, ready=3)])
    held = a.targets()["agg"]
    assert held >= 2
    # The metric disappears (scrape failure) for five idle periods: admitted None, then no
    # observation at all. Neither may look like "traffic stopped".
    gone = run(a, 300, 10, lambda t, _: [observe("agg", t, None, ready=held)])
    gone += run(a, 600, 10, lambda t, _: None)
    assert all(pool(d).reason != R.IDLE_TO_MIN for d in gone)
    assert all(pool(d).target == held for d in gone)
    assert all(d.observed_rps is None for d in gone)
    # Metrics come back at zero: only a full idle period of *observed* zeros means idle.
    back = run(a, 900, 6, lambda t, _: [observe("agg", t, 0.0, ready=held)])
    idle = [d for d in back if pool(d).reason == R.IDLE_TO_MIN]
    last_unknown = 600 + 9 * TICK
    assert idle and last_unknown + 120 <= idle[0].time_s <= last_unknown + 120 + TICK


# ---- stuck when a new pod cannot be scheduled ----------------------------------------------------
def test_unschedulable_replicas_do_not_block_the_other_pool_or_a_later_scale_down() -> None:
    a = agent(spec("disagg", initial=1, max_replicas=8), scale_down_grace_s=120, max_step_up=1)
    heavy = 3 * TWO_REPLICAS_RPS

    # Prefill asked for more but its new replica cannot be placed; decode's can.
    def make(t, targets):
        return [
            observe(
                "prefill",
                t,
                heavy,
                ready=1,
                pending=max(0, targets["prefill"] - 1),
                healthy=False,
                queued_prefill_tokens=1e6,
            ),
            observe(
                "decode",
                t,
                heavy,
                ready=targets["decode"],
                healthy=False,
                itl_ms=Distribution(count=100, mean=35, p50=35, p90=45, p99=60),
            ),
        ]

    decisions = run(a, 0, 12, make)
    prefill = [pool(d, "prefill") for d in decisions]
    decode = [pool(d, "decode") for d in decisions]
    assert prefill[0].target == 2  # asked once ...
    stuck = prefill[1:]
    assert all(p.reason == R.UNSCHEDULABLE and p.target == 2 for p in stuck)  # ... then no escalation
    assert decode[-1].target > 2  # the other pool kept scaling
    assert a.targets()["prefill"] == 2
    # Load drops and the GPUs never came: the agent scales down rather than staying stuck.
    light = run(
        a,
        12 * TICK,
        40,
        lambda t, targets: [
            observe("prefill", t, 1.0, ready=1, pending=max(0, targets["prefill"] - 1)),
            observe("decode", t, 1.0, ready=targets["decode"]),
        ],
    )
    assert a.targets() == {"prefill": 1, "decode": 1}
    assert any(pool(d, "prefill").target < 2 for d in light)


# ---- 2 <-> 1 oscillation (survivors absorb N/(N-1) of the load) ----------------------------------
@pytest.mark.parametrize("mode", ["load", "both"])
def test_no_scale_down_that_survivors_cannot_absorb_and_no_flapping(mode: str) -> None:
    # Two replicas at half load each look comfortable (latencies well within the SLA, KV low),
    # but one replica cannot carry the whole load.
    a = agent(spec(initial=2, min_replicas=1), mode=mode, scale_down_grace_s=0)
    decisions = run(
        a,
        0,
        120,
        lambda t, targets: [
            observe("agg", t, TWO_REPLICAS_RPS, ready=targets["agg"], active_kv_tokens=1e5, kv_capacity_tokens=1e6)
        ],
    )
    targets = [pool(d).target for d in decisions]
    assert targets == [2] * len(targets)  # an hour of ticks, no flapping
    if mode == "load":  # the reactive loop proposes one fewer; the consolidation check refuses it
        assert sum(pool(d).reason == R.CONSOLIDATION_REFUSED for d in decisions) > 100
    # Control: at a load one replica does absorb, the same agent does scale down to 1.
    run(
        a,
        120 * TICK,
        20,
        lambda t, targets: [
            observe("agg", t, ONE_REPLICA_RPS / 4, ready=targets["agg"], active_kv_tokens=1e5, kv_capacity_tokens=1e6)
        ],
    )
    assert a.targets() == {"agg": 1}


# ---- demand under-observed during backpressure ---------------------------------------------------
def test_demand_is_read_from_admissions_not_completions() -> None:
    a = agent(spec(initial=1))
    # Backpressure: 40 req/s admitted, only a handful completed (latency samples are completions).
    few = Distribution(count=20, mean=3000, p50=2500, p90=5000, p99=8000)
    obs = observe(
        "agg",
        0.0,
        TWO_REPLICAS_RPS,
        ready=1,
        healthy=False,
        ttft_ms=few,
        itl_ms=Distribution(count=20, mean=40, p50=35, p90=60, p99=90),
    )
    decision = a.step(AgentInput(now_s=0.0, observations=[obs])).decision
    assert decision.observed_rps == pytest.approx(TWO_REPLICAS_RPS)
    assert decision.forecast_rps == pytest.approx(TWO_REPLICAS_RPS)
    assert pool(decision).target >= 2  # sized for what arrives, not for what got out


def _one_replica_at_20_rps(tmp_path: Path, input_tokens: int, output_tokens: int, duration_s: float):
    """A scenario of 20 req/s of equal requests into one fixed aggregated H200 replica (endpoint
    ``e``, observations of 30 s delivered at once), and its workload."""
    trace = tmp_path / "steady.csv"
    rows = "".join(f"{i / 20:.3f},{input_tokens},{output_tokens}\n" for i in range(1200))
    trace.write_text("arrival_s,input_tokens,output_tokens\n" + rows)
    data = {
        "name": "one-replica",
        "duration": duration_s,
        "seed": 1,
        "gpus": {"h200": 1},
        "planner": {"policy": "static", "interval_s": 30, "observation_delay_s": 0},
        "deployments": [
            {
                "name": "d",
                "tenant": "t",
                "endpoint": "e",
                "mode": "agg",
                "sla": {"ttft_ms": 500, "itl_ms": 30},
                "trace": {"path": str(trace), "format": "csv"},
                "pools": {"agg": {"profile": str(PROFILE), "gpu_type": "h200", "min": 1, "max": 1}},
            }
        ],
    }
    scenario = parse_scenario(data, base_dir=tmp_path)
    return scenario, build_workload(scenario)


def test_simulator_reports_admissions_not_completions(tmp_path: Path) -> None:
    """Overloaded pool in the simulator: the observation's ``admitted`` counts arrivals."""
    scenario, workload = _one_replica_at_20_rps(tmp_path, 4000, 1500, 60)  # long requests
    seen: list[PoolObservation] = []

    class Spy(FleetSimulation):
        def _observe(self, now):
            observation = super()._observe(now)
            seen.extend(observation.pools)
            return observation

    Spy(scenario, workload, make_policy(scenario, workload)).run()
    first = next(o for o in seen if o.time_s == 30.0)
    assert first.admitted == 600
    assert first.itl_ms is None or first.itl_ms.count < 600  # completions lag far behind


def test_demand_the_gateway_shed_is_demand() -> None:
    """A planner's admission limit sheds the excess at the gateway: those requests never reach
    the engines, and an agent reading admissions alone would forecast the limit, after which the
    planner lifted the limit its own shedding had hidden (and the queue refilled)."""
    a = agent(spec(initial=1))
    admitted = observe("agg", 0.0, 10.0, ready=1)
    shed = admitted.model_copy(update={"endpoint_shed": round(10.0 * admitted.window_s)})
    decision = a.step(AgentInput(now_s=0.0, observations=[shed])).decision
    assert decision.observed_rps == pytest.approx(20.0)
    assert decision.forecast_rps == pytest.approx(20.0)
    # Sharing its endpoint, a deployment counts its part of what the endpoint shed.
    b = agent(spec(initial=1))
    b.endpoint_share = 0.25
    window = admitted.window_s
    both = admitted.model_copy(
        update={"endpoint_admitted": round(40.0 * window), "endpoint_shed": round(40.0 * window)}
    )
    assert b.step(AgentInput(now_s=0.0, observations=[both])).decision.observed_rps == pytest.approx(20.0)


def test_a_fully_shed_deployment_is_not_idle() -> None:
    a = agent(spec(initial=3))
    for i in range(12):  # every request shed for six minutes: demand, not an idle deployment
        window = observe("agg", i * 30.0, 0.0, ready=3).model_copy(update={"endpoint_shed": 300})
        decision = a.step(AgentInput(now_s=i * 30.0, observations=[window])).decision
        assert pool(decision).reason != R.IDLE_TO_MIN


def test_simulator_reports_what_the_gateway_shed(tmp_path: Path) -> None:
    """An admission limit of 5 rps on 20 rps of arrivals: the entry pool's observation counts 150
    admitted and 450 shed per 30 s window, apart (the endpoint's admitted count is the admitted)."""
    scenario, workload = _one_replica_at_20_rps(tmp_path, 200, 20, 90)
    seen: list[PoolObservation] = []

    class Limit(Policy):
        name = "limit"

        def decide(self, now_s: float, observation: FleetObservation | None) -> Decision:
            if observation is not None:
                seen.extend(observation.pools)
            return Decision(admission={"e": 5.0})

    FleetSimulation(scenario, workload, Limit(scenario.deployment_specs(), 30.0)).run()
    second = next(o for o in seen if o.time_s == 60.0)  # the first full window under the limit
    assert second.admitted == second.endpoint_admitted == pytest.approx(150, abs=2)
    assert second.endpoint_shed == pytest.approx(450, abs=2)


# ---- budget silently fail-open when GPU counts cannot be read ------------------------------------
def test_budget_holds_when_observations_are_missing_or_partial() -> None:
    a = agent(spec("disagg", initial=1, gpus_per_replica=2), gpu_budget=8)

    def total() -> int:
        return sum(a.targets().values()) * 2

    # No observation at all, an empty list, another deployment's, one pool missing: budget holds.
    for i, observations in enumerate(
        [
            None,
            [],
            [observe("prefill", 0, 50.0, ready=1).model_copy(update={"deployment": "x"})],
            [observe("prefill", 0, 200.0, ready=1, healthy=False, queued_prefill_tokens=1e7)],
        ]
    ):
        for k in range(10):
            t = (i * 10 + k) * TICK
            obs = [o.model_copy(update={"time_s": t}) for o in observations] if observations else observations
            decision = a.step(AgentInput(now_s=t, observations=obs)).decision
            assert sum(p.target * 2 for p in decision.pools) <= 8
            assert total() <= 8
    # Huge load on both pools: increases are capped by the budget, never above max.
    run(
        a,
        1000,
        20,
        lambda t, targets: [
            observe("prefill", t, 500.0, ready=targets["prefill"], healthy=False, queued_prefill_tokens=1e7),
            observe(
                "decode", t, 500.0, ready=targets["decode"], healthy=False, active_kv_tokens=1e6, kv_capacity_tokens=1e6
            ),
        ],
    )
    assert total() <= 8


def test_budget_shrinks_increases_proportionally_never_reverses_never_above_max() -> None:
    deployment = spec("disagg", initial=2, max_replicas=5)
    a = agent(deployment, gpu_budget=8)
    decisions = [
        a._finish("prefill", 2, Proposal(8, R.PREDICTIVE_UP, "")),  # capped at max 5 first
        a._finish("decode", 2, Proposal(6, R.PREDICTIVE_UP, "")),
    ]
    assert [d.target for d in decisions] == [5, 5]
    capped = {d.role: d for d in apply_budget(a.spec, a.limits.gpu_budget, decisions)}
    # 4 GPUs of room for 3 + 3 wanted extra: two thirds of each increase, rounded down.
    assert capped["prefill"].target == 4 and capped["decode"].target == 4
    assert all(d.reason == R.BUDGET_CAPPED for d in capped.values())
    assert all(d.target >= d.current for d in capped.values())  # an increase never becomes a decrease
    # One pool shrinking and one growing: the shrink is kept, the freed GPUs fund the growth.
    mixed = [
        a._finish("prefill", 4, Proposal(3, R.PREDICTIVE_DOWN, "")),
        a._finish("decode", 4, Proposal(5, R.PREDICTIVE_UP, "")),
    ]
    assert {d.role: d.target for d in apply_budget(a.spec, a.limits.gpu_budget, mixed)} == {"prefill": 3, "decode": 5}
    # Through step(): the whole agent under a runtime budget change that is below what it holds.
    b = agent(spec(initial=4), gpu_budget=None)
    b.set_limits(RuntimeLimits(gpu_budget=2))
    decision = b.step(AgentInput(now_s=0.0)).decision
    assert pool(decision).target == 2 and pool(decision).reason == R.BUDGET_CAPPED
    run(b, TICK, 10, lambda t, targets: [observe("agg", t, 3 * TWO_REPLICAS_RPS, ready=targets["agg"], healthy=False)])
    assert b.targets()["agg"] <= 2


# ---- predictors only give a one-step mean / forecasts go negative --------------------------------
def test_sizing_uses_the_upper_quantile_over_startup_plus_interval() -> None:
    a = agent(spec(initial=1), predictor="kalman")
    rates = [5.0, 8.0, 11.0, 14.0, 17.0, 20.0, 23.0]  # a ramp: the max over the horizon is ahead
    decisions = [
        a.step(
            AgentInput(now_s=i * TICK, observations=[observe("agg", i * TICK, r, ready=a.targets()["agg"])])
        ).decision
        for i, r in enumerate(rates)
    ]
    last_throughput = decisions[-1]
    assert last_throughput.loop == "throughput" and last_throughput.time_s == a.options.throughput_interval_s
    assert last_throughput.forecast_upper_rps >= last_throughput.forecast_rps > 0
    steps = -(-(60 + a.options.throughput_interval_s) // TICK)
    expected = a.predictor.predict_max(int(steps))
    assert decisions[-1].forecast_upper_rps == pytest.approx(expected.upper)  # horizon = startup + interval
    assert expected.mean > rates[-1]  # the trend is extrapolated, not a one-step mean
    # Sizing ran at the upper quantile: the pessimistic curve is the one at forecast_upper_rps.
    lengths = a.intake.lengths()
    at_upper = a.sizer.curves_at(last_throughput.forecast_upper_rps, lengths)
    assert a.sizer.sized(at_upper)["agg"] == a.pools["agg"].predictive
    assert pool(last_throughput).curve_low == pytest.approx(list(at_upper["agg"].attainment))


@pytest.mark.parametrize("predictor", ["constant", "moving_average", "holt", "kalman", "arima", "seasonal"])
def test_steep_fall_never_gives_a_negative_forecast(predictor: str) -> None:
    a = agent(spec(initial=4), predictor=predictor, throughput_interval_s=TICK)
    rates = [80.0 - 6.0 * i for i in range(14)] + [0.0] * 6
    for i, rate in enumerate(rates):
        decision = a.step(
            AgentInput(now_s=i * TICK, observations=[observe("agg", i * TICK, rate, ready=a.targets()["agg"])])
        ).decision
        assert decision.forecast_rps is not None and decision.forecast_rps >= 0.0
        assert decision.forecast_upper_rps >= decision.forecast_rps
        assert all(p.target >= 1 for p in decision.pools)


def test_extreme_observations_at_the_contracts_bounds_never_break_a_tick() -> None:
    """Seeded fuzz: windows of valid but absurd observations (counts and latencies up to the
    contract's bound, zero-length windows of traffic, a KV cache full past its capacity, pools that
    vanish for a tick) never raise, and every tick's targets and curves stay valid."""
    rng = np.random.default_rng(7)
    huge = [0, 1, 30, 10**6, 10**12]
    figures = [0.0, 1e-9, 0.5, 50.0, 1e6, 1e12]

    def summary() -> Distribution:
        values = np.sort(rng.choice(figures, 4))
        return Distribution(count=int(rng.choice(huge)), mean=values[1], p50=values[0], p90=values[2], p99=values[3])

    for mode in ("agg", "disagg"):
        deployment = spec(mode)
        a = LocalAgent(deployment, dict.fromkeys(deployment.pools, MODEL), AgentOptions(), TICK)
        for k in range(1, 40):
            observations = []
            for role in deployment.pools:
                if rng.random() < 0.1:
                    continue
                fields: dict = dict(
                    deployment=deployment.name,
                    role=role,
                    time_s=k * TICK,
                    window_s=float(rng.choice([TICK, 1e-6])),
                    ready=int(rng.choice([0, 1, 10_000])),
                    starting=int(rng.choice([0, 3])),
                    draining=0,
                    pending=0,
                    admitted=int(rng.choice(huge)),
                    queued_requests=int(rng.choice(huge)),
                    active_kv_tokens=float(rng.choice(figures)),
                    kv_capacity_tokens=float(rng.choice(figures)),
                    iteration_ms=float(rng.choice(figures)),
                )
                for name in ("input_tokens", "output_tokens", "ttft_ms", "itl_ms"):
                    fields[name] = summary()
                observations.append(PoolObservation(**fields))
            effects = a.step(AgentInput(now_s=k * TICK, observations=observations))
            for role, count in effects.targets.items():
                pool = deployment.pools[role]
                assert pool.min_replicas <= count <= pool.max_replicas
            for curve in effects.curves.values():
                assert all(0.0 <= value <= 1.0 for value in curve)


@pytest.mark.parametrize(
    "field, value",
    [("admitted", 10**13), ("active_kv_tokens", float("inf")), ("iteration_ms", 1e300), ("queued_requests", 10**300)],
)
def test_observations_past_the_contracts_bound_are_refused(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=field):
        PoolObservation(
            deployment="d",
            role="agg",
            time_s=0.0,
            window_s=TICK,
            ready=1,
            starting=0,
            draining=0,
            pending=0,
            **{field: value},
        )
    with pytest.raises(ValueError, match="p99"):
        Distribution(count=1, mean=1.0, p50=1.0, p90=1.0, p99=1e13)
