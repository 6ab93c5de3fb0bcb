"""The agent's decode pools learn from what their engines do (online profile correction): an
engine 1.5x slower than its profile lowers what the agent counts on one decode replica to carry;
with the correction off, nothing is learned."""

from __future__ import annotations

from pathlib import Path

from fleet_planner.perf import PerfModel, load_profile
from fleet_planner.planning import SLA, DeploymentSpec, Distribution, PoolObservation, PoolSpec
from local_agent.agent import AgentOptions, LocalAgent
from local_agent.models import AgentInput
from local_agent.perf_correction import CorrectedPerfModel

ROOT = Path(__file__).resolve().parents[1]
PROFILE = ROOT / "examples" / "profiles" / "llama3.1-8b_h100_vllm_tp1"
TICK = 30.0


def _spec() -> DeploymentSpec:
    pools = {
        role: PoolSpec(
            deployment="d",
            role=role,
            profile_path=str(PROFILE),
            gpu_type="h100",
            gpus_per_replica=1,
            min_replicas=1,
            max_replicas=16,
            initial_replicas=2,
            startup_s=60,
        )
        for role in ("prefill", "decode")
    }
    return DeploymentSpec(
        name="d", tenant="t", endpoint="e", mode="disagg", sla=SLA(ttft_ms=1000, itl_ms=30), pools=pools
    )


def _run(slowdown: float, correction: bool) -> LocalAgent:
    model = PerfModel(load_profile(PROFILE))
    agent = LocalAgent(_spec(), {"prefill": model, "decode": model}, AgentOptions(online_correction=correction), TICK)
    inputs = Distribution(count=300, mean=1000, p50=900, p90=1800, p99=3000)
    outputs = Distribution(count=300, mean=200, p50=150, p90=400, p99=600)
    for tick in range(40):
        ready = agent.targets()["decode"]
        batch = 8 + (tick % 5) * 12  # the engines run at several batch sizes over time
        itl = slowdown * model.itl_ms(batch, 1100.0)
        tokens_per_s = batch * ready * 1000.0 / itl
        common = dict(
            deployment="d", time_s=tick * TICK, window_s=TICK, starting=0, draining=0, pending=0, admitted=300
        )
        observations = [
            PoolObservation(
                role="prefill", ready=agent.targets()["prefill"], input_tokens=inputs, output_tokens=outputs, **common
            ),
            PoolObservation(
                role="decode",
                ready=ready,
                scheduled_tokens_per_s=tokens_per_s,
                itl_ms=Distribution(count=300, mean=itl, p50=itl, p90=itl, p99=itl),
                **common,
            ),
        ]
        agent.step(AgentInput(now_s=tick * TICK, observations=observations))
    return agent


def test_decode_model_learns_a_slower_engine_and_sizes_for_it() -> None:
    learned = _run(1.5, correction=True)
    decode = learned.models["decode"]
    assert isinstance(decode, CorrectedPerfModel)
    summary = decode.correction_summary()
    assert summary.decode_active and summary.samples_seen["decode"] >= 20
    factor = decode.itl_ms(32, 1100.0) / decode.base.itl_ms(32, 1100.0)
    assert 1.3 < factor < 1.7
    naive = _run(1.5, correction=False)
    assert not isinstance(naive.models["decode"], CorrectedPerfModel)
    # What one decode replica can carry (its bid to a planner, its sizing) drops with the engine.
    assert learned.decisions[-1].pools[1].replica_capacity_rps < 0.8 * naive.decisions[-1].pools[1].replica_capacity_rps


def test_an_engine_that_matches_its_profile_learns_no_correction() -> None:
    decode = _run(1.0, correction=True).models["decode"]
    factor = decode.itl_ms(32, 1100.0) / decode.base.itl_ms(32, 1100.0)
    assert 0.9 < factor < 1.1
