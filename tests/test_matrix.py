"""The scenario matrix: generated systematically, split by a fixed seed, and runnable end to end."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import pytest

from fleet_sim.matrix import cells, quick_cells

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


def test_matrix_covers_the_required_factors() -> None:
    matrix = cells()
    assert len(matrix) >= 30 and len({c.name for c in matrix}) == len(matrix)
    arrivals = Counter(c.arrival for c in matrix)
    assert {"replay", "poisson", "bursty-low", "bursty-fit", "bursty-high", "day-clients", "day-poisson"} <= set(
        arrivals
    )
    from fleet_sim.matrix import TEMPLATES

    templates = [TEMPLATES[key] for c in matrix for key in c.deployments]
    assert {t.gpus_per_replica for t in templates} == {1, 2, 4, 8}
    assert {t.mode for t in templates} == {"agg", "disagg"}
    assert {c.sla for c in matrix} == {"tight", "normal", "loose"}
    assert min(c.startup_s for c in matrix) == 60 and max(c.startup_s for c in matrix) == 600
    assert {len(c.deployments) for c in matrix} >= {1, 2, 4}
    assert any(c.shared_endpoint for c in matrix) and {c.span for c in matrix} == {"hour", "day"}
    assert any("fcfs" in c.policies for c in matrix)


def test_halves_are_fixed_by_seed_and_balanced() -> None:
    first, again = cells(), cells()
    assert [c.half for c in first] == [c.half for c in again]
    halves = Counter(c.half for c in first)
    assert set(halves) == {"tuning", "held-out"} and abs(halves["tuning"] - halves["held-out"]) <= 1


def test_extra_cells_stand_outside_the_halves_and_build(tmp_path: Path) -> None:
    """The fleets added after tuning (``bench_matrix.py --extra``) use a profile no cell of the
    halves uses, are named apart from them and build into valid scenarios."""
    from fleet_sim.matrix import TEMPLATES, build_scenario, extra_cells

    extra, matrix = extra_cells(), cells()
    assert {c.half for c in extra} == {"extra"} and not {c.name for c in extra} & {c.name for c in matrix}
    halves_profiles = {TEMPLATES[key].profile for c in matrix for key in c.deployments}
    assert all(TEMPLATES[key].profile not in halves_profiles for c in extra for key in c.deployments)
    for cell in extra:
        scenario = build_scenario(cell, "local", tmp_path)
        assert [d.name for d in scenario.deployments] == [f"{cell.deployments[0]}-0"]


def test_quick_matrix_runs_and_judges_every_cell(tmp_path: Path) -> None:
    from bench_matrix import run_cell

    row = run_cell((quick_cells()[1], tmp_path, {}))
    assert set(row["policies"]) == {"static-peak", "oracle", "local", "stable-bound"}
    oracle = row["policies"]["oracle"]
    assert oracle["search"]["runs"] >= 2 and oracle["search"]["reached"]
    # A valid oracle: it meets its target in the same simulator (or says it cannot).
    assert all(a >= 0.995 for a in oracle["attainment"].values()) or oracle["search"]["unreachable"]
    assert set(row["acceptance"]) == {"A_slo", "B_cost", "C_stable", "D_oracle"}
    assert row["idc_60s"] > 2.0  # bursty arrivals, measured on the workload itself
    assert row["policies"]["local"]["gpu_hours"] > 0
    assert row["policies"]["local"]["gpu_hours_opening"] is None  # the whole 10-minute run is the opening
    # The stable bound keeps to its reversal budget (0 in a 10-minute cell) and meets the target.
    stable = row["policies"]["stable-bound"]
    assert stable["reversal_budget"] == 0 and max(stable["reversals_per_hour"].values()) == 0.0
    assert stable["search"]["reached"] and stable["gpu_hours"] >= 0.97 * oracle["gpu_hours"]


def test_opening_gpu_hours_split_a_run_at_its_first_ten_minutes(tmp_path: Path) -> None:
    from bench_matrix import after_opening

    from fleet_sim.matrix import build_scenario, gpu_hours_opening
    from fleet_sim.policies import make_policy
    from fleet_sim.runner import FleetSimulation
    from fleet_sim.workload import build_workload

    scenario = build_scenario(quick_cells()[1], "local", tmp_path)
    workload = build_workload(scenario)
    result = FleetSimulation(scenario, workload, make_policy(scenario, workload)).run()
    exact = sum(result.gpu_seconds.values()) / 3600.0
    # The timeline's intervals cover the run: the whole of it is the exact GPU-hours.
    assert gpu_hours_opening(result, end_s=scenario.duration_s) == pytest.approx(exact, rel=0.01)
    first, half = gpu_hours_opening(result, end_s=120.0), gpu_hours_opening(result, end_s=300.0)
    # The pools start at their maximum and descend: the first two minutes hold more GPUs per
    # second than the first five.
    assert 0 < first < half < exact and first / 120.0 > half / 300.0
    local = {"gpu_hours": 3.0, "gpu_hours_opening": 1.0}
    assert after_opening({"local": local, "oracle": {"gpu_hours": 2.0, "gpu_hours_opening": 0.4}}) == pytest.approx(
        2.0 / 1.6
    )
    assert after_opening({"local": local, "oracle": {"gpu_hours": 2.0, "gpu_hours_opening": None}}) is None


def test_baseline_cache_is_keyed_by_cell_and_sources(tmp_path: Path) -> None:
    from bench_matrix import BaselineCache, cell_key

    first, second = cells()[:2]
    assert cell_key(first, "a") != cell_key(second, "a") and cell_key(first, "a") != cell_key(first, "b")
    path = tmp_path / "baselines.json"
    cache = BaselineCache(path)
    cache.put(first, {"policies": {}})
    assert BaselineCache(path).get(first) == {"policies": {}} and BaselineCache(path).get(second) is None
    assert BaselineCache(path).get(first, stable=True) is None
    stale = BaselineCache(path)
    stale.digest = "other sources"  # as after an edit of the simulator: the entry is not found
    assert stale.get(first) is None
    path.write_text("[]")
    with pytest.raises(SystemExit, match="not a baseline cache"):
        BaselineCache(path)


_BASELINE_RUN = """
import json, sys, tempfile
from pathlib import Path
import fleet_sim.stable_bound  # not run here (it needs a searched oracle): its own imports count
from fleet_sim.matrix import build_scenario, quick_cells
from fleet_sim.outputs import summarize
from fleet_sim.policies import make_policy
from fleet_sim.runner import FleetSimulation
from fleet_sim.workload import build_workload
for policy in ("static-peak", "oracle"):
    scenario = build_scenario(quick_cells()[0], policy, Path(tempfile.mkdtemp()))
    workload = build_workload(scenario)
    summarize(FleetSimulation(scenario, workload, make_policy(scenario, workload)).run())
