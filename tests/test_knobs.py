"""Engine knobs: one validated type, the agent's choice (from its own sizing model, with
hysteresis), sizing with the knobs in force, and the simulator honouring them at run time."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from pydantic import ValidationError

from fleet_planner.knobs import EngineKnobs
from fleet_planner.perf import PerfModel, load_profile
from fleet_planner.planning import SLA, DeploymentMode, DeploymentSpec, Distribution, PoolRole, PoolSpec
from fleet_sim.closed_loop import run_closed_loop
from fleet_sim.engine import EngineConfig, Pool, Simulator
from fleet_sim.scenario import parse_scenario
from local_agent.agent import AgentOptions, LocalAgent
from local_agent.knobs import candidates

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from local_agent.sizing import EngineModel, LoadEstimate
from local_agent.sizing.curves import _chunk_spread
from local_agent.sizing.deployment import size_deployment

ROOT = Path(__file__).resolve().parents[1]
PROFILES = ROOT / "examples/profiles"
A100 = PerfModel(load_profile(PROFILES / "llama3.1-8b_a100_vllm_tp1"))
H200 = PerfModel(load_profile(PROFILES / "llama3.1-8b_h200_vllm_tp1"))
CONV = (
    Distribution(count=1000, mean=1155, p50=900, p90=2500, p99=6000),
    Distribution(count=1000, mean=211, p50=150, p90=450, p99=900),
)


def test_knobs_are_validated_and_render_as_engine_flags() -> None:
    with pytest.raises(ValidationError):
        EngineKnobs(max_num_seqs=0)
    with pytest.raises(ValidationError):
        EngineKnobs(max_batch_tokens=512, unknown=1)  # type: ignore[call-arg]
    knobs = EngineKnobs(max_num_seqs=96, max_batch_tokens=2048)
    assert knobs.engine_args() == ["--max-num-batched-tokens", "2048", "--max-num-seqs", "96"]
    assert knobs.with_engine_args(["--model", "m", "--max-num-seqs", "8", "--max-num-batched-tokens=4", "-x"]) == [
        "--model",
        "m",
        "-x",
        "--max-num-batched-tokens",
        "2048",
        "--max-num-seqs",
        "96",
    ]
    line = "python3 -m dynamo.vllm --model m --max-num-seqs 8 --enforce-eager"
    assert knobs.with_engine_args([line]) == [
        "python3 -m dynamo.vllm --model m --max-num-seqs 96 --enforce-eager --max-num-batched-tokens 2048"
    ]


def test_decode_candidates_only_raise_the_cap_up_to_the_itl_limit_with_a_margin() -> None:
    sla = SLA(ttft_ms=600, itl_ms=30)
    low = EngineKnobs(max_num_seqs=8)
    options = candidates(A100, "decode", sla, 1155, 211, low)
    assert options[0] == low and EngineKnobs(max_num_seqs=256) in options
    cap = options[-1].max_num_seqs
    context = 1155 + 211 / 2
    assert A100.itl_ms(cap, context) <= 27 < A100.itl_ms(cap + 1, context)  # 90% of the target
    assert candidates(A100, "decode", sla, 1155, 211, EngineKnobs()) == [EngineKnobs()]  # never lowered
    assert candidates(A100, "prefill", sla, 1155, 211, EngineKnobs()) == [EngineKnobs()]


def test_decode_cap_holds_itl_under_overload_where_the_default_does_not() -> None:
    """Closed loop on one prefill + one decode replica with more clients than the cap: the capped
    engine queues the excess (TTFT) and keeps ITL; the default batches everyone and misses it."""
    cap = candidates(A100, "decode", SLA(ttft_ms=600, itl_ms=30), 200, 600, EngineKnobs(max_num_seqs=1))[-1]
    clients = cap.max_num_seqs + 60
    run = {
        name: run_closed_loop(
            A100, mode="disagg", concurrency=clients, isl=200, osl=600, knobs=k, requests_per_client=3
        )
        for name, k in (("default", EngineKnobs()), ("capped", cap))
    }
    assert run["default"].tpot_ms > 30
    assert run["capped"].tpot_ms <= 30
    assert run["capped"].ttft_ms > run["default"].ttft_ms


def test_chunking_narrows_the_itl_spread_of_short_decodes_only() -> None:
    inputs = np.array([20000.0, 30000.0])
    variable = np.asarray(A100.ttft_ms(inputs)) - A100.prefill_overhead_ms
    decodes = np.array([2.0, 10.0, 1000.0])
    assert np.allclose(_chunk_spread(inputs, variable, 32768)(decodes), 1.0)  # one chunk each: unchanged
    factor = _chunk_spread(inputs, variable, 512)(decodes)
    assert factor[0] < factor[1] < 1.0  # a 2-token answer sees a sliver of each prompt
    assert factor[2] == pytest.approx(1.0, abs=0.1)  # a long answer absorbs whole prompts anyway


def _spec(mode: DeploymentMode, profile: str = "llama3.1-8b_a100_vllm_tp1", itl_ms: float = 30, **knobs: int):
    roles: tuple[PoolRole, ...] = ("agg",) if mode == "agg" else ("prefill", "decode")
    pools = {
        role: PoolSpec(
            deployment="d",
            role=role,
            profile_path=str(PROFILES / profile),
            gpu_type="gpu",
            gpus_per_replica=1,
            min_replicas=0,
            max_replicas=40,
            initial_replicas=1,
            startup_s=60,
            **knobs,
        )
        for role in roles
    }
    sla = SLA(ttft_ms=2000, itl_ms=itl_ms)
    return DeploymentSpec(name="d", tenant="t", endpoint="e", mode=mode, sla=sla, pools=pools)


@pytest.mark.parametrize(("mode", "role"), [("disagg", "decode"), ("agg", "agg")])
def test_sizing_uses_the_knobs_in_force(mode: DeploymentMode, role: PoolRole) -> None:
    """A pool whose engines may batch only 8 sequences needs more replicas than one batching 256."""
    load = LoadEstimate(rate_rps=20.0, input_tokens=np.full(200, 500.0), output_tokens=np.full(200, 300.0))
    models: dict[PoolRole, EngineModel] = {"prefill": A100, "decode": A100, "agg": A100}
    default = size_deployment(_spec(mode), models, load)
    capped = size_deployment(_spec(mode, max_num_seqs=8), models, load)
    assert capped[role] > default[role]


def _agent(spec: DeploymentSpec, **options: object) -> LocalAgent:
    models: dict[PoolRole, EngineModel] = dict.fromkeys(spec.pools, H200)
    return LocalAgent(spec, models, AgentOptions(tune_knobs=True, **options), 30)  # type: ignore[arg-type]


def test_tuner_raises_the_decode_cap_where_itl_allows_and_sizes_with_it() -> None:
    """H200 decoding short chats at 30 ms: ITL holds far beyond 256 sequences, so the default cap
    wastes decode replicas; the tuner lifts it, and the sizing that follows needs fewer GPUs."""
    agent = _agent(_spec("disagg", "llama3.1-8b_h200_vllm_tp1"))
    before = agent.sizer.sized(agent.sizer.curves_at(350, CONV))
    changed = agent.knob_tuner.retune(0.0, agent.sizer, 350, CONV)
    assert set(changed) == {"decode"}
    cap = changed["decode"].knobs.max_num_seqs
    assert cap > 256 and agent.knobs["decode"].max_num_seqs == cap
    assert agent.sizer.spec.pools["decode"].max_num_seqs == cap  # sizing now uses the knobs in force
    after = agent.sizer.sized(agent.sizer.curves_at(350, CONV))
    assert after["decode"] < before["decode"]
    assert "GPUs" in changed["decode"].reason


def test_tuner_takes_a_cap_that_carries_more_per_replica_and_does_not_flap() -> None:
    """At 20 req/s one replica suffices with either cap, but the raised one serves more within the
    ITL target: it is taken at once (before the first peak, not after it), and not given back."""
    agent = _agent(_spec("disagg", "llama3.1-8b_h200_vllm_tp1"), knob_interval_s=600)
    choice = agent.knob_tuner.retune(0.0, agent.sizer, 20, CONV)
    assert set(choice) == {"decode"} and "more requests per replica" in choice["decode"].reason
    tuned = agent.knobs["decode"]
    assert tuned.max_num_seqs > 256
    assert agent.knob_tuner.retune(300.0, agent.sizer, 350, CONV) == {}  # not due yet
    assert agent.knob_tuner.retune(600.0, agent.sizer, 20, CONV) == {}  # due, but nothing gained going back
    assert agent.knob_tuner.retune(1200.0, agent.sizer, 350, CONV) == {}
    assert agent.knobs["decode"] == tuned


def test_a_cap_carrying_little_more_per_replica_is_not_worth_a_restart() -> None:
    """At as many GPUs, a higher cap is taken only when a replica then serves THROUGHPUT_MARGIN
    more requests within the ITL target: a few more sequences are not worth a rolling restart."""
    from local_agent.knobs import THROUGHPUT_MARGIN, KnobTuner

    agent = _agent(_spec("disagg", "llama3.1-8b_h200_vllm_tp1"))
    same = (2, 1.0)

    def scored(*caps: int) -> list[tuple[tuple[int, float], EngineKnobs]]:
        return [(same, EngineKnobs(max_num_seqs=cap)) for cap in caps]

    assert THROUGHPUT_MARGIN > 0
    assert KnobTuner._more_throughput(agent.sizer, "decode", CONV, scored(256, 260)) is None
    wider = KnobTuner._more_throughput(agent.sizer, "decode", CONV, scored(256, 260, 420))
    assert wider is not None and wider[1].max_num_seqs == 420
    fewer_att = [(same, EngineKnobs()), ((2, 0.99), EngineKnobs(max_num_seqs=420))]
    assert KnobTuner._more_throughput(agent.sizer, "decode", CONV, fewer_att) is None  # less attainment
    assert KnobTuner._more_throughput(agent.sizer, "prefill", CONV, scored(256, 420)) is None


def test_agent_hands_its_knobs_to_the_connector_only_when_tuning() -> None:
    from local_agent.models import AgentInput

    tuning = _agent(_spec("agg", "llama3.1-8b_h200_vllm_tp1")).step(AgentInput(now_s=0.0, observations=None))
    assert tuning.knobs == {"agg": EngineKnobs()}
    spec = _spec("agg", "llama3.1-8b_h200_vllm_tp1")
    plain = LocalAgent(spec, {"agg": H200}, AgentOptions(), 30).step(AgentInput(now_s=0.0, observations=None))
    assert plain.knobs == {}


def test_simulated_pool_applies_new_knobs_at_run_time() -> None:
    """A raised cap admits the requests waiting for a slot at once; a lowered chunk budget is the
    next iteration's."""
    sim = Simulator({"gpu": 1}, end_s=1e9)
    pool = Pool(sim, 0, "d", "decode", A100, "gpu", 1, 0.0, EngineConfig(knobs=EngineKnobs(max_num_seqs=2)), None)
    sim.pools.append(pool)
    pool.set_target(1, 0.0)
    pool.on_ready(pool.replicas[0], 0.0)
    for _ in range(5):
        pool.router.submit(sim.requests.add(0.0, 100, 500, 0), 0.0)
    replica = pool.replicas[0]
    assert (replica.batch, len(replica.wait_queue)) == (2, 3)
    pool.set_knobs(EngineKnobs(max_num_seqs=4, max_batch_tokens=1024), 0.1)
    assert (replica.batch, len(replica.wait_queue)) == (4, 1)
    assert pool.prefill.max_batch_tokens == 1024 and pool.knobs.max_num_seqs == 4


