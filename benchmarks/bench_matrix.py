"""The scenario matrix: every cell under static-peak, the (searched, valid) oracle, the local agent,
and fcfs/global where tenants contend; one table, one plot, and the issue's acceptance per cell.

    python benchmarks/bench_matrix.py [--quick] [--cells SUBSTRING] [--workers 2] [--out DIR]
                                      [--option KEY=JSON ...]

Cells come from ``fleet_sim.matrix.cells()`` (see docs/matrix.md); ``--quick`` runs two tiny cells
(CI). ``--option`` sets a planner option for the agent policies (local, fcfs, global), e.g.
``--option headroom=1.2``. Writes ``matrix.json``, ``matrix.md`` (the table) and ``matrix.html``
(the plot) under ``--out``. Acceptance, for the local agent in every cell:

- A: per deployment, >= 99% SLO attainment where the oracle reaches >= 99.5%, else within 1 point
  of the oracle;
- B: GPU-hours <= 1.15x the oracle's, and <= 0.85x static-peak's where the oracle is <= 0.75x it;
- C: <= 1 scaling-direction reversal per deployment-hour, every deployment;
- D: the oracle reaches its target or is marked unreachable.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fleet_planner.planning import Policy  # noqa: E402
from fleet_planner.traces.dispersion import index_of_dispersion  # noqa: E402
from fleet_sim.baselines import StaticPeakPolicy, oracle_below_peak  # noqa: E402
from fleet_sim.matrix import Cell, build_scenario, cells, changes_per_pool_hour, quick_cells, reversals_per_hour  # noqa: E402
from fleet_sim.outputs import summarize  # noqa: E402
from fleet_sim.policies import make_policy  # noqa: E402
from fleet_sim.runner import FleetSimulation  # noqa: E402
from fleet_sim.workload import build_workload  # noqa: E402

AGENT_POLICIES = ("local", "fcfs", "global")


def run_cell(job: tuple[Cell, Path, dict[str, Any]]) -> dict[str, Any]:
    """Every policy of one cell: figures per policy and per deployment."""
    cell, workdir, options = job
    row: dict[str, Any] = {"cell": cell.name, "half": cell.half, "span": cell.span, "policies": {}}
    peak: Policy | None = None
    for policy in cell.policies:
        began = time.perf_counter()
        scenario = build_scenario(cell, policy, workdir)
        if policy in AGENT_POLICIES and options:
            planner = scenario.planner.model_copy(update={})
            planner = type(planner)(**{**planner.model_dump(), **options})
            scenario = scenario.model_copy(update={"planner": planner})
        workload = build_workload(scenario)
        if "idc_60s" not in row:
            row["requests"] = len(workload)
            row["idc_10s"] = index_of_dispersion(workload.arrival_s, 10.0, scenario.duration_s)
            row["idc_60s"] = index_of_dispersion(workload.arrival_s, 60.0, scenario.duration_s)
        chosen: Policy
        if policy == "oracle" and isinstance(peak, StaticPeakPolicy) and peak.search is not None:
            # The oracle is capped by static-peak's searched counts: search those once per cell.
            chosen = oracle_below_peak(scenario, workload, peak.search.target, peak)
        else:
            chosen = make_policy(scenario, workload)
        if policy == "static-peak":
            peak = chosen
        result = FleetSimulation(scenario, workload, chosen).run()
        summary = summarize(result)
        reversals = reversals_per_hour(result)
        search = getattr(chosen, "search", None)
        row["policies"][policy] = {
            "gpu_hours": summary["fleet"]["gpu_hours"],
            "attainment": {name: d["slo_attainment"] for name, d in summary["deployments"].items()},
            "reversals_per_hour": reversals,
            "changes_per_pool_hour": changes_per_pool_hour(result),
            "wall_s": time.perf_counter() - began,
            "search": None
            if search is None
            else {"runs": search.runs, "reached": search.reached, "unreachable": search.unreachable},
        }
    row["acceptance"] = acceptance(row["policies"])
    return row


def acceptance(policies: dict[str, Any]) -> dict[str, bool]:
    """The issue's acceptance points for the local agent in one cell."""
    local, oracle, peak = policies["local"], policies["oracle"], policies["static-peak"]
    slo = all(
        (att or 0.0) >= 0.99
        if (oracle["attainment"][name] or 0.0) >= 0.995
        else (att or 0.0) >= (oracle["attainment"][name] or 0.0) - 0.01
        for name, att in local["attainment"].items()
    )
    cost = local["gpu_hours"] <= 1.15 * oracle["gpu_hours"]
    if oracle["gpu_hours"] <= 0.75 * peak["gpu_hours"]:
        cost = cost and local["gpu_hours"] <= 0.85 * peak["gpu_hours"]
    stable = all(r <= 1.0 for r in local["reversals_per_hour"].values())
    oracle_ok = bool(oracle["search"] and oracle["search"]["reached"])
    return {"A_slo": slo, "B_cost": cost, "C_stable": stable, "D_oracle": oracle_ok}


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 100:.1f}"


