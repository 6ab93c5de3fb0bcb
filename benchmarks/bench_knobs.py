"""GPU-hours and SLO attainment with agent-tuned engine knobs vs engine defaults, same traffic.

Every scenario runs on the same workload with the local agent twice: with the engine defaults
(8192 batched tokens, 256 sequences, as the scenario says), and with ``tune_knobs: true`` (the
agent re-chooses each pool's knobs every ``knob_interval_s`` from its corrected profile, sizes with
them, and the simulator's pools apply them). ``--headrooms`` repeats both at several planning
headrooms, which trades GPU-hours for attainment; the summary then gives, at each attainment a run
with the defaults reached, the GPU-hours of the cheapest run of each variant reaching at least
that: "GPU-hours at the same SLO attainment". Scenarios: the matrix's diurnal cells (``fleet_sim.matrix``
cells named ``day-...``, unchanged) and, with ``--example``, the repository's diurnal example.

    python benchmarks/bench_knobs.py [--cells day-] [--example] [--scenario FILE ...]
                                     [--headrooms 1.0,1.1,1.25] [--fixed DEP/ROLE=SEQS,TOKENS ...]
                                     [--duration 6h] [--json OUT] [--sweep] [--seed N]

``--sweep`` asks whether *any* knob setting would save GPU-hours, whatever the agent's model
thinks: every pool of every scenario is run with each setting of a grid (``SWEEP``: decode caps,
prefill budgets, aggregated caps x budgets), one pool at a time with the others at the engine
defaults, the agent sizing with the knobs in force (at the first headroom). A setting at or above
the defaults' attainment saves what it costs less than they do; one below it is compared with the
defaults' cost curve at its attainment (the defaults run at the other ``--headrooms`` and at the
agent's lower attainment targets ``SWEEP_TARGETS``, joined by straight lines), so trading
attainment for GPU-hours is not a saving unless it beats the agent's own trade. The best saving is
printed per pool. Where no setting of any pool saves, no
tuner could profit from these knobs on that traffic (one pool at a time: joint settings are not
tried).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fleet_planner.cli import guarded  # noqa: E402
from fleet_planner.durations import parse_duration  # noqa: E402
from fleet_planner.knobs import EngineKnobs  # noqa: E402
from fleet_sim.adapters.local import LocalAgentsPolicy  # noqa: E402
from fleet_sim.matrix import build_scenario, cells, extra_cells  # noqa: E402
from fleet_sim.outputs.summary import summarize  # noqa: E402
from fleet_sim.policies import make_policy  # noqa: E402
from fleet_sim.results import SimulationResult  # noqa: E402
from fleet_sim.runner import FleetSimulation  # noqa: E402
from fleet_sim.scenario import Scenario, load_scenario  # noqa: E402
from fleet_sim.workload import Workload, build_workload  # noqa: E402

EXAMPLE = ROOT / "examples/diurnal-two-tenant/scenario.yaml"
VARIANTS = {"engine defaults": False, "tuned knobs": True}
# The agent's attainment targets (below its default 0.99) that extend the engine defaults' cost
# curve of ``--sweep`` below headroom 1.0: a setting that buys GPU-hours with attainment is
# compared with the defaults at that attainment, not with the defaults at a higher one.
SWEEP_TARGETS = (0.98, 0.97, 0.95)
# The brute-force grid of ``--sweep`` per role: (max_num_seqs, max_batch_tokens) settings besides
# the defaults (256, 8192). Prefill iterations decode nothing, so only their budget matters.
SWEEP: dict[str, list[tuple[int, int]]] = {
    "decode": [(seqs, 8192) for seqs in (32, 64, 128, 192, 384, 512)],
    "prefill": [(256, tokens) for tokens in (2048, 4096, 16384, 32768)],
    "agg": [
        (seqs, tokens)
        for seqs in (64, 128, 256, 384)
        for tokens in (512, 2048, 8192, 16384)
        if (seqs, tokens) != (256, 8192)
    ],
}


def with_knobs(scenario: Scenario, fixed: dict[tuple[str, str], EngineKnobs]) -> Scenario:
    """The scenario with some pools' knobs set (``deployment/role`` -> knobs); others unchanged."""
    deployments = []
    for deployment in scenario.deployments:
        pools = {
            role: pool.model_copy(update=fixed[(deployment.name, role)].model_dump())
            if (deployment.name, role) in fixed
            else pool
            for role, pool in deployment.pools.items()
        }
        deployments.append(deployment.model_copy(update={"pools": pools}))
    return scenario.model_copy(update={"deployments": deployments})


