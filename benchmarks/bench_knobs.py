"""GPU-hours and SLO attainment with tuned engine knobs vs engine defaults, same scenario and policy.

For every pool the knobs come from ``local_agent.knobs.tune_knobs`` at the trace's mean request
lengths (prompts above the endpoint's limit left out, as the gateway rejects them); the tuned run
is the same scenario with those ``max_num_seqs`` / ``max_batch_tokens`` per pool.

    python benchmarks/bench_knobs.py [SCENARIO] [--policy local] [--duration 6h]
"""

from __future__ import annotations

import argparse
import copy
import csv
import sys
from pathlib import Path
from typing import Any

import yaml

from fleet_planner.durations import parse_duration
from fleet_planner.perf import PerfModel, load_profile
from fleet_planner.planning import SLA
from fleet_sim.outputs.summary import summarize
from fleet_sim.scenario import parse_scenario
from fleet_sim.simulate import run_scenario
from local_agent.knobs import tune_knobs

ROOT = Path(__file__).resolve().parents[1]


def mean_lengths(path: Path, max_input: int | None) -> tuple[float, float]:
    """Mean input and output tokens of a length source, prompts the gateway rejects left out."""
    inputs, outputs = [], []
    with path.open() as handle:
        for row in csv.DictReader(handle):
            tokens = int(row["input_tokens"])
            if max_input is None or tokens <= max_input:
                inputs.append(tokens)
                outputs.append(int(row["output_tokens"]))
    return sum(inputs) / len(inputs), sum(outputs) / len(outputs)


def tuned(data: dict[str, Any], base: Path) -> tuple[dict[str, Any], list[str]]:
    """The scenario with every pool's knobs tuned, and one line per pool saying what was chosen."""
    out = copy.deepcopy(data)
    lines = []
    for deployment in out["deployments"]:
        trace = deployment["trace"]
        isl, osl = mean_lengths(base / trace["synth"]["lengths"], trace.get("max_input_tokens"))
        sla = SLA(**deployment["sla"])
        for role, pool in deployment["pools"].items():
            model = PerfModel(load_profile(base / pool["profile"]))
            knobs = tune_knobs(model, role, sla, isl, osl)
            pool["max_num_seqs"] = knobs.max_num_seqs
            pool["max_batch_tokens"] = knobs.max_batch_tokens
            lines.append(f"{deployment['name']}/{role}: {knobs.reason} (mean lengths {isl:.0f} in, {osl:.0f} out)")
    return out, lines


def run(data: dict[str, Any], base: Path, policy: str, duration: float) -> dict[str, Any]:
    scenario = parse_scenario(data, base_dir=base, overrides={"policy": policy, "duration": duration})
    return summarize(run_scenario(scenario))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenario", nargs="?", default=str(ROOT / "examples/diurnal-two-tenant/scenario.yaml"))
    parser.add_argument("--policy", default="local")
    parser.add_argument("--duration", default="1d")
    args = parser.parse_args(argv)
    path = Path(args.scenario)
    data = yaml.safe_load(path.read_text())
    duration = parse_duration(args.duration)
    tuned_data, lines = tuned(data, path.parent)
    print(f"{data['name']}, policy {args.policy}, {args.duration}")
    for line in lines:
        print(f"  tuned {line}")
    results = {"engine defaults": run(data, path.parent, args.policy, duration)}
    results["tuned knobs"] = run(tuned_data, path.parent, args.policy, duration)
    print(f"{'':16s} {'deployment':14s} {'SLO attainment':>15s} {'GPU-hours':>10s}")
    for label, summary in results.items():
        for name, dep in summary["deployments"].items():
            print(f"{label:16s} {name:14s} {dep['slo_attainment'] * 100:14.2f}% {dep['gpu_hours']:10.1f}")
        fleet = summary["fleet"]
        print(f"{label:16s} {'fleet':14s} {fleet['slo_attainment'] * 100:14.2f}% {fleet['gpu_hours']:10.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
