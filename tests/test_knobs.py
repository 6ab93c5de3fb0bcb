"""Engine knobs: the decode batch cap and the aggregated chunk budget hold the SLA."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from fleet_planner.knobs import EngineKnobs
from fleet_planner.perf import PerfModel, load_profile
from fleet_planner.perf.operating import agg_point
from fleet_planner.planning import SLA, DeploymentMode, DeploymentSpec, PoolRole, PoolSpec
from fleet_sim.closed_loop import run_closed_loop
from fleet_sim.scenario import parse_scenario
from local_agent.knobs import tune_knobs
from local_agent.sizing import EngineModel, LoadEstimate
from local_agent.sizing.deployment import size_deployment

ROOT = Path(__file__).resolve().parents[1]
PROFILES = ROOT / "examples/profiles"
A100 = PerfModel(load_profile(PROFILES / "llama3.1-8b_a100_vllm_tp1"))
H100 = PerfModel(load_profile(PROFILES / "llama3.1-8b_h100_vllm_tp1"))


def test_decode_cap_is_the_largest_batch_meeting_itl() -> None:
    knobs = tune_knobs(A100, "decode", SLA(ttft_ms=600, itl_ms=30), 1155, 211).knobs
    context = 1155 + 211 / 2
    assert A100.itl_ms(knobs.max_num_seqs, context) <= 30 < A100.itl_ms(knobs.max_num_seqs + 1, context)
    assert knobs.max_batch_tokens == EngineKnobs().max_batch_tokens


def test_decode_cap_holds_itl_under_overload_where_the_default_does_not() -> None:
    """Closed loop on one prefill + one decode replica with more clients than the cap: the tuned
    engine queues the excess (TTFT) and keeps ITL; the default batches everyone and misses it."""
    knobs = tune_knobs(A100, "decode", SLA(ttft_ms=600, itl_ms=30), 200, 600).knobs
    clients = knobs.max_num_seqs + 60
    run = {
        name: run_closed_loop(
            A100, mode="disagg", concurrency=clients, isl=200, osl=600, knobs=sim, requests_per_client=3
        )
        for name, sim in (("default", EngineKnobs()), ("tuned", knobs))
    }
    assert run["default"].tpot_ms > 30
    assert run["tuned"].tpot_ms <= 30
    assert run["tuned"].ttft_ms > run["default"].ttft_ms


def test_agg_budget_is_the_smallest_power_of_two_keeping_ttft() -> None:
    sla = SLA(ttft_ms=150, itl_ms=20)
    choice = tune_knobs(H100, "agg", sla, 3000, 300)
    knobs = choice.knobs
    assert knobs.max_num_seqs < 256
    point = agg_point(
        H100, 3000, 300, 150, 20, max_num_seqs=knobs.max_num_seqs, max_batch_tokens=knobs.max_batch_tokens
    )
    assert point.feasible and point.batch == knobs.max_num_seqs
    half = agg_point(
        H100, 3000, 300, 150, 20, max_num_seqs=knobs.max_num_seqs, max_batch_tokens=knobs.max_batch_tokens // 2
    )
    assert not half.feasible or half.batch != knobs.max_num_seqs
    assert "chunk" in choice.reason


@pytest.mark.parametrize("role", ["decode", "agg", "prefill"])
def test_unreachable_sla_or_prefill_keeps_the_defaults(role: PoolRole) -> None:
    knobs = tune_knobs(A100, role, SLA(ttft_ms=1, itl_ms=1), 1000, 200).knobs
    assert knobs == EngineKnobs()


def _spec(mode: DeploymentMode, **knobs: int) -> DeploymentSpec:
    roles: tuple[PoolRole, ...] = ("agg",) if mode == "agg" else ("prefill", "decode")
    pools = {
        role: PoolSpec(
            deployment="d",
            role=role,
            profile_path=str(PROFILES / "llama3.1-8b_a100_vllm_tp1"),
            gpu_type="a100",
            gpus_per_replica=1,
            min_replicas=0,
            max_replicas=64,
            initial_replicas=1,
            startup_s=60,
            **knobs,
        )
        for role in roles
    }
    return DeploymentSpec(name="d", tenant="t", endpoint="e", mode=mode, sla=SLA(ttft_ms=600, itl_ms=30), pools=pools)


@pytest.mark.parametrize(("mode", "role"), [("disagg", "decode"), ("agg", "agg")])
def test_sizing_uses_the_knobs_in_force(mode: DeploymentMode, role: PoolRole) -> None:
    """A pool whose engines may batch only 8 sequences needs more replicas than one batching 256."""
    load = LoadEstimate(rate_rps=20.0, input_tokens=np.full(200, 500.0), output_tokens=np.full(200, 300.0))
    models: dict[PoolRole, EngineModel] = {"prefill": A100, "decode": A100, "agg": A100}
    default = size_deployment(_spec(mode), models, load)
    capped = size_deployment(_spec(mode, max_num_seqs=8), models, load)
    assert capped[role] > default[role]


def test_scenario_knobs_reach_the_pool_spec(tmp_path: Path) -> None:
    text = (ROOT / "examples/diurnal-two-tenant/scenario.yaml").read_text()
    data = yaml.safe_load(text)
    data["deployments"][0]["pools"]["decode"]["max_num_seqs"] = 99
    scenario = parse_scenario(data, base_dir=ROOT / "examples/diurnal-two-tenant")
    specs = {spec.name: spec for spec in scenario.deployment_specs()}
    assert specs["chat"].pools["decode"].max_num_seqs == 99
    assert specs["chat"].pools["prefill"].max_num_seqs == 256
