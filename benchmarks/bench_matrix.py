"""The scenario matrix: every cell under static-peak, the (searched, valid) oracle, the local agent,
and fcfs/global where there are several tenants; one table, one plot, and the issues' acceptance per cell.

    python benchmarks/bench_matrix.py [--quick] [--cells SUBSTRING] [--span hour|day|all] [--workers 2]
                                      [--out DIR] [--option KEY=JSON ...] [--baselines FILE [--baselines-only]]
                                      [--seed N] [--extra]

Cells come from ``fleet_sim.matrix.cells()`` (see docs/matrix.md); ``--quick`` runs two tiny cells
(CI). ``--option`` sets a planner option for the agent policies (local, fcfs, global), e.g.
``--option headroom=1.2``. Writes ``matrix.json``, ``matrix.md`` (the table), ``matrix-summary.md``
(a line per cell), ``matrix-global.md`` (issue 11's points per cell with several tenants) and
``matrix.html`` (the plot) under ``--out``.
``--baselines FILE`` caches static-peak's and the oracle's searched runs and the stable clairvoyant bound
(``fleet_sim.stable_bound``): they do not depend on the agent, and a cell's entry is keyed by its
spec and a hash of the simulator, baseline and data sources, so a stale entry is never used.
``--baselines-only`` just fills that cache (run it early, in the background).

Acceptance, for the local agent in every cell:

- A: per deployment, >= 99% SLO attainment where the oracle reaches >= 99.5%, else within 1 point
  of the oracle;
- B: GPU-hours <= 1.15x the oracle's, and <= 0.85x static-peak's where the oracle is <= 0.75x it;
- C: <= 1 scaling-direction reversal per deployment-hour, every deployment;
- D: the oracle reaches its target or is marked unreachable.

And issue 11's, for ``global`` in every cell with several tenants (tenant 0 has priority 100, the
others 10; ``fcfs`` and ``local`` run on the same traffic; written to ``matrix-global.md``):

- pw: priority-weighted attainment >= ``fcfs``'s;
- total: total attainment >= ``fcfs``'s - 0.5 point;
- top: the top tenant >= 99% where giving it the fleet reaches >= 99.5% (static-peak, whose search
  leaves the others their minimum pools, does not mark any of its deployments unreachable);
- alone: without contention (no ``local`` replica ever waited for GPUs), within 0.5 point of
  ``local`` and within 3% of its GPU-hours;
- churn: <= 2 grant changes per pool-hour and <= 1 direction reversal per deployment-hour, every
  deployment;
- budget: no tick asks for more GPUs than the inventory.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import multiprocessing
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fleet_planner.cli import guarded  # noqa: E402
from fleet_planner.planning import Policy  # noqa: E402
from fleet_planner.traces.dispersion import index_of_dispersion  # noqa: E402
from fleet_sim.baselines import OraclePolicy, StaticPeakPolicy, oracle_below_peak  # noqa: E402
from fleet_sim.matrix import (  # noqa: E402
    OPENING_S,
    Cell,
    build_scenario,
    cells,
    changes_per_pool_hour,
    extra_cells,
    gpu_hours_opening,
    quick_cells,
    reversals_per_hour,
)
from fleet_sim.outputs import priority_weighted_attainment, summarize  # noqa: E402
from fleet_sim.policies import DEFAULT_TARGET_ATTAINMENT, make_policy  # noqa: E402
from fleet_sim.runner import FleetSimulation  # noqa: E402
from fleet_sim.stable_bound import search_stable_bound  # noqa: E402
from fleet_sim.workload import build_workload  # noqa: E402
from global_planner.policy_file import load_policy_file  # noqa: E402

AGENT_POLICIES = ("local", "fcfs", "global")


BASELINES = ("static-peak", "oracle")  # clairvoyant, agent-independent: searched once, cached
# What the baselines' figures depend on: the simulator, the shared core, the capacity model the
# searches start from, the matrix's scenarios and the vendored data. The agent's decision code and
# the policy adapters are left out, so tuning the agent keeps the cache; so are the parts of the
# shared core no simulation runs (the gRPC code and wire contract, the HTTP emulator, the live profiler, the
# Kubernetes helpers, the CLI). tests/test_matrix.py checks that a baseline run loads nothing else.
BASELINE_SOURCES = ("fleet_planner", "fleet_sim", "local_agent/sizing", "examples/traces", "examples/profiles")
STABLE_SOURCES = ("fleet_sim/stable_bound.py",)  # the stable bound's own code (it reads the oracle's schedule)
NOT_BASELINE_SOURCES = (
    "fleet_planner/api",  # the generated gRPC code: only the planner adapter (below) runs it
    "fleet_planner/contract",  # the wire contract (its shared bounds live in fleet_planner/bounds.py)
    "fleet_sim/adapters",
    "fleet_sim/demo",
    "fleet_planner/emulate",
    "fleet_planner/profiler",
    "fleet_planner/kube.py",
    "fleet_planner/cli.py",
    *STABLE_SOURCES,
)


def source_digest(roots: tuple[str, ...] = BASELINE_SOURCES, skip: tuple[str, ...] = NOT_BASELINE_SOURCES) -> str:
    """A hash of every file the baselines' figures depend on (a changed file invalidates the cache)."""
    digest = hashlib.sha256()
    for root in roots:
        for path in sorted((ROOT / root).rglob("*")) if (ROOT / root).is_dir() else [ROOT / root]:
            relative = path.relative_to(ROOT).as_posix()
            if not path.is_file() or "__pycache__" in relative or relative.startswith(skip):
                continue
            digest.update(relative.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def cell_key(cell: Cell, digest: str) -> str:
    """The cache key of a cell's baselines: its whole spec and the sources' digest."""
    spec = json.dumps({k: list(v) if isinstance(v, tuple) else v for k, v in cell.__dict__.items()}, sort_keys=True)
    return hashlib.sha256(f"{spec}|{digest}".encode()).hexdigest()


class BaselineCache:
    """Baseline rows (static-peak and the oracle, with the oracle's schedule) in a JSON file,
    keyed by :func:`cell_key`: a row computed from other sources or another cell spec is never
    found, so a stale cache cannot be used silently (it is recomputed and replaced)."""

    def __init__(self, path: Path | None):
        self.path = path
        self.digest = source_digest()
        self.stable_digest = f"{self.digest}|stable|{source_digest(STABLE_SOURCES, ())}"
        self.rows: dict[str, dict[str, Any]] = {}
        if path is not None and path.exists():
            stored = json.loads(path.read_text())
            if not isinstance(stored, dict) or not isinstance(stored.get("rows"), dict):
                raise SystemExit(f"{path}: not a baseline cache written by bench_matrix.py")
            self.rows = stored["rows"]

    def get(self, cell: Cell, stable: bool = False) -> dict[str, Any] | None:
        """The cell's baselines, or (``stable``) its stable bound."""
        return self.rows.get(cell_key(cell, self.stable_digest if stable else self.digest))

    def put(self, cell: Cell, row: dict[str, Any], stable: bool = False) -> None:
        self.rows[cell_key(cell, self.stable_digest if stable else self.digest)] = row
        if self.path is not None:
            self.path.write_text(json.dumps({"rows": self.rows}, indent=1))


def run_baselines(job: tuple[Cell, Path]) -> tuple[Cell, dict[str, Any]]:
    """Static-peak and the searched oracle on one cell: their figures, the arrivals' dispersion,
    and the oracle's per-window schedule (the stable bound starts from it)."""
    cell, workdir = job
    row: dict[str, Any] = {"policies": {}}
    peak: Policy | None = None
    for policy in BASELINES:
        began = time.perf_counter()
        scenario = build_scenario(cell, policy, workdir)
        workload = build_workload(scenario)
        if policy == "static-peak":
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
        row["policies"][policy] = figures(scenario, workload, chosen, began)
        if isinstance(chosen, OraclePolicy):
            row["oracle_needs"] = {
                f"{name}/{role}": series.tolist() for (name, role), series in chosen.needs.needs.items()
            }
    return cell, row


def figures(
    scenario: Any, workload: Any, policy: Policy, began: float, priorities: dict[str, float] | None = None
) -> dict[str, Any]:
    """One policy's run on one cell: the figures the tables, ``acceptance`` and
    ``global_acceptance`` read (``priorities``: the cell's tenant priorities, where it has several)."""
    result = FleetSimulation(scenario, workload, policy).run()
    summary = summarize(result)
    search = getattr(policy, "search", None)
    return {
        "gpu_hours": summary["fleet"]["gpu_hours"],
        # None where the whole run is the opening (the quick cells)
        "gpu_hours_opening": gpu_hours_opening(result) if result.duration_s > OPENING_S else None,
        "attainment": {name: d["slo_attainment"] for name, d in summary["deployments"].items()},
        "reversals_per_hour": reversals_per_hour(result),
        "changes_per_pool_hour": changes_per_pool_hour(result),
        "wall_s": time.perf_counter() - began,
        "search": None
        if search is None
        else {"runs": search.runs, "reached": search.reached, "unreachable": search.unreachable},
        "slo_attainment": summary["fleet"]["slo_attainment"],
        "tenants": {
            name: {"slo_attainment": t["slo_attainment"], "deployments": t["deployments"]}
            for name, t in summary["tenants"].items()
        },
        "priorities": priorities,
        "priority_weighted": priority_weighted_attainment(summary, priorities) if priorities else None,
        "max_changes_per_pool_hour": max(
            (d["target_changes_per_pool_hour"] or 0.0 for d in summary["deployments"].values()), default=0.0
        ),
        "budget_violations": summary["fleet"]["budget_violations"],
        "short_ticks": sum(1 for row in result.timeline if row.pending > 0),
    }


def cell_priorities(cell: Cell, workdir: Path) -> dict[str, float] | None:
    """The tenant priorities ``global`` plans with in this cell (its policy file), None where the
    cell has one tenant: priority-weighted attainment is then the attainment."""
    if "global" not in cell.policies:
        return None
    scenario = build_scenario(cell, "global", workdir)
    policy = load_policy_file(scenario.base_dir / scenario.planner.options["policy_file"])
    return {name: tenant.priority for name, tenant in policy.tenants.items()}


def run_agents(job: tuple[Cell, Path, dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    """The agent policies of one cell (local, and fcfs/global where there are several tenants) with these
    planner options."""
    cell, workdir, options = job
    out: dict[str, Any] = {}
    priorities = cell_priorities(cell, workdir)
    for policy in cell.policies:
        if policy not in AGENT_POLICIES:
            continue
        began = time.perf_counter()
        scenario = build_scenario(cell, policy, workdir)
        if options:
            planner = scenario.planner
            scenario = scenario.model_copy(update={"planner": type(planner)(**{**planner.model_dump(), **options})})
        workload = build_workload(scenario)
        out[policy] = figures(scenario, workload, make_policy(scenario, workload), began, priorities)
    return cell.name, out


def run_stable(job: tuple[Cell, Path, dict[str, Any]]) -> tuple[Cell, dict[str, Any]]:
    """The stable clairvoyant bound of one cell, from its oracle's cached schedule."""
    cell, workdir, baselines = job
    began = time.perf_counter()
    scenario = build_scenario(cell, "oracle", workdir)
    workload = build_workload(scenario)
    needs = {tuple(key.split("/", 1)): np.asarray(series) for key, series in baselines["oracle_needs"].items()}
    unreachable = baselines["policies"]["oracle"]["search"]["unreachable"]
    bound = search_stable_bound(scenario, workload, needs, DEFAULT_TARGET_ATTAINMENT, unreachable)
    row = figures(scenario, workload, bound.policy, began)
    row["reversal_budget"] = bound.budget
    return cell, row


def ensure_baselines(chosen: list[Cell], workdir: Path, cache: BaselineCache, pool: Any, stable: bool = True) -> None:
    """Search the baselines (then, with ``stable``, the stable bound) of every chosen cell not in
    the cache (in parallel), caching each."""
    missing = [(cell, workdir) for cell in chosen if cache.get(cell) is None]
    for done, (cell, row) in enumerate(pool.imap_unordered(run_baselines, missing), 1):
        cache.put(cell, row)
        print(f"... baselines {done}/{len(missing)}: {cell.name}", file=sys.stderr, flush=True)
    if not stable:
        return
    jobs = [(cell, workdir, cache.get(cell)) for cell in chosen if cache.get(cell, stable=True) is None]
    for done, (cell, row) in enumerate(pool.imap_unordered(run_stable, jobs), 1):
        cache.put(cell, row, stable=True)
        print(f"... stable bound {done}/{len(jobs)}: {cell.name}", file=sys.stderr, flush=True)


def cell_row(
    cell: Cell, baselines: dict[str, Any], agents: dict[str, Any], stable: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The table's row of one cell: baselines, the stable bound (when known) and agents."""
    policies = {**baselines["policies"], **agents}
    row: dict[str, Any] = {"cell": cell.name, "half": cell.half, "span": cell.span}
    row.update({k: baselines[k] for k in ("requests", "idc_10s", "idc_60s")})
    row["policies"] = {name: policies[name] for name in cell.policies if name in policies}
    if stable is not None:
        row["policies"] = {**row["policies"], "stable-bound": stable}
    row["acceptance"] = acceptance(row["policies"])
    if "global" in row["policies"]:
        row["global_acceptance"] = global_acceptance(row["policies"])
    return row


def run_cell(job: tuple[Cell, Path, dict[str, Any]]) -> dict[str, Any]:
    """Every policy of one cell, uncached (tests, one-off runs)."""
    cell, workdir, _ = job
    _, baselines = run_baselines((cell, workdir))
    _, stable = run_stable((cell, workdir, baselines))
    _, agents = run_agents(job)
    return cell_row(cell, baselines, agents, stable)


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


def top_tenant(run: dict[str, Any]) -> str:
    """The tenant with the highest priority in a run with several tenants."""
    priorities = run["priorities"]
    return max(priorities, key=priorities.get)


def global_acceptance(policies: dict[str, Any]) -> dict[str, bool]:
    """Issue 11's points for ``global`` in one cell with several tenants (module docstring)."""
    glob, fcfs, local, peak = policies["global"], policies["fcfs"], policies["local"], policies["static-peak"]
    top = top_tenant(glob)
    top_deployments = glob["tenants"][top]["deployments"]
    reachable = not set(top_deployments) & set(peak["search"]["unreachable"] if peak["search"] else ()) and all(
        (peak["attainment"][name] or 0.0) >= 0.995 for name in top_deployments
    )
    contended = local["short_ticks"] > 0
    total = glob["slo_attainment"] or 0.0
    return {
        "pw": (glob["priority_weighted"] or 0.0) >= (fcfs["priority_weighted"] or 0.0) - 1e-12,
        "total": total >= (fcfs["slo_attainment"] or 0.0) - 0.005,
        "top": not reachable or (glob["tenants"][top]["slo_attainment"] or 0.0) >= 0.99,
        "alone": contended
        or (abs(total - (local["slo_attainment"] or 0.0)) <= 0.005 and glob["gpu_hours"] <= 1.03 * local["gpu_hours"]),
        "churn": glob["max_changes_per_pool_hour"] <= 2.0 and max(glob["reversals_per_hour"].values()) <= 1.0,
        "budget": glob["budget_violations"] == 0,
    }


def global_table(rows: list[dict[str, Any]]) -> str:
    """Issue 11's table: a line per cell with several tenants, ``global`` against ``fcfs`` and ``local``."""
    lines = [
        "| half | cell | global total / p-w % | fcfs total / p-w % | local total % | top tenant % (global) "
        "| contention | global GPU-h (local) | worst changes/pool-h, reversals/dep-h (global) | pw total top alone "
        "churn budget |",
        "|---|---|---|---|---:|---:|---|---|---|---|",
    ]
    for row in rows:
        if "global_acceptance" not in row:
            continue
        p = row["policies"]
        glob, fcfs, local = p["global"], p["fcfs"], p["local"]
        top = top_tenant(glob)
        verdict = " ".join("pass" if ok else "FAIL" for ok in row["global_acceptance"].values())
        lines.append(
            f"| {row['half']} | {row['cell']} "
            f"| {_pct(glob['slo_attainment'], 2)} / {_pct(glob['priority_weighted'], 2)} "
            f"| {_pct(fcfs['slo_attainment'], 2)} / {_pct(fcfs['priority_weighted'], 2)} "
            f"| {_pct(local['slo_attainment'], 2)} | {_pct(glob['tenants'][top]['slo_attainment'], 2)} "
            f"| {'yes' if local['short_ticks'] else 'no'} | {glob['gpu_hours']:.1f} ({local['gpu_hours']:.1f}) "
            f"| {glob['max_changes_per_pool_hour']:.1f}, {max(glob['reversals_per_hour'].values()):.1f} | {verdict} |"
        )
    return "\n".join(lines)


def _pct(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value * 100:.{digits}f}"


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


def summary_table(rows: list[dict[str, Any]]) -> str:
    """One line per cell: the local agent and the stable bound against the oracle, and the verdict."""
    lines = [
        "| half | cell | local / oracle GPU-h | after 10 min | stable bound / oracle | oracle / static-peak "
        "| local / static-peak | local worst att. % | oracle worst att. % | local reversals/dep-h (max) | A B C D |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        p = row["policies"]
        oracle, peak = p["oracle"]["gpu_hours"], p["static-peak"]["gpu_hours"]
        stable = f"{p['stable-bound']['gpu_hours'] / oracle:.2f}" if "stable-bound" in p else "n/a"
        verdict = " ".join("pass" if ok else "FAIL" for ok in row["acceptance"].values())
        worst = {name: _pct(min(a or 0.0 for a in p[name]["attainment"].values())) for name in ("local", "oracle")}
        after = after_opening(p)
        lines.append(
            f"| {row['half']} | {row['cell']} | {p['local']['gpu_hours'] / oracle:.2f} "
            f"| {'n/a' if after is None else f'{after:.2f}'} | {stable} "
            f"| {oracle / peak:.2f} | {p['local']['gpu_hours'] / peak:.2f} "
            f"| {worst['local']} | {worst['oracle']} "
            f"| {max(p['local']['reversals_per_hour'].values()):.1f} | {verdict} |"
        )
    return "\n".join(lines)


def after_opening(policies: dict[str, Any]) -> float | None:
    """Local's GPU-hours over the oracle's after the first ten minutes (``gpu_hours_opening``): the
    cost of the steady state without the descent from the pools' starting counts (None for rows
    measured before the figure existed, and runs no longer than the opening)."""
    local, oracle = policies["local"], policies["oracle"]
    if local.get("gpu_hours_opening") is None or oracle.get("gpu_hours_opening") is None:
        return None
    rest = oracle["gpu_hours"] - oracle["gpu_hours_opening"]
    return (local["gpu_hours"] - local["gpu_hours_opening"]) / rest if rest > 0 else None


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
    parser.add_argument("--extra", action="store_true", help="the fleets outside the halves (never tuned on)")
    parser.add_argument("--cells", help="only cells whose name contains this")
    parser.add_argument("--span", choices=["hour", "day", "all"], default="all")
    parser.add_argument("--workers", type=int, default=2, help="processes (at most 2 on a shared machine)")
    parser.add_argument("--out", type=Path, default=Path("matrix-out"))
    parser.add_argument("--option", action="append", default=[], help="agent planner option KEY=JSON")
    parser.add_argument("--baselines", type=Path, help="JSON cache of the baselines (read, then completed)")
    parser.add_argument("--baselines-only", action="store_true", help="fill the baseline cache and stop")
    parser.add_argument(
        "--seed",
        type=int,
        help="every cell with this traffic seed instead of its own (other ServeGen days and windows, other "
        "draws and copies): the same fleets on traffic nothing was tuned on",
    )
    args = parser.parse_args()
    options = {}
    for item in args.option:
        key, _, value = item.partition("=")
        options[key] = json.loads(value)
    chosen = quick_cells() if args.quick else extra_cells() if args.extra else cells()
    chosen = [c for c in chosen if (not args.cells or args.cells in c.name) and args.span in ("all", c.span)]
    if args.seed is not None:
        chosen = [dataclasses.replace(c, seed=args.seed) for c in chosen]
    args.out = args.out.resolve()  # scenario paths must not be read relative to examples/
    args.out.mkdir(parents=True, exist_ok=True)
    workdir = args.out / "data"
    cache = BaselineCache(args.baselines)
    began = time.perf_counter()
    rows = []
    workers = max(1, min(2, args.workers))
    with multiprocessing.get_context("spawn").Pool(workers) if workers > 1 else _Serial() as pool:
        ensure_baselines(chosen, workdir, cache, pool)
        if args.baselines_only:
            return 0
        by_name = {cell.name: cell for cell in chosen}
        jobs = [(cell, workdir, options) for cell in chosen]
        for name, agents in pool.imap_unordered(run_agents, jobs):
            cell = by_name[name]
            baselines = cache.get(cell)
            assert baselines is not None
            rows.append(cell_row(cell, baselines, agents, cache.get(cell, stable=True)))
            (args.out / "matrix.partial.json").write_text(json.dumps(rows, indent=1))  # survives an interrupted run
            verdict = " ".join(f"{k}={'pass' if v else 'FAIL'}" for k, v in rows[-1]["acceptance"].items())
            if "global_acceptance" in rows[-1]:
                verdict += " | global: " + " ".join(
                    f"{k}={'pass' if v else 'FAIL'}" for k, v in rows[-1]["global_acceptance"].items()
                )
            print(f"[{len(rows)}/{len(jobs)}] {cell.half:<8} {cell.name:<45} {verdict}", flush=True)
    order = {cell.name: i for i, cell in enumerate(chosen)}
    rows.sort(key=lambda r: (r["half"], order[r["cell"]]))
    (args.out / "matrix.json").write_text(json.dumps(rows, indent=1))
    text = table(rows)
    (args.out / "matrix.md").write_text(text + "\n")
    (args.out / "matrix-summary.md").write_text(summary_table(rows) + "\n")
    (args.out / "matrix-global.md").write_text(global_table(rows) + "\n")
    plot(rows, args.out / "matrix.html")
    print(text)
    if any("global_acceptance" in r for r in rows):
        print(global_table(rows))
    for half in ("tuning", "held-out", "extra", "quick"):
        mine = [r for r in rows if r["half"] == half]
        if mine:
            passed = sum(all(r["acceptance"].values()) for r in mine)
            per = {k: sum(r["acceptance"][k] for r in mine) for k in mine[0]["acceptance"]}
            print(f"{half}: {passed}/{len(mine)} cells pass every point; per point {per}")
            local = [r["policies"]["local"]["gpu_hours"] / r["policies"]["oracle"]["gpu_hours"] for r in mine]
            stable = [
                r["policies"]["stable-bound"]["gpu_hours"] / r["policies"]["oracle"]["gpu_hours"]
                for r in mine
                if "stable-bound" in r["policies"]
            ]
            reversals = [max(r["policies"]["local"]["reversals_per_hour"].values()) for r in mine]
            above_peak = sum(
                r["policies"]["local"]["gpu_hours"] > r["policies"]["static-peak"]["gpu_hours"] for r in mine
            )
            after = [a for a in (after_opening(r["policies"]) for r in mine) if a is not None]
            note = (
                f"; stable bound / oracle median {statistics.median(stable):.2f}, <= 1.15x in "
                f"{sum(x <= 1.15 for x in stable)}/{len(stable)}"
                if stable
                else ""
            )
            if after:
                note += (
                    f"; after the first 10 min local / oracle median {statistics.median(after):.2f}, <= 1.15x in "
                    f"{sum(x <= 1.15 for x in after)}/{len(after)}"
                )
            print(
                f"{half}: local / oracle GPU-h median {statistics.median(local):.2f}; local reversals per "
                f"deployment-hour mean {statistics.mean(reversals):.2f}; local above static-peak's GPU-h in "
                f"{above_peak}/{len(mine)}{note}"
            )
            several = [r["global_acceptance"] for r in mine if "global_acceptance" in r]
            if several:
                per = {k: sum(v[k] for v in several) for k in several[0]}
                print(
                    f"{half}: global (issue 11) {sum(all(v.values()) for v in several)}/{len(several)} cells with "
                    f"several tenants pass every point; per point {per}"
                )
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
    sys.exit(guarded(main))
