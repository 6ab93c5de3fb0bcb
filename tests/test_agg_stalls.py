"""The aggregated curve's ITL attainment where prompts are long: a prompt prefilled while a request
decodes stalls it by the prompt's whole cost, which a short decode cannot absorb."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fleet_planner.perf import PerfModel, load_profile
from fleet_planner.planning import SLA
from fleet_sim.matrix import PROFILES, _sources
from fleet_sim.policies import make_policy
from fleet_sim.runner import FleetSimulation
from fleet_sim.scenario import parse_scenario
from fleet_sim.workload import build_workload
from local_agent.sizing import LoadEstimate, agg_curve
from local_agent.sizing.curves import _route_table

PROFILE = PROFILES / "llama3.1-8b_h100_vllm_tp1"
SLA_ = SLA(ttft_ms=2500, itl_ms=30)
SETTLE_S = 300.0


def _simulated(tmp: Path, replicas: int, rate_rps: float) -> tuple[float, np.ndarray, np.ndarray]:
    """SLO attainment of a static aggregated H100 pool on Mooncake's long prompts at a flat
    Poisson rate, and the admitted requests' lengths."""
    flat = tmp / "flat.csv"
    flat.write_text("window_start_s,total_rate_rps\n0,1\n86400,1\n")
    lengths = _sources(tmp).lengths_path("long")
    pool = {"profile": str(PROFILE), "gpu_type": "h100", "min": 1, "max": replicas, "initial": replicas}
    data = {
        "name": "long prompts",
        "duration": "40m",
        "seed": 1,
        "gpus": {"h100": replicas},
        "planner": {"policy": "static", "interval_s": 30},
        "deployments": [
            {
                "name": "h1",
                "tenant": "t",
                "endpoint": "e",
                "mode": "agg",
                "sla": {"ttft_ms": SLA_.ttft_ms, "itl_ms": SLA_.itl_ms},
                "trace": {
                    "synth": {
                        "rate": str(flat),
                        "peak_rps": rate_rps,
                        "lengths": str(lengths),
                        "lengths_format": "csv",
                        "arrival": "poisson",
                    }
                },
                "pools": {"agg": pool},
            }
        ],
    }
    scenario = parse_scenario(data, base_dir=tmp)
    workload = build_workload(scenario)
    requests = FleetSimulation(scenario, workload, make_policy(scenario, workload)).run().requests
    kept = requests.arrival_s >= SETTLE_S
    met = (requests.ttft_ms[kept] <= SLA_.ttft_ms) & ~(requests.itl_ms[kept] > SLA_.itl_ms)
    return float(met.mean()), requests.input_tokens[kept], requests.output_tokens[kept]


@pytest.mark.parametrize("replicas", [3, 5])
def test_long_prompts_attainment_matches_the_simulator(tmp_path: Path, replicas: int) -> None:
    """At 1 req/s a replica the simulator meets the SLA for 97.2% (3 replicas) and 97.9% (5);
    the compound-normal ITL model said 99.0% for both (a pool sized for 99% missed 2 points),
    because a short answer after a long prompt is stalled by the prompts queued behind it."""
    simulated, inputs, outputs = _simulated(tmp_path, replicas, float(replicas))
    load = LoadEstimate.from_samples(inputs, outputs, float(replicas))
    curve = agg_curve(PerfModel(load_profile(PROFILE)), load, SLA_, max_replicas=replicas)
    assert simulated < 0.985  # the misses are there to be predicted
    assert curve.attainment[replicas] == pytest.approx(simulated, abs=0.01)


def test_the_router_avoids_a_replica_holding_a_long_request() -> None:
    """The chance that a new prompt goes to the replica of a request still prefilling: every
    prompt with one replica, 1/N for a request that adds nothing to its replica's load, less
    the more its tokens stand out against the loads' spread."""
    table = _route_table(8)
    assert table[0] == pytest.approx(1.0)  # one replica: every prompt
    for n in range(2, 9):
        assert table[n - 1, 0] == pytest.approx(1.0 / n, rel=0.02)
        assert np.all(np.diff(table[n - 1]) <= 1e-12)  # a larger request: fewer prompts behind it
        assert table[n - 1, -1] < 0.01 / n
