"""GPU-hours and SLO attainment with tuned engine knobs vs engine defaults, same traffic and policy.

Runs every scenario twice on the same workload: once with the engine defaults (8192 batched
tokens, 256 sequences), once with each pool's knobs from ``local_agent.knobs.tune_knobs`` at the
endpoint's mean request lengths (prompts the engine rejects left out) and the deployment's SLA.
The scenarios are the matrix's diurnal cells (``fleet_sim.matrix`` cells named ``day-...``,
unchanged) and the repository's diurnal example.

    python benchmarks/bench_knobs.py [--cells day-] [--example] [--scenario FILE ...] [--policy local]
                                     [--duration 6h] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fleet_planner.durations import parse_duration  # noqa: E402
from fleet_planner.knobs import EngineKnobs  # noqa: E402
from fleet_planner.perf import PerfModel, load_profile  # noqa: E402
from fleet_sim.matrix import build_scenario, cells  # noqa: E402
from fleet_sim.outputs.summary import summarize  # noqa: E402
from fleet_sim.policies import make_policy  # noqa: E402
from fleet_sim.runner import FleetSimulation  # noqa: E402
from fleet_sim.scenario import Scenario, load_scenario  # noqa: E402
from fleet_sim.workload import Workload, build_workload  # noqa: E402
from local_agent.knobs import tune_knobs  # noqa: E402

EXAMPLE = ROOT / "examples/diurnal-two-tenant/scenario.yaml"


def mean_lengths(workload: Workload, endpoint: str, limit: int | None) -> tuple[float, float]:
    """Mean input and output tokens of one endpoint's requests that the engine accepts."""
    index = workload.endpoints.index(endpoint)
    mask = workload.endpoint == index
    if limit is not None:
        mask &= workload.input_tokens <= limit
    return float(workload.input_tokens[mask].mean()), float(workload.output_tokens[mask].mean())


def tuned(scenario: Scenario, workload: Workload) -> tuple[Scenario, list[str]]:
    """The scenario with every pool's knobs tuned, and one line per pool saying what was chosen."""
    deployments, lines = [], []
    for deployment in scenario.deployments:
        sla, source = scenario.endpoint_of(deployment.name)
        pools = {}
        for role, pool in deployment.pools.items():
            model = PerfModel(load_profile(pool.profile))
            limits = [v for v in (source.max_input_tokens, model.max_context) if v]
            isl, osl = mean_lengths(workload, deployment.endpoint, min(limits) if limits else None)
            choice = tune_knobs(model, role, sla, isl, osl, defaults=EngineKnobs.of(pool))
            pools[role] = pool.model_copy(update=choice.knobs.model_dump())
            lines.append(f"{deployment.name}/{role}: {choice.reason} (mean {isl:.0f} in, {osl:.0f} out)")
        deployments.append(deployment.model_copy(update={"pools": pools}))
    return scenario.model_copy(update={"deployments": deployments}), lines


def run(scenario: Scenario, workload: Workload) -> dict[str, Any]:
    began = time.perf_counter()
    summary = summarize(FleetSimulation(scenario, workload, make_policy(scenario, workload)).run())
    summary["wall_s"] = time.perf_counter() - began
    return summary


def compare(label: str, scenario: Scenario) -> dict[str, Any]:
    """Defaults vs tuned knobs on one scenario; prints the table rows as they come."""
    workload = build_workload(scenario)
    tuned_scenario, lines = tuned(scenario, workload)
    print(f"\n{label}: {len(workload)} requests, policy {scenario.planner.policy}", flush=True)
    for line in lines:
        print(f"  tuned {line}")
    out: dict[str, Any] = {"scenario": label, "knobs": lines}
    for name, variant in (("engine defaults", scenario), ("tuned knobs", tuned_scenario)):
        summary = run(variant, workload)
        out[name] = summary
        for deployment, figures in summary["deployments"].items():
            _row(name, deployment, figures["slo_attainment"], figures["gpu_hours"])
        fleet = summary["fleet"]
        _row(name, "fleet", fleet["slo_attainment"], fleet["gpu_hours"], f"  ({summary['wall_s']:.0f} s)")
    return out


def _row(variant: str, deployment: str, attainment: float, gpu_hours: float, note: str = "") -> None:
    print(f"  {variant:16s} {deployment:14s} {attainment * 100:8.2f}% {gpu_hours:9.1f} GPU-h{note}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--cells", default="day-", help="matrix cells whose name contains this ('' for none)")
    parser.add_argument("--example", action="store_true", help=f"also {EXAMPLE.relative_to(ROOT)} (~25 min)")
    parser.add_argument("--scenario", type=Path, action="append", default=[], help="another scenario file")
    parser.add_argument("--policy", default="local")
    parser.add_argument("--duration", help="shorten every run (e.g. 6h)")
    parser.add_argument("--json", type=Path, help="write the summaries here")
    args = parser.parse_args(argv)
    overrides: dict[str, Any] = {"policy": args.policy}
    if args.duration:
        overrides["duration"] = parse_duration(args.duration)
    workdir = Path(tempfile.mkdtemp(prefix="bench_knobs_"))
    results = []
    chosen = [cell for cell in cells() if args.cells and args.cells in cell.name]
    for cell in chosen:
        scenario = build_scenario(cell, args.policy, workdir)
        if args.duration:
            scenario = scenario.model_copy(update={"duration_s": overrides["duration"]})
        results.append(compare(cell.name, scenario))
    for path in [*args.scenario, *([EXAMPLE] if args.example else [])]:
        results.append(compare(str(path), load_scenario(path, overrides=overrides)))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