def test_scenario_knobs_reach_the_pool_spec() -> None:
    data = yaml.safe_load((ROOT / "examples/diurnal-two-tenant/scenario.yaml").read_text())
    data["deployments"][0]["pools"]["decode"]["max_num_seqs"] = 99
    scenario = parse_scenario(data, base_dir=ROOT / "examples/diurnal-two-tenant")
    specs = {spec.name: spec for spec in scenario.deployment_specs()}
    assert specs["chat"].pools["decode"].max_num_seqs == 99
    assert specs["chat"].pools["prefill"].max_num_seqs == 256


def test_policy_knobs_reach_the_simulated_pools() -> None:
    """A tuning agent's targets carry its knobs, and the simulation applies them to the pool."""
    from fleet_planner.planning import Decision, Policy
    from fleet_sim.adapters.local import LocalAgentsPolicy
    from fleet_sim.runner import FleetSimulation
    from fleet_sim.workload import build_workload

    data = yaml.safe_load((ROOT / "examples/diurnal-two-tenant/scenario.yaml").read_text())
    data.update(duration="2m", planner={"policy": "local", "interval_s": 30, "tune_knobs": True})
    scenario = parse_scenario(data, base_dir=ROOT / "examples/diurnal-two-tenant")
    workload = build_workload(scenario)
    policy = LocalAgentsPolicy(scenario.deployment_specs(), 30, AgentOptions(tune_knobs=True))
    policy.agents["chat"].knob_tuner.knobs["decode"] = EngineKnobs(max_num_seqs=77)
    decision = policy.decide(0.0, None)
    assert {(t.deployment, t.role): t.knobs for t in decision.targets}[("chat", "decode")] == EngineKnobs(
        max_num_seqs=77
    )

    class Fixed(Policy):
        def decide(self, now_s: float, observation: object) -> Decision:
            return decision

    simulation = FleetSimulation(scenario, workload, Fixed(scenario.deployment_specs(), 30))
    simulation.run()
    pool = simulation.pools[("chat", "decode")]
    assert pool.knobs == EngineKnobs(max_num_seqs=77) and pool.admission.max_num_seqs == 77
    assert simulation.pools[("chat", "prefill")].knobs == EngineKnobs()


