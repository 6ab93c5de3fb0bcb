"""How well the agent's length model prices prefill: a matrix cell's real prompt lengths against
the lognormal the agent fits to their summary, and what a saturated simulated pool carries.

    python benchmarks/bench_length_fit.py "day-clients d1+d4 supply=0.67"
    python benchmarks/bench_length_fit.py "replay a1" --no-sim

Per deployment with a prefill (or aggregated) pool: the prompts' mean and quantiles, then one
replica's prefill rate (requests/s back to back, the profile's TTFT per prompt) averaged over the
real prompts, over the agent's fitted sample (``LoadEstimate.from_distribution`` on the real
summary, cut at the engine's context as the agent does) and at the mean prompt. Unless
``--no-sim``, the cell then runs under ``local`` and a disaggregated prefill pool's windows that
start and end with a full iteration's prompt tokens queued per replica (saturated) give what a
replica really carried: the median over those windows of tokens prefilled per second and ready
replica, over the window's mean prompt.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fleet_planner.perf import PerfModel, load_profile  # noqa: E402
from fleet_planner.planning import Distribution  # noqa: E402
from fleet_sim.adapters import local as local_adapter  # noqa: E402
from fleet_sim.matrix import build_scenario, cells  # noqa: E402
from fleet_sim.policies import make_policy  # noqa: E402
from fleet_sim.runner import FleetSimulation  # noqa: E402
from fleet_sim.workload import build_workload  # noqa: E402
from local_agent.sizing import LoadEstimate  # noqa: E402


def summary(values: np.ndarray) -> Distribution:
    p50, p90, p99 = np.quantile(values, [0.5, 0.9, 0.99])
    return Distribution(count=values.size, mean=float(values.mean()), p50=p50, p90=p90, p99=p99)


def rate(model: PerfModel, prompts: np.ndarray) -> float:
    """Requests/s one replica prefills back to back over these prompts."""
    return 1000.0 / float(np.mean(model.ttft_ms(prompts)))


def saturated_rates(scenario, workload) -> dict[str, list[float]]:
    """Per deployment, requests/s a ready replica of its prefill pool carried in windows that start
    and end with at least a full iteration's prompt tokens queued per replica (saturated)."""
    budget = {d.name: d.pools["prefill"].max_batch_tokens for d in scenario.deployments if "prefill" in d.pools}
    backlogged: dict[str, tuple[bool, int]] = {}
    rates: dict[str, list[float]] = {}
    step = local_adapter.step_agents

    def observing(agents, now_s, observation):
        for obs in observation.pools if observation is not None else []:
            if obs.role != "prefill":  # an aggregated replica's iterations also decode
                continue
            full = obs.ready > 0 and (obs.queued_prefill_tokens or 0.0) >= obs.ready * budget[obs.deployment]
            before = backlogged.get(obs.deployment)
            backlogged[obs.deployment] = (full, obs.ready)
            steady = before is not None and before == (True, obs.ready) and not obs.starting
            if steady and full and obs.scheduled_tokens_per_s and obs.input_tokens:
                per_replica = obs.scheduled_tokens_per_s / obs.ready / obs.input_tokens.mean
                rates.setdefault(obs.deployment, []).append(per_replica)
        return step(agents, now_s, observation)

    local_adapter.step_agents = observing
    try:
        FleetSimulation(scenario, workload, make_policy(scenario, workload)).run()
    finally:
        local_adapter.step_agents = step
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("cell", help="a matrix cell's full name (fleet_sim.matrix.cells())")
    parser.add_argument("--no-sim", action="store_true", help="skip the simulated saturated windows")
    args = parser.parse_args()
    chosen = [c for c in cells() if c.name == args.cell]
    if not chosen:
        raise SystemExit(f"no cell named {args.cell!r}")
    scenario = build_scenario(chosen[0], "local", Path(tempfile.gettempdir()) / "fleet-planner-matrix")
    workload = build_workload(scenario)
    carried = {} if args.no_sim else saturated_rates(scenario, workload)
    for deployment in scenario.deployments:
        role = "agg" if "agg" in deployment.pools else "prefill"
        model = PerfModel(load_profile(deployment.pools[role].profile))
        endpoint = workload.endpoints.index(deployment.endpoint)
        prompts = workload.input_tokens[workload.endpoint == endpoint].astype(float)
        fitted = LoadEstimate.from_distribution(
            1.0, summary(prompts), summary(prompts), samples=400, admitted_below=model.max_context
        ).input_tokens
        p50, p90, p99 = np.quantile(prompts, [0.5, 0.9, 0.99])
        f50, f90, f99 = np.quantile(fitted, [0.5, 0.9, 0.99])
        print(f"{deployment.name} ({role}, {deployment.pools[role].profile.name})")
        print(f"  prompts  real: mean {prompts.mean():7.0f}  p50 {p50:7.0f}  p90 {p90:7.0f}  p99 {p99:7.0f}")
        print(f"  prompts  fit : mean {fitted.mean():7.0f}  p50 {f50:7.0f}  p90 {f90:7.0f}  p99 {f99:7.0f}")
        print(
            f"  req/s a replica: real prompts {rate(model, prompts):.2f}, fitted sample {rate(model, fitted):.2f},"
            f" mean prompt {rate(model, np.array([prompts.mean()])):.2f}",
            end="",
        )
        windows = carried.get(deployment.name, [])
        if windows:
            print(f", carried when saturated {np.median(windows):.2f} (median of {len(windows)} windows)")
        elif args.no_sim or role == "agg":
            print()
        else:
            print(", never saturated under local")


if __name__ == "__main__":
    main()