root = Path.cwd().resolve()
files = {Path(m.__file__).resolve() for m in list(sys.modules.values()) if getattr(m, "__file__", None)}
print(json.dumps(sorted(f.relative_to(root).as_posix() for f in files if f.is_relative_to(root) and ".venv" not in f.parts)))
"""


def test_the_baselines_run_only_code_their_cache_key_covers() -> None:
    """The baseline cache is keyed by a digest of the sources the baselines run: a module a baseline run
    loads from outside them (a package docstring aside) would leave stale figures in the cache after an
    edit there, and one the digest covers but no run loads (the wire contract, before its bounds moved to
    ``fleet_planner/bounds.py``) throws the cache away for nothing."""
    import ast
    import json
    import subprocess

    from bench_matrix import BASELINE_SOURCES, NOT_BASELINE_SOURCES, STABLE_SOURCES

    done = subprocess.run([sys.executable, "-c", _BASELINE_RUN], cwd=ROOT, capture_output=True, text=True, check=True)
    loaded = json.loads(done.stdout)

    def covered(path: str) -> bool:
        if path.startswith(STABLE_SOURCES):
            return True
        return path.startswith(BASELINE_SOURCES) and not path.startswith(NOT_BASELINE_SOURCES)

    def docstring_only(path: str) -> bool:
        body = ast.parse((ROOT / path).read_text()).body
        return path.endswith("__init__.py") and all(isinstance(node, ast.Expr) for node in body)

    assert "fleet_sim/baselines.py" in loaded and "fleet_planner/contract/models.py" not in loaded
    assert [path for path in loaded if not covered(path) and not docstring_only(path)] == []


@pytest.mark.parametrize("cell", cells()[:1] + [c for c in cells() if c.contended][:1], ids=lambda c: c.name)
def test_cells_build_valid_scenarios(cell, tmp_path: Path) -> None:
    from fleet_sim.matrix import build_scenario

    for policy in cell.policies:
        scenario = build_scenario(cell, policy, tmp_path)
        assert scenario.planner.policy == policy
        assert len(scenario.deployments) == len(cell.deployments)


def test_a_cells_tenant_policy_file_has_the_same_name_in_every_process(tmp_path: Path) -> None:
    """The file name must not follow Python's per-process string hash: two runs of one cell read
    and write the same policy file (and a rerun does not litter the work directory)."""
    import os
    import subprocess

    code = (
        "import sys; from pathlib import Path; from fleet_sim.matrix import cells, build_scenario; "
        "cell = next(c for c in cells() if c.contended); "
        "print(build_scenario(cell, 'global', Path(sys.argv[1])).planner.policy_file)"
    )
    root = Path(__file__).resolve().parents[1]
    names = {
        subprocess.run(
            [sys.executable, "-c", code, str(tmp_path)],
            env={**os.environ, "PYTHONHASHSEED": seed},
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        for seed in ("1", "2")
    }
    assert len(names) == 1 and Path(names.pop()).exists()


@pytest.mark.parametrize("arrival", ["day-poisson", "bursty-fit"])
def test_cell_load_is_the_templates_peak_need(arrival: str, tmp_path: Path) -> None:
    """The busiest window's rate is what the bottleneck pool's peak replicas carry (day cells are
    compressed in time: their series rates must be divided, not multiplied, by the compression)."""
    import numpy as np

    from fleet_sim.matrix import DAY_COMPRESSION, TEMPLATES, _role_rps, _sources, build_scenario
    from fleet_sim.workload import build_workload

    cell = next(c for c in cells() if c.arrival == arrival and c.deployments == ("d1",))
    scenario = build_scenario(cell, "static", tmp_path)
    arrivals = build_workload(scenario).arrival_s
    window = 600.0 / DAY_COMPRESSION if cell.span == "day" else 600.0
    busiest = np.bincount((arrivals // window).astype(int)).max() / window
    template = TEMPLATES["d1"]
    expected = template.peak_replicas * min(_role_rps(template, _sources(tmp_path), template.itl_ms).values())
    assert 0.5 * expected < busiest < 1.3 * expected


def test_supply_cells_are_short_in_phase_and_keep_the_first_halves(tmp_path: Path) -> None:
    """The supply-limited cells contend for real: deployments in phase, an inventory well below
    what the contended cells hold, initial replicas that fit it; adding them moved no earlier
    cell's half (those were fixed before any tuning)."""
    from fleet_sim.matrix import build_scenario

    matrix = cells()
    supply = [c for c in matrix if c.supply is not None]
    assert len(supply) == 4 and all("fcfs" in c.policies and "global" in c.policies for c in supply)
    for cell in supply:
        scenario = build_scenario(cell, "global", tmp_path)
        pools = [(p.gpu_type, p) for d in scenario.deployments for p in d.pools.values()]
        for gpu, have in scenario.gpus.items():
            mine = [p for g, p in pools if g == gpu]
            assert sum(p.initial * p.gpus_per_replica for p in mine) <= have
            assert have < 0.5 * sum(p.max * p.gpus_per_replica for p in mine)
        starts = {d.trace.synth.start_s for d in scenario.deployments if d.trace is not None and d.trace.synth}
        assert len(starts) <= 1  # one start hour: the tenants' peaks coincide
    halves = {c.name: c.half for c in matrix}
    assert halves["bursty-fit d1 sla=tight"] == "held-out" and halves["replay a1"] == "tuning"
    assert halves["day-clients d1+d4 contended=True"] == "held-out"