def test_a_material_profile_change_retunes_early() -> None:
    """Within the interval nothing is re-chosen unless the model moved by more than 10%; then, after
    a quarter of the interval, it is."""
    steady = _agent(_spec("disagg", "llama3.1-8b_h200_vllm_tp1"), knob_interval_s=1800)
    assert set(steady.knob_tuner.retune(0.0, steady.sizer, 20, CONV)) == {"decode"}  # more per replica
    assert steady.knob_tuner.retune(600.0, steady.sizer, 350, CONV) == {}  # not due: nothing moved
    shifted = _agent(_spec("disagg", "llama3.1-8b_h200_vllm_tp1"), knob_interval_s=1800)
    shifted.sizer.models["decode"] = A100
    assert shifted.knob_tuner.retune(0.0, shifted.sizer, 20, CONV) == {}
    shifted.sizer.models["decode"] = H200  # the corrected profile now says decoding is much faster
    assert shifted.knob_tuner.retune(300.0, shifted.sizer, 350, CONV) == {}  # moved, but too soon
    assert set(shifted.knob_tuner.retune(600.0, shifted.sizer, 350, CONV)) == {"decode"}


def test_a_raised_cap_may_return_to_the_configured_one_but_never_below() -> None:
    sla = SLA(ttft_ms=600, itl_ms=30)
    options = candidates(A100, "decode", sla, 1155, 211, EngineKnobs(max_num_seqs=420), EngineKnobs())
    assert [k.max_num_seqs for k in options] == [420, 256]  # A100's ITL limit (112) is below the floor