def parse_fixed(items: list[str]) -> dict[tuple[str, str], EngineKnobs]:
    """``DEPLOYMENT/ROLE=SEQS,TOKENS`` items (e.g. ``h1-1/agg=256,512``)."""
    fixed = {}
    for item in items:
        pool, _, values = item.partition("=")
        deployment, _, role = pool.partition("/")
        seqs, _, tokens = values.partition(",")
        if not (deployment and role and seqs.isdigit() and tokens.isdigit()):
            raise SystemExit(f"--fixed {item!r}: expected DEPLOYMENT/ROLE=MAX_NUM_SEQS,MAX_BATCH_TOKENS")
        fixed[(deployment, role)] = EngineKnobs(max_num_seqs=int(seqs), max_batch_tokens=int(tokens))
    return fixed


def with_options(scenario: Scenario, **options: Any) -> Scenario:
    planner = scenario.planner
    planner = type(planner)(**{**planner.model_dump(), **options})
    return scenario.model_copy(update={"planner": planner})


def run(scenario: Scenario, workload: Workload) -> dict[str, Any]:
    """One simulation: fleet and per-deployment figures, and the knobs the agents ended with."""
    began = time.perf_counter()
    policy = make_policy(scenario, workload)
    result = FleetSimulation(scenario, workload, policy).run()
    summary = summarize(result)
    knobs = {}
    if isinstance(policy, LocalAgentsPolicy):
        knobs = {f"{name}/{role}": str(k) for name, agent in policy.agents.items() for role, k in agent.knobs.items()}
    return {
        "attainment": summary["fleet"]["slo_attainment"],
        "gpu_hours": summary["fleet"]["gpu_hours"],
        "deployments": {name: (d["slo_attainment"], d["gpu_hours"]) for name, d in summary["deployments"].items()},
        "knobs_at_end": knobs,
        **misses(result),
        "wall_s": time.perf_counter() - began,
    }


def misses(result: SimulationResult) -> dict[str, float]:
    """Shares of all requests missing TTFT (or rejected) and missing ITL, over the fleet."""
    r = result.requests
    ttft = np.array([result.endpoint_sla[e][0] for e in result.endpoints])[r.endpoint]
    itl = np.array([result.endpoint_sla[e][1] for e in result.endpoints])[r.endpoint]
    return {
        "ttft_miss": float(np.mean(~(r.ttft_ms <= ttft))),
        "itl_miss": float(np.mean(r.itl_ms > itl)),  # NaN (no decode, or no first token) is not an ITL miss
    }


def cheapest_reaching(points: list[dict[str, Any]], attainment: float) -> dict[str, Any] | None:
    """The run with the fewest GPU-hours among those reaching at least ``attainment``."""
    reaching = [p for p in points if p["attainment"] >= attainment - 1e-9]
    return min(reaching, key=lambda p: p["gpu_hours"]) if reaching else None


def frontier_gpu_hours(points: list[dict[str, Any]], attainment: float) -> float | None:
    """GPU-hours of the runs' lower cost curve at ``attainment``: the cheapest run reaching it, or
    a straight line between two runs on either side of it (an attainment between two runs' is
    bought at a cost between theirs, so a run 0.01 point above the defaults is not compared with
    a run 0.1 point above them). None above every run's attainment."""
    reaching = cheapest_reaching(points, attainment)
    best = None if reaching is None else reaching["gpu_hours"]
    for low in points:
        for high in points:
            if low["attainment"] < attainment < high["attainment"]:
                share = (attainment - low["attainment"]) / (high["attainment"] - low["attainment"])
                line = low["gpu_hours"] + share * (high["gpu_hours"] - low["gpu_hours"])
                best = line if best is None else min(best, line)
    return best


