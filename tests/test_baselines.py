"""Baseline policies: static, static-peak and the clairvoyant oracle — the yardsticks every real
planner is compared with, so their own behaviour must be pinned down."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fleet_planner.planning import SLA, DeploymentSpec, PoolSpec
from fleet_sim.baselines import OraclePolicy, StaticPeakPolicy, StaticPolicy, fit_to_inventory
from fleet_sim.outputs import summarize
from fleet_sim.policies import make_policy
from fleet_sim.results import SimulationResult
from fleet_sim.scenario import parse_scenario
from fleet_sim.simulate import run_scenario

ROOT = Path(__file__).resolve().parents[1]
TRACES = ROOT / "examples" / "traces"
H200 = ROOT / "examples" / "profiles" / "llama3.1-8b_h200_vllm_tp1"


def diurnal_scenario(policy: str, *, peak_rps: float = 6.0, initial: int = 2, gpus: int = 32, mode: str = "agg"):
    """Ten simulated minutes of the ServeGen shape from 18h (busy evening, 3x swing), compressed 20x
    (time_scale 0.05) so 200 minutes of rate changes pass in 10: peak ~ peak_rps / 0.05 req/s."""
    pool = {"profile": str(H200), "gpu_type": "h200", "min": 1, "max": 16, "initial": initial, "startup_s": 30}
    roles = ("prefill", "decode") if mode == "disagg" else ("agg",)
    data = {
        "name": "diurnal-short",
        "duration": "10m",
        "seed": 5,
        "gpus": {"h200": gpus},
        "planner": {"policy": policy, "interval_s": 30},
        "deployments": [
            {
                "name": "d",
                "tenant": "t",
                "endpoint": "e",
                "mode": mode,
                "sla": {"ttft_ms": 600, "itl_ms": 25},
                "trace": {
                    "synth": {
                        "rate": str(TRACES / "servegen_m-large_rate_10min.csv"),
                        "peak_rps": peak_rps,
                        "start_s": "18h",
                        "lengths": str(TRACES / "azure2023_conv.csv"),
                    },
                    "time_scale": 0.05,
                    "max_input_tokens": 16000,
                },
                "pools": {role: dict(pool) for role in roles},
            }
        ],
    }
    return parse_scenario(data, base_dir=ROOT)


@pytest.fixture(scope="module")
def diurnal() -> dict[str, SimulationResult]:
    return {policy: run_scenario(diurnal_scenario(policy)) for policy in ("static-peak", "oracle")}


def targets(result: SimulationResult, role: str = "agg") -> dict[float, int]:
    return {row.time_s: row.target for row in result.timeline if row.role == role}


# ---------------------------------------------------------------------------------------------
# static
# ---------------------------------------------------------------------------------------------
def test_static_keeps_the_initial_counts_under_any_load() -> None:
    result = run_scenario(diurnal_scenario("static", peak_rps=3.0, initial=3, mode="disagg"))
    assert result.policy == "static" and not result.clairvoyant
    assert result.decisions == []
    assert result.scale_events == {"d": 0}
    for row in result.timeline:
        assert (row.target, row.ready, row.starting, row.draining, row.pending) == (3, 3, 0, 0, 0)
    assert result.gpu_seconds == {("d", "prefill"): pytest.approx(3 * 600), ("d", "decode"): pytest.approx(3 * 600)}


# ---------------------------------------------------------------------------------------------
# static-peak vs oracle on a compressed diurnal trace
# ---------------------------------------------------------------------------------------------
def test_static_peak_is_constant(diurnal) -> None:
    result = diurnal["static-peak"]
    peak = targets(result)
    assert len(set(list(peak.values())[1:])) == 1  # the first row is recorded before the first decision
    assert len(result.decisions) <= 1 and all(d.time_s == 0.0 for d in result.decisions)


def test_static_peak_never_holds_fewer_replicas_than_the_oracle(diurnal) -> None:
    peak, oracle = targets(diurnal["static-peak"]), targets(diurnal["oracle"])
    assert peak.keys() == oracle.keys()
    for t in list(peak)[1:]:
        assert oracle[t] <= peak[t], t
    assert diurnal["oracle"].max_gpus_in_use["h200"] <= diurnal["static-peak"].max_gpus_in_use["h200"]


def test_oracle_scales_with_the_load(diurnal) -> None:
    oracle = diurnal["oracle"]
    assert len(set(targets(oracle).values())) >= 3  # the 3x swing is worth following
    assert len(oracle.decisions) >= 3
    assert all(d.reason.startswith("oracle") for d in oracle.decisions)


def test_oracle_uses_fewer_gpu_hours_than_static_peak(diurnal) -> None:
    peak, oracle = summarize(diurnal["static-peak"]), summarize(diurnal["oracle"])
    assert peak["fleet"]["requests"] == oracle["fleet"]["requests"] > 20000  # same traffic
    assert oracle["fleet"]["gpu_hours"] < 0.9 * peak["fleet"]["gpu_hours"]
    for summary in (peak, oracle):
        assert summary["fleet"]["rejected"] + summary["fleet"]["completed"] == summary["fleet"]["requests"]


def test_oracle_is_labelled_clairvoyant(diurnal) -> None:
    assert summarize(diurnal["oracle"])["clairvoyant"] is True
    assert summarize(diurnal["oracle"])["policy"] == "oracle"
    assert summarize(diurnal["static-peak"])["clairvoyant"] is False
    assert OraclePolicy.clairvoyant and not StaticPeakPolicy.clairvoyant and not StaticPolicy.clairvoyant


# ---------------------------------------------------------------------------------------------
# the policies alone, on a known need curve
# ---------------------------------------------------------------------------------------------
def _spec(min_replicas: int = 1, max_replicas: int = 8, startup_s: float = 60.0, gpus: int = 1) -> DeploymentSpec:
    pool = PoolSpec(
        deployment="d",
        role="agg",
        profile_path=str(H200),
        gpu_type="h200",
        gpus_per_replica=gpus,
        min_replicas=min_replicas,
        max_replicas=max_replicas,
        initial_replicas=min_replicas,
        startup_s=startup_s,
    )
    return DeploymentSpec(
        name="d", tenant="t", endpoint="e", mode="agg", sla=SLA(ttft_ms=500, itl_ms=50), pools={"agg": pool}
    )


class KnownNeeds:
    """Stands in for WindowedNeeds: replicas needed per 60-second window."""

    window_s = 60.0

    def __init__(self, per_window: list[int]):
        self.needs = {("d", "agg"): np.array(per_window)}

    def peak(self, key) -> int:
        return int(self.needs[key].max())

    def max_over(self, key, start_s: float, end_s: float) -> int:
        first, last = int(start_s // 60), min(len(self.needs[key]) - 1, int(end_s // 60))
        return int(self.needs[key][first : last + 1].max()) if first <= last else 0


def _target(policy, now: float) -> int:
    (target,) = policy.decide(now, None).targets
    return target.replicas


def test_oracle_starts_replicas_startup_s_before_the_spike() -> None:
    needs = KnownNeeds([1, 1, 1, 1, 1, 4, 1, 1, 1, 1])  # window 5 = [300, 360) s needs 4 replicas
    oracle = OraclePolicy([_spec(startup_s=60)], 30.0, needs, {"h200": 8})
    ticks = np.arange(0, 600, 30.0)
    wanted = {t: _target(oracle, t) for t in ticks}
    up = [t for t in ticks if wanted[t] == 4]
    assert up, "the spike must be provisioned"
    assert up[0] + 60 <= 300  # asked early enough to be ready when the spike starts
    assert up[0] >= 300 - 60 - 2 * 30  # ... and at most a tick or two ahead, not from the start
    assert up[-1] < 360  # released once the spike is over
    assert all(wanted[t] == 1 for t in ticks if t not in up)


def test_static_peak_holds_the_peak_and_both_respect_bounds_and_inventory() -> None:
    needs = KnownNeeds([0, 2, 12, 3])
    peak = StaticPeakPolicy([_spec(max_replicas=10)], 30.0, needs, {"h200": 16})
    assert {_target(peak, t) for t in (0, 30, 90, 200)} == {10}  # clamped to max
    small = StaticPeakPolicy([_spec(max_replicas=10, gpus=2)], 30.0, needs, {"h200": 8})
    assert _target(small, 0) == 4  # 4 replicas x 2 GPUs fill the inventory
    oracle = OraclePolicy([_spec(min_replicas=1)], 30.0, needs, {"h200": 16})
    assert _target(oracle, 0) >= 1  # a need of 0 never goes below min


def test_fit_to_inventory_shrinks_the_largest_pool_first_and_keeps_minimums() -> None:
    specs = [
        DeploymentSpec(
            name="d",
            tenant="t",
            endpoint="e",
            mode="disagg",
            sla=SLA(ttft_ms=500, itl_ms=50),
            pools={
                role: PoolSpec(
                    deployment="d",
                    role=role,
                    profile_path="p",
                    gpu_type="h200",
                    gpus_per_replica=1,
                    min_replicas=minimum,
                    max_replicas=10,
                    initial_replicas=minimum,
                    startup_s=0,
                )
                for role, minimum in (("prefill", 1), ("decode", 3))
            },
        )
    ]
    assert fit_to_inventory({("d", "prefill"): 6, ("d", "decode"): 4}, specs, {"h200": 8}) == {
        ("d", "prefill"): 4,
        ("d", "decode"): 4,
    }
    # Not enough even at the minimums: stop there rather than go below them.
    assert fit_to_inventory({("d", "prefill"): 6, ("d", "decode"): 4}, specs, {"h200": 2}) == {
        ("d", "prefill"): 1,
        ("d", "decode"): 3,
    }
    assert fit_to_inventory({("d", "prefill"): 2, ("d", "decode"): 3}, specs, {"h200": 8}) == {
        ("d", "prefill"): 2,
        ("d", "decode"): 3,
    }


# ---------------------------------------------------------------------------------------------
# baselines searched by simulation: valid in the simulator that judges them
# ---------------------------------------------------------------------------------------------
def _with_options(scenario, **options):
    planner = type(scenario.planner)(**{**scenario.planner.model_dump(), **options})
    return scenario.model_copy(update={"planner": planner})


def test_searched_baselines_meet_the_target_the_capacity_model_alone_misses() -> None:
    from fleet_sim.baselines import oracle_below_peak, search_static_peak
    from fleet_sim.policies import _needs
    from fleet_sim.runner import FleetSimulation
    from fleet_sim.workload import build_workload

    scenario = diurnal_scenario("oracle", initial=6)  # no start-up transient: judge every request
    workload = build_workload(scenario)
    model_only = FleetSimulation(
        scenario, workload, make_policy(_with_options(scenario, baseline_search=False), workload)
    )
    assert summarize(model_only.run())["fleet"]["slo_attainment"] < 0.995  # bursty arrivals break the model
    peak = search_static_peak(scenario, workload, _needs(scenario, workload, 0.995), 0.995)
    oracle = oracle_below_peak(scenario, workload, 0.995, peak)
    for policy in (peak, oracle):
        assert policy.search is not None and policy.search.reached and not policy.search.unreachable
        result = FleetSimulation(scenario, workload, policy).run()
        assert summarize(result)["fleet"]["slo_attainment"] >= 0.995, policy.name
    assert oracle.search.runs <= 8


def test_unreachable_targets_are_reported() -> None:
    from fleet_sim.baselines import oracle_below_peak
    from fleet_sim.workload import build_workload

    scenario = diurnal_scenario("oracle", peak_rps=6.0)
    data = scenario.model_dump(by_alias=True, mode="json")
    data["deployments"][0]["pools"]["agg"].update({"max": 1, "initial": 1, "min": 1})
    small = parse_scenario(data, base_dir=ROOT)
    workload = build_workload(small)
    oracle = oracle_below_peak(small, workload, 0.995)
    assert oracle.search is not None and oracle.search.unreachable == ["d"]
    assert oracle.search.attainment["d"] < 0.995 and oracle.search.reached  # marked, so it counts as handled
    assert oracle.search.runs <= 3


def test_a_target_the_inventory_cannot_hold_is_reported_unreachable() -> None:
    """A shortage, not a pool maximum, binds: the pool could grow but the fleet has no GPU left."""
    from fleet_sim.baselines import oracle_below_peak
    from fleet_sim.workload import build_workload

    scenario = diurnal_scenario("oracle", peak_rps=6.0)
    data = scenario.model_dump(by_alias=True, mode="json")
    data["deployments"][0]["pools"]["agg"].update({"initial": 1, "min": 1})
    assert data["deployments"][0]["pools"]["agg"]["max"] > 1
    data["gpus"] = dict.fromkeys(data["gpus"], 1)
    short = parse_scenario(data, base_dir=ROOT)
    oracle = oracle_below_peak(short, build_workload(short), 0.995)
    assert oracle.search is not None and oracle.search.attainment["d"] < 0.995
    assert oracle.search.unreachable == ["d"] and oracle.search.reached


@pytest.mark.parametrize(
    ("policy", "options", "field", "words"),
    [
        ("static-peak", {"target_attainment": 5}, "planner.target_attainment", "less than or equal to 1 (got 5)"),
        ("oracle", {"target_attainment": 0}, "planner.target_attainment", "greater than 0 (got 0)"),
        ("oracle", {"target_attainment": "x"}, "planner.target_attainment", "a valid number (got 'x')"),
        ("oracle", {"target_attainment": True}, "planner.target_attainment", "a valid number (got True)"),
        ("static-peak", {"target_attainment": float("nan")}, "planner.target_attainment", "finite number (got nan)"),
        ("static-peak", {"baseline_search": "no"}, "planner.baseline_search", "a valid boolean (got 'no')"),
        ("local", {"bogus": 1}, "planner.bogus", "unknown key (expected one of: mode, "),
        ("local", {"headroom": float("nan")}, "planner.headroom", "finite number"),
        (
            "global",
            {"policy_file": "examples/shortage/tenants.yaml", "faults": {"x": 1}},
            "planner.faults.x",
            "unknown",
        ),
        (
            "global",
            {
                "policy_file": "examples/shortage/tenants.yaml",
                "faults": {"drop_agent": {"deployment": "no", "at_s": 1}},
            },
            "planner.faults.drop_agent.deployment",
            "no deployment 'no'",
        ),
    ],
)
def test_bad_planner_options_are_one_input_error_naming_the_option(policy, options, field, words) -> None:
    """They were a ValueError traceback (target_attainment, an unknown drop_agent deployment), a
    multi-line pydantic dump (agent options, faults), or silently true (baseline_search: "no")."""
    from fleet_planner.errors import InputError
    from fleet_sim.workload import build_workload

    scenario = _with_options(diurnal_scenario(policy), **options)
    with pytest.raises(InputError) as caught:
        make_policy(scenario, build_workload(scenario))
    assert caught.value.field == field and words in caught.value.problem and "\n" not in str(caught.value)