def test_knob_sweep_compares_a_setting_with_the_defaults_at_its_own_attainment() -> None:
    """``bench_knobs.py --sweep``'s verdict. Above the defaults' attainment a setting saves only
    what it costs less (a 0.01 point gain is not priced at a dearer headroom's GPU-hours); below
    it, it is compared with the line between the defaults' cheaper operating points either side
    (lower attainment targets), never credited more than it costs less than the reference."""
    from bench_knobs import frontier_gpu_hours, knob_saving

    def run(attainment: float, gpu_hours: float) -> dict[str, float]:
        return {"attainment": attainment, "gpu_hours": gpu_hours}

    defaults = [run(0.9985, 13.80), run(0.9993, 15.13), run(0.9979, 13.35), run(0.9970, 12.00)]
    assert frontier_gpu_hours(defaults, 0.9986) == pytest.approx(13.80 + (1 / 8) * 1.33)
    assert frontier_gpu_hours(defaults, 0.9999) is None
    assert knob_saving(defaults, run(0.9986, 13.80)) == pytest.approx(0.0)  # same cost, 0.01 point more
    assert knob_saving(defaults, run(0.9990, 13.50)) == pytest.approx(0.30)
    assert knob_saving(defaults, run(0.9982, 13.30)) == pytest.approx(12.00 + 0.8 * 1.80 - 13.30)  # lower hull
    assert knob_saving(defaults, run(0.9975, 13.40)) < 0  # the agent's own trade is cheaper there
    assert knob_saving(defaults, run(0.9960, 11.00)) == pytest.approx(1.0)  # the cheapest run reaching it
    assert knob_saving([run(0.9985, 13.80)], run(0.9960, 11.00)) == pytest.approx(2.80)
