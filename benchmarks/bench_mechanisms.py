"""What each of the local agent's burst and stability mechanisms buys, on some scenarios.

    python benchmarks/bench_mechanisms.py benchmarks/scenarios/*.yaml

Runs static-peak and the oracle once per scenario, then the local agent once per variant: all
mechanisms off (the agent as it was), each mechanism alone, and all of them (the defaults).
Prints per scenario and variant: GPU-hours, worst deployment's SLO attainment, ratio to the
oracle, and scaling-direction reversals per deployment-hour (the worst deployment's).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_policies import reversals_per_hour  # noqa: E402

from fleet_sim.outputs import summarize  # noqa: E402
from fleet_sim.policies import make_policy  # noqa: E402
from fleet_sim.runner import FleetSimulation  # noqa: E402
from fleet_sim.scenario import load_scenario  # noqa: E402
from fleet_sim.workload import build_workload  # noqa: E402

OFF = {
    "down_margin": 0.0,
    "burst_windows": 0,
    "ttft_correction": False,
    "miss_memory_s": 0.0,
    "stabilization_window_s": 0.0,
}
VARIANTS: dict[str, dict] = {
    "off": OFF,
    "burst": {**OFF, "burst_windows": 40},
    "ttft": {**OFF, "ttft_correction": True},
    "miss": {**OFF, "miss_memory_s": 1800.0},
    "window": {**OFF, "stabilization_window_s": 300.0},
    "band": {**OFF, "down_margin": 0.2},
    "ttft+miss": {**OFF, "ttft_correction": True, "miss_memory_s": 1800.0},
    "ttft+miss+band": {**OFF, "ttft_correction": True, "miss_memory_s": 1800.0, "down_margin": 0.2},
    "ttft+miss+band+window": {
        **OFF,
        "ttft_correction": True,
        "miss_memory_s": 1800.0,
        "down_margin": 0.2,
        "stabilization_window_s": 300.0,
    },
    "all": {
        "down_margin": 0.2,
        "burst_windows": 40,
        "ttft_correction": True,
        "miss_memory_s": 1800.0,
        "stabilization_window_s": 300.0,
    },
    "defaults": {},
}


def run(path: str, policy: str, options: dict) -> tuple[float, float, float]:
    scenario = load_scenario(path, overrides={"policy": policy})
    if options:
        planner = scenario.planner
        planner = type(planner)(**{**planner.model_dump(exclude={"options"}), **planner.options, **options})
        scenario = scenario.model_copy(update={"planner": planner})
    workload = build_workload(scenario)
    result = FleetSimulation(scenario, workload, make_policy(scenario, workload)).run()
    summary = summarize(result)
    worst = min(d["slo_attainment"] for d in summary["deployments"].values())
    return summary["fleet"]["gpu_hours"], worst, max(reversals_per_hour(result).values())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scenarios", nargs="+")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    args = parser.parse_args()
    print(f"{'scenario':<28}{'policy':<20}{'GPU-h':>8}{'worst SLO':>11}{'vs oracle':>11}{'rev/h':>7}")
    for path in args.scenarios:
        name = Path(path).stem
        oracle = run(path, "oracle", {})
        rows = [("static-peak", run(path, "static-peak", {})), ("oracle *", oracle)]
        rows += [(f"local {variant}", run(path, "local", VARIANTS[variant])) for variant in args.variants]
        for label, (gpu_h, worst, rev) in rows:
            print(f"{name:<28}{label:<20}{gpu_h:>8.2f}{worst * 100:>10.2f}%{gpu_h / oracle[0]:>11.2f}{rev:>7.1f}")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