def knob_saving(defaults: list[dict[str, Any]], setting: dict[str, Any]) -> float:
    """GPU-hours a knob setting saves against the engine defaults (``defaults[0]`` the reference
    run, the rest other operating points of the agent): at or above the reference's attainment,
    what it saves against the reference (attainment gained at the same cost is not counted as
    GPU-hours); below it, against the defaults' cost curve there (``frontier_gpu_hours``: a setting
    that trades attainment for GPU-hours is judged against the agent's own trade). Negative: it
    costs more."""
    reference = defaults[0]["gpu_hours"]
    if setting["attainment"] >= defaults[0]["attainment"]:
        return reference - setting["gpu_hours"]
    rival = frontier_gpu_hours(defaults, setting["attainment"])
    assert rival is not None  # the reference reaches it: the curve is defined there, at most the reference
    return rival - setting["gpu_hours"]


def compare(
    label: str, scenario: Scenario, headrooms: list[float], fixed: dict[tuple[str, str], EngineKnobs]
) -> dict[str, Any]:
    """Both variants (and the fixed knobs, if any) at every headroom on one scenario; prints rows
    as they come."""
    workload = build_workload(scenario)
    print(f"\n{label}: {len(workload)} requests, policy local", flush=True)
    out: dict[str, Any] = {"scenario": label, "runs": {}}
    variants = dict(VARIANTS)
    names = {d.name for d in scenario.deployments}
    fixed = {key: knobs for key, knobs in fixed.items() if key[0] in names}
    if fixed:
        variants["fixed knobs"] = False
    for name, tune in variants.items():
        base = with_knobs(scenario, fixed) if name == "fixed knobs" else scenario
        points = []
        for headroom in headrooms:
            result = run(with_options(base, policy="local", tune_knobs=tune, headroom=headroom), workload)
            result["headroom"] = headroom
            points.append(result)
            per = ", ".join(f"{d} {a * 100:.2f}% {h:.1f}" for d, (a, h) in result["deployments"].items())
            print(
                f"  {name:16s} headroom {headroom:4.2f}: {result['attainment'] * 100:6.2f}% "
                f"{result['gpu_hours']:7.1f} GPU-h  [{per}]  misses: TTFT {result['ttft_miss'] * 100:.2f}%,"
                f" ITL {result['itl_miss'] * 100:.2f}%  ({result['wall_s']:.0f} s)",
                flush=True,
            )
            if tune:
                print(f"    knobs at the end: {result['knobs_at_end']}", flush=True)
        out["runs"][name] = points
    for base in out["runs"]["engine defaults"]:
        reached = [cheapest_reaching(out["runs"][name], base["attainment"]) for name in VARIANTS]
        text = ", ".join(
            f"{name} {'none' if run is None else format(run['gpu_hours'], '.1f')}"
            for name, run in zip(VARIANTS, reached, strict=True)
        )
        print(f"  => GPU-h of the cheapest run reaching {base['attainment'] * 100:.2f}%: {text}", flush=True)
    return out


