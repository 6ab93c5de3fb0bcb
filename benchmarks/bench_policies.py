"""Compare planning policies on one scenario: GPU-hours and SLO attainment, fleet and per deployment.

    python benchmarks/bench_policies.py examples/diurnal-two-tenant/scenario.yaml --policies static-peak oracle local
    python benchmarks/bench_policies.py "day-clients d1+d4 contended" --cell --policies global --lend 'tenant-0/*'

Each policy replays the same traffic (same seed); the oracle is clairvoyant and labelled so. Ratios
are against the first policy named and against `oracle` when it is in the list. Also prints the
number of scaling direction reversals per deployment-hour and of target (grant) changes per
pool-hour, per-tenant attainment and, when the scenario names a tenant policy file, the
priority-weighted attainment.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fleet_planner.cli import guarded  # noqa: E402
from fleet_planner.durations import parse_duration  # noqa: E402
from fleet_planner.yaml_input import load_yaml  # noqa: E402
from fleet_sim.adapters.planner import GlobalPolicy  # noqa: E402
from fleet_sim.matrix import build_scenario, cells  # noqa: E402
from fleet_sim.outputs import priority_weighted_attainment, scaling_stability, summarize, write_outputs  # noqa: E402
from fleet_sim.policies import make_policy  # noqa: E402
from fleet_sim.runner import FleetSimulation  # noqa: E402
from fleet_sim.scenario import Scenario, load_scenario  # noqa: E402
from fleet_sim.workload import build_workload  # noqa: E402
from global_planner.policy_file import load_policy_file  # noqa: E402


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 100:.2f}%"


def _scenario(args: argparse.Namespace, policy: str, overrides: dict) -> Scenario:
    """The scenario file under ``policy``, or the matrix cell named ``args.scenario`` (else the
    one whose name contains it: a cell's name can be part of another's, e.g. ``bursty-fit d1``)."""
    if not args.cell:
        return load_scenario(args.scenario, overrides={**overrides, "policy": policy})
    found = [cell for cell in cells() if args.scenario == cell.name] or [
        cell for cell in cells() if args.scenario in cell.name
    ]
    if len(found) != 1:
        names = ", ".join(cell.name for cell in found) or "none"
        raise SystemExit(f"--cell {args.scenario!r} must match exactly one matrix cell (matched: {names})")
    cell = found[0]
    if "seed" in overrides:  # the cell on other traffic, as ``bench_matrix.py --seed``
        cell = dataclasses.replace(cell, seed=overrides["seed"])
        overrides = {k: v for k, v in overrides.items() if k != "seed"}
    scenario = build_scenario(cell, policy, Path(tempfile.gettempdir()) / "fleet-planner-matrix")
    return scenario.model_copy(update=overrides) if overrides else scenario


def _lending(scenario: Scenario, selectors: list[str], folder: Path) -> Scenario:
    """The scenario with its tenant policy file copied to ``folder`` plus one ``fill_idle``
    override per selector (idle GPUs lent above those pools' bids; docs/global-planner.md)."""
    name = scenario.planner.options.get("policy_file")
    if not name:
        raise SystemExit("--lend needs a scenario whose planner names a policy_file (a global scenario)")
    data = load_yaml((scenario.base_dir / name).read_text(encoding="utf-8"))
    data["deployments"] = [*data.get("deployments", []), *({"selector": s, "fill_idle": True} for s in selectors)]
    copy = folder / f"lending-{Path(name).name}"
    copy.write_text(yaml.safe_dump(data), encoding="utf-8")
    return _with_planner(scenario, policy_file=str(copy))


def _with_planner(scenario: Scenario, **settings: object) -> Scenario:
    """The scenario with these planner settings (fields or agent options) on top of its own,
    validated again as a scenario file's ``planner:`` would be."""
    planner = scenario.planner
    merged = {**planner.model_dump(exclude={"options"}), **planner.options, **settings}
    return scenario.model_copy(update={"planner": type(planner)(**merged)})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scenario", help="a scenario file, or with --cell a substring of a matrix cell's name")
    parser.add_argument("--cell", action="store_true", help="SCENARIO names a cell of fleet_sim.matrix.cells()")
    parser.add_argument("--policies", nargs="+", default=["static-peak", "oracle", "local"])
    parser.add_argument("--duration", help="override the scenario duration (e.g. 6h)")
    parser.add_argument(
        "--seed", type=int, help="override the scenario's seed (other traffic; with --cell, the cell's own seed)"
    )
    parser.add_argument("--out", help="write each policy's outputs under this folder")
    parser.add_argument(
        "--option",
        action="append",
        default=[],
        help="planner option KEY=JSON for every policy (e.g. predictor='\"arima\"')",
    )
    parser.add_argument(
        "--lend",
        action="append",
        default=[],
        metavar="SELECTOR",
        help="lend idle GPUs above the bids of these pools (tenant/deployment[/role], e.g. 'tenant-0/*'): "
        "a fill_idle override added to a copy of the scenario's policy file",
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="bench-policies-"))

    overrides: dict = {"duration": parse_duration(args.duration)} if args.duration else {}
    if args.seed is not None:
        overrides["seed"] = args.seed
    rows = {}
    for policy in args.policies:
        scenario = _scenario(args, policy, overrides)
        if args.option:
            options = {key: json.loads(value) for key, value in (item.split("=", 1) for item in args.option)}
            scenario = _with_planner(scenario, policy=policy, **options)
        if args.lend and policy == "global":
            scenario = _lending(scenario, args.lend, scratch)
        workload = build_workload(scenario)
        arbiter = make_policy(scenario, workload)
        result = FleetSimulation(scenario, workload, arbiter).run()
        summary = write_outputs(result, Path(args.out) / policy) if args.out else summarize(result)
        stability = scaling_stability(result)
        policy_file = scenario.planner.options.get("policy_file")
        priorities = (
            {name: t.priority for name, t in load_policy_file(scenario.base_dir / policy_file).tenants.items()}
            if policy_file
            else None
        )
        reversals = {name: d.reversals_per_hour or 0.0 for name, d in stability.deployments.items()}
        changes = {name: d.target_changes_per_pool_hour or 0.0 for name, d in stability.deployments.items()}
        rows[policy] = {
            "gpu_hours": summary["fleet"]["gpu_hours"],
            "slo_attainment": summary["fleet"]["slo_attainment"],
            "budget_violations": summary["fleet"]["budget_violations"],
            "clairvoyant": summary["clairvoyant"],
            "tenants": {name: t["slo_attainment"] for name, t in summary["tenants"].items()},
            "priority_weighted": priority_weighted_attainment(summary, priorities) if priorities else None,
            "max_changes_per_pool_hour": max(changes.values(), default=0.0),
            "max_reversals_per_hour": max(reversals.values(), default=0.0),
            "split_moves": dict(arbiter.state.splits.changes) if isinstance(arbiter, GlobalPolicy) else None,
            "deployments": {
                name: {
                    "slo_attainment": d["slo_attainment"],
                    "gpu_hours": d["gpu_hours"],
                    "reversals_per_hour": reversals[name],
                    "changes_per_pool_hour": changes[name],
                }
                for name, d in summary["deployments"].items()
            },
        }
        print(f"... {policy} done ({result.wall_seconds:.0f} s)", file=sys.stderr)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    first = args.policies[0]
    print(f"scenario {args.scenario}")
    columns = f"{'policy':<14}{'GPU-hours':>11}{'SLO att.':>10} {'vs ' + first:>12}{'vs oracle':>11}"
    print(f"{columns}  per deployment (attainment, GPU-h, reversals/h, changes/pool-h)")
    for policy, row in rows.items():
        ratio_first = row["gpu_hours"] / rows[first]["gpu_hours"] if rows[first]["gpu_hours"] else float("nan")
        ratio_oracle = (
            row["gpu_hours"] / rows["oracle"]["gpu_hours"]
            if "oracle" in rows and rows["oracle"]["gpu_hours"]
            else float("nan")
        )
        label = policy + (" *" if row["clairvoyant"] else "")
        per = "; ".join(
            f"{name} {_pct(d['slo_attainment'])} {d['gpu_hours']:.1f} {d['reversals_per_hour']:.1f}"
            f" {d['changes_per_pool_hour']:.1f}"
            for name, d in row["deployments"].items()
        )
        fleet = (
            f"{row['gpu_hours']:>11.1f}{row['slo_attainment'] * 100:>9.2f}% {ratio_first:>12.2f}{ratio_oracle:>11.2f}"
        )
        print(f"{label:<14}{fleet}  {per}")
        tenants = ", ".join(f"{name} {_pct(value)}" for name, value in row["tenants"].items())
        weighted = (
            f"; priority-weighted {_pct(row['priority_weighted'])}" if row["priority_weighted"] is not None else ""
        )
        print(f"{'':<14}tenants: {tenants}{weighted}")
        print(
            f"{'':<14}worst deployment: {row['max_reversals_per_hour']:.1f} reversals/h,"
            f" {row['max_changes_per_pool_hour']:.1f} changes/pool-h"
        )
        if row["split_moves"] is not None:
            moves = ", ".join(f"{name} {count}" for name, count in row["split_moves"].items()) or "none"
            print(f"{'':<14}shared endpoints' split moves: {moves}")
    if any(row["clairvoyant"] for row in rows.values()):
        print("* clairvoyant (knows the future load): the physical limit, not a real policy")
    return 0


if __name__ == "__main__":
    sys.exit(guarded(main))