def test_a_cell_named_in_full_is_chosen_even_when_other_names_contain_it() -> None:
    import argparse

    from bench_policies import _scenario

    def scenario_of(name: str) -> str:
        args = argparse.Namespace(cell=True, scenario=name)
        return ",".join(d.name for d in _scenario(args, "local", {}).deployments)

    assert scenario_of("bursty-fit d1") == "d1-0"  # also part of "bursty-fit d1 sla=tight" and others
    assert scenario_of("bursty-fit d1+h1") == "d1-0,h1-1"  # part of one name only
    with pytest.raises(SystemExit, match="must match exactly one"):
        scenario_of("d1+h1")  # part of two names, the full name of none


def test_length_fit_bench_prices_real_and_fitted_prompts() -> None:
    """The bench behind docs/local-agent.md's account of the prefill model's optimism: on
    Mooncake's long prompts the fitted lognormal prices a replica above the real prompts."""
    import re
    import subprocess

    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(
        [sys.executable, str(root / "benchmarks" / "bench_length_fit.py"), "bursty-fit d1", "--no-sim"],
        capture_output=True,
        text=True,
        check=True,
        cwd=root,
    ).stdout
    real, fitted, _ = (float(x) for x in re.findall(r"(?:real prompts|fitted sample|mean prompt) ([\d.]+)", out))
    assert fitted > real * 1.1
    with pytest.raises(subprocess.CalledProcessError):
        subprocess.run(
            [sys.executable, str(root / "benchmarks" / "bench_length_fit.py"), "no such cell", "--no-sim"],
            capture_output=True,
            check=True,
            cwd=root,
        )