def table(rows: list[dict[str, Any]]) -> str:
    """One markdown table: a line per (cell, policy)."""
    lines = [
        "| half | cell | IDC 60 s | policy | GPU-h | vs oracle | SLO att. % per deployment | reversals/dep-h (max) "
        "| changes/pool-h | wall s | A B C D |",
        "|---|---|---:|---|---:|---:|---|---:|---:|---:|---|",
    ]
    for row in rows:
        oracle = row["policies"]["oracle"]["gpu_hours"]
        verdict = " ".join("pass" if ok else "FAIL" for ok in row["acceptance"].values())
        for policy, p in row["policies"].items():
            note = ""
            if p["search"] is not None:
                note = f" ({p['search']['runs']} runs" + (
                    f", unreachable: {', '.join(p['search']['unreachable'])})" if p["search"]["unreachable"] else ")"
                )
            attainment = ", ".join(_pct(a) for a in p["attainment"].values())
            lines.append(
                f"| {row['half']} | {row['cell']} | {row['idc_60s']:.1f} | {policy}{note} | {p['gpu_hours']:.1f} "
                f"| {p['gpu_hours'] / oracle if oracle else float('nan'):.2f} | {attainment} "
                f"| {max(p['reversals_per_hour'].values()):.1f} | {p['changes_per_pool_hour']:.1f} | {p['wall_s']:.0f} "
                f"| {verdict if policy == 'local' else ''} |"
            )
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Local's GPU-hours vs oracle against its worst deployment's attainment, per cell (plotly HTML)."""
    import plotly.graph_objects as go

    figure = go.Figure()
    for half, symbol in (("tuning", "circle"), ("held-out", "diamond"), ("quick", "square")):
        mine = [r for r in rows if r["half"] == half]
        if not mine:
            continue
        figure.add_trace(
            go.Scatter(
                x=[r["policies"]["local"]["gpu_hours"] / r["policies"]["oracle"]["gpu_hours"] for r in mine],
                y=[100 * min(a or 0.0 for a in r["policies"]["local"]["attainment"].values()) for r in mine],
                mode="markers",
                marker={"symbol": symbol, "size": 10},
                name=half,
                text=[r["cell"] for r in mine],
            )
        )
    figure.add_vline(x=1.15, line_dash="dash", annotation_text="1.15x oracle")
    figure.add_hline(y=99.0, line_dash="dash", annotation_text="99%")
    figure.update_layout(
        title="Local agent per matrix cell: cost vs the oracle and worst-deployment SLO attainment",
        xaxis_title="local GPU-hours / oracle GPU-hours",
        yaxis_title="worst deployment's SLO attainment (%)",
    )
    figure.write_html(path, include_plotlyjs="cdn")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="two tiny cells (CI)")
    parser.add_argument("--cells", help="only cells whose name contains this")
    parser.add_argument("--workers", type=int, default=2, help="processes (at most 2 on a shared machine)")
    parser.add_argument("--out", type=Path, default=Path("matrix-out"))
    parser.add_argument("--option", action="append", default=[], help="agent planner option KEY=JSON")
    args = parser.parse_args()
    options = {}
    for item in args.option:
        key, _, value = item.partition("=")
        options[key] = json.loads(value)
    chosen = quick_cells() if args.quick else cells()
    if args.cells:
        chosen = [c for c in chosen if args.cells in c.name]
    args.out.mkdir(parents=True, exist_ok=True)
    jobs = [(cell, args.out / "data", options) for cell in chosen]
    began = time.perf_counter()
    rows = []
    workers = max(1, min(2, args.workers))
    with multiprocessing.get_context("spawn").Pool(workers) if workers > 1 else _Serial() as pool:
        for row in pool.imap_unordered(run_cell, jobs):
            rows.append(row)
            (args.out / "matrix.partial.json").write_text(json.dumps(rows, indent=1))  # survives an interrupted run
            verdict = " ".join(f"{k}={'pass' if v else 'FAIL'}" for k, v in row["acceptance"].items())
            print(f"[{len(rows)}/{len(jobs)}] {row['half']:<8} {row['cell']:<45} {verdict}", flush=True)
    order = {cell.name: i for i, cell in enumerate(chosen)}
    rows.sort(key=lambda r: (r["half"], order[r["cell"]]))
    (args.out / "matrix.json").write_text(json.dumps(rows, indent=1))
    text = table(rows)
    (args.out / "matrix.md").write_text(text + "\n")
    plot(rows, args.out / "matrix.html")
    print(text)
    for half in ("tuning", "held-out", "quick"):
        mine = [r for r in rows if r["half"] == half]
        if mine:
            passed = sum(all(r["acceptance"].values()) for r in mine)
            per = {k: sum(r["acceptance"][k] for r in mine) for k in mine[0]["acceptance"]}
            print(f"{half}: {passed}/{len(mine)} cells pass every point; per point {per}")
    print(f"wall time {time.perf_counter() - began:.0f} s, {workers} worker(s)")
    return 0


class _Serial:
    """The ``Pool`` interface in this process (one worker: easier to debug and profile)."""

    def __enter__(self) -> _Serial:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def imap_unordered(self, fn, jobs):
        return map(fn, jobs)


if __name__ == "__main__":
    sys.exit(main())