def sweep(label: str, scenario: Scenario, headrooms: list[float]) -> dict[str, Any]:
    """Every pool with each ``SWEEP`` setting in turn (the others at the scenario's knobs), the
    local agent sizing with them at the first headroom; what each saves is ``knob_saving`` against
    the defaults at every headroom and at the agent's lower attainment targets (``SWEEP_TARGETS``)."""
    workload = build_workload(scenario)
    print(f"\n{label}: {len(workload)} requests, policy local, one pool's knobs at a time", flush=True)
    defaults = []
    frontier = [{"headroom": h} for h in headrooms] + [{"target_attainment": t} for t in SWEEP_TARGETS]
    for options in frontier:
        result = run(with_options(scenario, policy="local", **options), workload)
        defaults.append(result)
        described = ", ".join(f"{key} {value}" for key, value in options.items())
        print(
            f"  engine defaults, {described}: {result['attainment'] * 100:6.2f}% {result['gpu_hours']:7.2f} GPU-h",
            flush=True,
        )
    out: dict[str, Any] = {"scenario": label, "defaults": defaults, "pools": {}}
    for deployment in scenario.deployments:
        for role in deployment.pools:
            key = (deployment.name, role)
            savings = []
            for seqs, tokens in SWEEP[role]:
                knobs = EngineKnobs(max_num_seqs=seqs, max_batch_tokens=tokens)
                setting = with_options(with_knobs(scenario, {key: knobs}), policy="local", headroom=headrooms[0])
                result = run(setting, workload)
                saved = knob_saving(defaults, result)
                result |= {"knobs": str(knobs), "saved_gpu_hours": saved}
                savings.append(result)
                print(
                    f"  {deployment.name}/{role} {knobs!s:28s} {result['attainment'] * 100:6.2f}% "
                    f"{result['gpu_hours']:7.2f} GPU-h  misses: TTFT {result['ttft_miss'] * 100:.2f}%, "
                    f"ITL {result['itl_miss'] * 100:.2f}%; vs the defaults at that attainment {saved:+.2f} GPU-h",
                    flush=True,
                )
            best = max(savings, key=lambda r: r["saved_gpu_hours"])
            verdict = (
                f"{best['knobs']} saves {best['saved_gpu_hours']:.2f} GPU-h at {best['attainment'] * 100:.2f}%"
                if best["saved_gpu_hours"] >= 0.01  # the printed precision: a rounding error is no saving
                else "no setting saves GPU-hours"
            )
            print(f"  => {deployment.name}/{role}: {verdict}", flush=True)
            out["pools"][f"{deployment.name}/{role}"] = savings
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--cells", default="day-", help="matrix cells whose name contains this ('' for none)")
    parser.add_argument("--example", action="store_true", help=f"also {EXAMPLE.relative_to(ROOT)} (slow)")
    parser.add_argument("--extra", action="store_true", help="--cells also picks from the matrix's extra cells")
    parser.add_argument("--scenario", type=Path, action="append", default=[], help="another scenario file")
    parser.add_argument("--headrooms", default="1.0,1.1,1.25", help="planning headrooms to sweep (first: reference)")
    parser.add_argument(
        "--fixed", action="append", default=[], help="also run with these knobs: DEPLOYMENT/ROLE=SEQS,TOKENS"
    )
    parser.add_argument("--duration", help="shorten every run (e.g. 6h)")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--sweep", action="store_true", help="brute force: every pool at each knob setting of a grid")
    parser.add_argument(
        "--seed", type=int, help="the matrix cells with this traffic seed instead of their own (bench_matrix.py --seed)"
    )
    args = parser.parse_args(argv)
    headrooms = [float(h) for h in args.headrooms.split(",")]
    fixed = parse_fixed(args.fixed)
    overrides: dict[str, Any] = {"policy": "local"}
    if args.duration:
        overrides["duration"] = parse_duration(args.duration)
    workdir = Path(tempfile.mkdtemp(prefix="bench_knobs_"))
    results = []
    pool = cells() + (extra_cells() if args.extra else [])
    for cell in [c for c in pool if args.cells and args.cells in c.name]:
        if args.seed is not None:
            cell = dataclasses.replace(cell, seed=args.seed)
        scenario = build_scenario(cell, "local", workdir)
        if args.duration:
            scenario = scenario.model_copy(update={"duration_s": overrides["duration"]})
        results.append(
            sweep(cell.name, scenario, headrooms) if args.sweep else compare(cell.name, scenario, headrooms, fixed)
        )
    for path in [*([EXAMPLE] if args.example else []), *args.scenario]:
        scenario = load_scenario(path, overrides=overrides)
        results.append(
            sweep(str(path), scenario, headrooms) if args.sweep else compare(str(path), scenario, headrooms, fixed)
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(guarded(main))