def test_cells_with_several_tenants_run_the_arbiters() -> None:
    """Issue 11's points need ``fcfs`` and ``global`` wherever tenants share the fleet, contended or
    not (a shared endpoint's two tenants are where ``global`` must equal ``local``); the mechanism
    bench leaves out only the cells where an arbiter may refuse."""
    matrix = cells()
    for cell in matrix:
        several = len(cell.deployments) > 1
        assert ("fcfs" in cell.policies and "global" in cell.policies) == several
        assert cell.arbitrated == (cell.contended or cell.supply is not None)
    assert any(c.shared_endpoint and "global" in c.policies and not c.arbitrated for c in matrix)


def _run(total: float, pw: float | None, top: float, gpu_hours: float = 10.0, **extra) -> dict:
    run = {
        "slo_attainment": total,
        "priority_weighted": pw,
        "priorities": {"tenant-0": 100, "tenant-1": 10},
        "tenants": {
            "tenant-0": {"slo_attainment": top, "deployments": ["d1-0"]},
            "tenant-1": {"slo_attainment": total, "deployments": ["d4-1"]},
        },
        "attainment": {"d1-0": top, "d4-1": total},
        "gpu_hours": gpu_hours,
        "reversals_per_hour": {"d1-0": 0.0, "d4-1": 0.0},
        "max_changes_per_pool_hour": 1.0,
        "budget_violations": 0,
        "short_ticks": 0,
        "search": None,
    }
    run.update(extra)
    return run


def test_issue_11_points_are_judged_per_cell() -> None:
    from bench_matrix import global_acceptance

    peak = _run(0.97, None, 0.996, search={"runs": 3, "reached": True, "unreachable": ["d4-1"]})
    fcfs = _run(0.97, 0.985, 0.99)
    local = _run(0.97, 0.985, 0.99)
    good = global_acceptance({"global": _run(0.97, 0.985, 0.99), "fcfs": fcfs, "local": local, "static-peak": peak})
    assert all(good.values()), good

    def judged(glob: dict, peak_run: dict = peak, local_run: dict = local) -> dict[str, bool]:
        return global_acceptance({"global": glob, "fcfs": fcfs, "local": local_run, "static-peak": peak_run})

    assert not judged(_run(0.97, 0.984, 0.99))["pw"]
    assert not judged(_run(0.964, 0.985, 0.99))["total"] and judged(_run(0.966, 0.985, 0.99))["total"]
    below = _run(0.97, 0.985, 0.989)
    assert not judged(below)["top"]
    unreachable = _run(0.97, None, 0.996, search={"runs": 3, "reached": True, "unreachable": ["d1-0"]})
    assert judged(below, peak_run=unreachable)["top"]  # the fleet cannot give it 99.5%: no claim
    assert not judged(_run(0.97, 0.985, 0.99, gpu_hours=10.4))["alone"]  # 4% over local, no contention
    assert judged(_run(0.97, 0.985, 0.99, gpu_hours=10.4), local_run=_run(0.97, 0.985, 0.99, short_ticks=3))["alone"]
    assert not judged(_run(0.97, 0.985, 0.99, max_changes_per_pool_hour=2.1))["churn"]
    assert not judged(_run(0.97, 0.985, 0.99, reversals_per_hour={"d1-0": 1.5, "d4-1": 0.0}))["churn"]
    assert not judged(_run(0.97, 0.985, 0.99, budget_violations=1))["budget"]
