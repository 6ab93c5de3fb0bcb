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
from fleet_sim.matrix import build_scenario, cells  # noqa: E402
from fleet_sim.policies import make_policy  # noqa: E402
from fleet_sim.runner import FleetSimulation, distribution  # noqa: E402
from fleet_sim.workload import build_workload  # noqa: E402
from local_agent.decide.sizer import prefill_saturated  # noqa: E402
from local_agent.sizing import LoadEstimate  # noqa: E402


def rate(model: PerfModel, prompts: np.ndarray) -> float:
    """Requests/s one replica prefills back to back over these prompts."""
    return 1000.0 / float(np.mean(model.ttft_ms(prompts)))


def saturated_rates(scenario, workload) -> dict[str, list[float]]:
    """Per deployment, requests/s a ready replica of its prefill pool carried in windows that start
    and end with at least a full iteration's prompt tokens queued per replica (saturated)."""
    budget = {d.name: d.pools["prefill"].max_batch_tokens for d in scenario.deployments if "prefill" in d.pools}
    backlogged: dict[str, tuple[bool, int]] = {}
    rates: dict[str, list[float]] = {}
    policy = make_policy(scenario, workload)
    decide = policy.decide

    def observing(now_s, observation):
        for obs in observation.pools if observation is not None else []:
            if obs.role != "prefill":  # an aggregated replica's iterations also decode
                continue
            full = prefill_saturated(obs, budget[obs.deployment])
            before = backlogged.get(obs.deployment)
            backlogged[obs.deployment] = (full, obs.ready)
            steady = before is not None and before == (True, obs.ready) and not obs.starting
            if steady and full and obs.scheduled_tokens_per_s and obs.input_tokens:
                per_replica = obs.scheduled_tokens_per_s / obs.ready / obs.input_tokens.mean
                rates.setdefault(obs.deployment, []).append(per_replica)
        return decide(now_s, observation)

    policy.decide = observing  # this run's policy only: it sees every observation the agents see
    FleetSimulation(scenario, workload, policy).run()
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
        prompts = workload.trace(deployment.endpoint).input_tokens.astype(float)
        real = distribution(prompts.tolist())  # the summary the simulator gives the agent
        assert real is not None, f"{deployment.name}: no prompts"
        fitted = LoadEstimate.from_distribution(1.0, real, real, samples=400, admitted_below=model.max_context)
        fit = distribution(fitted.input_tokens.tolist())
        assert fit is not None
        print(f"{deployment.name} ({role}, {deployment.pools[role].profile.name})")
        for label, d in (("real", real), ("fit ", fit)):
            print(f"  prompts  {label}: mean {d.mean:7.0f}  p50 {d.p50:7.0f}  p90 {d.p90:7.0f}  p99 {d.p99:7.0f}")
        print(
            f"  req/s a replica: real prompts {rate(model, prompts):.2f},"
            f" fitted sample {rate(model, fitted.input_tokens):.2f},"
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
