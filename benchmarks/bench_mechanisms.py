"""What each of the local agent's burst and stability mechanisms buys, on the scenario matrix.

    python benchmarks/bench_mechanisms.py --half tuning --span hour            # ~10 min on 2 cores
    python benchmarks/bench_mechanisms.py --half held-out --span hour --variants off defaults
    python benchmarks/bench_mechanisms.py --half tuning --span all --seeds 1,2,3 --variants defaults

Cells where tenants are arbitrated (``Cell.arbitrated``: ``fcfs`` and ``global`` may refuse GPUs
there) are left out: their local agents are judged under the arbiters by ``bench_policies.py``, so
the counts here are over 17 tuning and 15 held-out cells a seed, where ``bench_matrix.py`` counts
all 19 of each half.
For every chosen cell of ``fleet_sim.matrix`` the baselines (static-peak and the searched oracle)
run once — or are read from ``--baselines FILE`` (written on first use, so variants can be
compared without searching the oracle again) — then the local agent once per variant: all
mechanisms ``off`` (the agent before issue 10), each mechanism alone, the ``defaults``, and the
defaults plus the mechanisms that are off by default. Prints per cell and variant: local GPU-hours
over the oracle's, SLO attainment per deployment (and the oracle's), the worst deployment's
scaling-direction reversals per hour and the acceptance points (A slo, B cost, C stable, D oracle,
as in ``bench_matrix.py``); then per variant how many cells pass each point, the median GPU ratio
the mean reversals per deployment-hour and the mean target changes per pool-hour.
"""

from __future__ import annotations

import argparse
import dataclasses
import multiprocessing
import statistics
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_matrix import BaselineCache, acceptance, ensure_baselines, run_agents  # noqa: E402

from fleet_planner.cli import guarded  # noqa: E402
from fleet_sim.matrix import cells  # noqa: E402

OFF = {
    "burst_windows": 0,
    "ttft_correction": False,
    "miss_memory_s": 0.0,
    "down_margin": 0.0,
    "decode_down_margin": 0.0,
    "reversal_interval_s": 0.0,
    "stabilization_window_s": 0.0,
    "scale_down_dwell_s": 0.0,
    "near_miss": False,
    "breach_relief": 0.0,
    "transient_backlog": False,
    "predictor": "kalman",
}
ONE_STEP = {"scale_down_gap_fraction": 1.0}
VARIANTS: dict[str, dict[str, Any]] = {
    "off": OFF,
    "burst": {**OFF, "burst_windows": 40},
    "ttft": {**OFF, "ttft_correction": True},
    "miss": {**OFF, "miss_memory_s": 1800.0},
    "band": {**OFF, "down_margin": 0.2, "decode_down_margin": 0.2},
    "window": {**OFF, "stabilization_window_s": 300.0},
    "reversal": {**OFF, "reversal_interval_s": 3600.0},
    "defaults": {},
    # The defaults before the reversal interval (TTFT correction and miss memory only).
    "no-reversal": {"reversal_interval_s": 0.0},
    "no-reversal+window600+one-step": {"reversal_interval_s": 0.0, "stabilization_window_s": 600.0, **ONE_STEP},
    "no-reversal+grace900": {"reversal_interval_s": 0.0, "scale_down_grace_s": 900.0},
    "no-reversal+grace1800": {"reversal_interval_s": 0.0, "scale_down_grace_s": 1800.0},
    "no-reversal+grace1800+p75": {"reversal_interval_s": 0.0, "scale_down_grace_s": 1800.0, "forecast_quantile": 0.75},
    "reversal1800": {"reversal_interval_s": 1800.0},
    "reversal2400": {"reversal_interval_s": 2400.0},
    "defaults+p75": {"forecast_quantile": 0.75},
    "defaults+target0.98": {"target_attainment": 0.98},
    "defaults+target0.97": {"target_attainment": 0.97},
    "defaults+target0.95": {"target_attainment": 0.95},
    "defaults+p80": {"forecast_quantile": 0.8},
    "defaults+window300+one-step": {"stabilization_window_s": 300.0, **ONE_STEP},
    "defaults+burst": {"burst_windows": 40},
    "defaults+window": {"stabilization_window_s": 300.0},  # (now shorter than the default window)
    # The scale-down descent (docs/local-agent.md): the defaults without each of its parts, and
    # two settings measured on the tuning half but not adopted (docs/matrix.md).
    "descent-off": {
        "stabilization_window_s": 0.0,
        "down_margin": 0.0,
        "decode_down_margin": 0.0,
        "scale_down_dwell_s": 0.0,
        "near_miss": False,
        "warmup_windows": 0,
    },
    "defaults-near-miss": {"near_miss": False},
    "defaults-dwell": {"scale_down_dwell_s": 0.0},
    "defaults-window": {"stabilization_window_s": 0.0},
    "defaults-band": {"down_margin": 0.0, "decode_down_margin": 0.0},
    "defaults-warmup": {"warmup_windows": 0},
    "defaults+warmup3": {"warmup_windows": 3},
    "defaults+warmup6": {"warmup_windows": 6},
    "defaults+warmup7": {"warmup_windows": 7},
    "defaults+warmup8": {"warmup_windows": 8},
    "defaults+warmup10": {"warmup_windows": 10},
    "defaults+warmup13": {"warmup_windows": 13},
    "defaults+window900": {"stabilization_window_s": 900.0},
    "defaults+band0.2": {"down_margin": 0.2},
    "defaults+decode-band0.1": {"decode_down_margin": 0.1},
    "defaults+decode-band0.15": {"decode_down_margin": 0.15},
    "defaults+decode-band0.3": {"decode_down_margin": 0.3},  # the default before 2026-12-05 (as prefill)
    "defaults+decode-band0.4": {"decode_down_margin": 0.4},
    "defaults+p85": {"forecast_quantile": 0.85},
    "defaults+one-step": ONE_STEP,
    # A miss that one replica more would not shorten adds none (nineteenth session).
    "defaults-breach-relief": {"breach_relief": 0.0},
    "defaults+breach-relief0.05": {"breach_relief": 0.05},
    "defaults-transient-backlog": {"transient_backlog": False},
    "defaults+dwell300": {"scale_down_dwell_s": 300.0},
    "defaults+one-step+band0.5": {**ONE_STEP, "down_margin": 0.5},
    "defaults+one-step+dwell600": {**ONE_STEP, "scale_down_dwell_s": 600.0},
    "defaults+kalman": {"predictor": "kalman"},
    # The geometric descent (docs/local-agent.md): the descent before it, the defaults without
    # each of its parts, and its neighbours on the tuning half.
    "one-replica-steps": {"scale_down_gap_fraction": 0.0, "scale_down_dwell_s": 120.0, "warmup_until_corrected": False},
    "defaults-geometric": {"scale_down_gap_fraction": 0.0},
    "defaults-corrected": {"warmup_until_corrected": False},
    "defaults+third-gap": {"scale_down_gap_fraction": 0.34},
    "defaults+two-thirds-gap": {"scale_down_gap_fraction": 0.67},
    "defaults+dwell120": {"scale_down_dwell_s": 120.0},
    "defaults+dwell180": {"scale_down_dwell_s": 180.0},
    "defaults+dwell240": {"scale_down_dwell_s": 240.0},
    "defaults+dwell270": {"scale_down_dwell_s": 270.0},
    "defaults-recent-peak": {"check_recent_peak": False},
    # Measured across traffic seeds 1-3 on the tuning half (ninth session, docs/matrix.md).
    "defaults+window3600": {"stabilization_window_s": 3600.0},
    "defaults+band0.4": {"down_margin": 0.4},
    "defaults+dwell300+warmup7": {"scale_down_dwell_s": 300.0, "warmup_windows": 7},
    "defaults+interval60": {"throughput_interval_s": 60.0},
    "defaults+interval90": {"throughput_interval_s": 90.0},
    "defaults+interval120": {"throughput_interval_s": 120.0},
    "defaults+interval300": {"throughput_interval_s": 300.0},
    "defaults+decode-dwell60": {"decode_dwell_s": 60.0},
    "defaults-decode-dwell": {"decode_dwell_s": None},  # the decode pools' dwell before 2026-12-05 (tenth session)
    # The dead band over the load's level (eleventh session): the band before it (0.3 over the
    # upper quantile), and the neighbouring widths measured on the tuning half.
    "defaults-band-over-level": {"dead_band_over": "upper", "down_margin": 0.3},
    "defaults+band0.6": {"down_margin": 0.6},
    "defaults+holt": {"predictor": "holt"},
    "defaults+guard-holt": {"guard_predictor": "holt"},
    "defaults+holt-fast": {
        "predictor": "holt",
        "predictor_options": {"level_rate": 0.3, "slope_rate": 0.1, "damping": 0.8},
    },
    # The opening cut (docs/local-agent.md): without it, and its margins measured on the tuning half.
    "defaults-opening": {"opening_margin": None},
    "defaults+opening1": {"opening_margin": 1.0},
    "defaults+opening1.5": {"opening_margin": 1.5},
    "defaults+opening3": {"opening_margin": 3.0},
}


def _pct(values: dict[str, float | None]) -> str:
    return ",".join(f"{100 * (v or 0.0):.1f}" for v in values.values())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--half", choices=["tuning", "held-out", "all"], default="tuning")
    parser.add_argument("--span", choices=["hour", "day", "all"], default="hour")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--baselines", type=Path, help="JSON cache of the baselines (bench_matrix.py's format)")
    parser.add_argument("--workdir", type=Path, default=Path("matrix-out/data"))
    parser.add_argument(
        "--seeds",
        default="1",
        help="traffic seeds, comma-separated: every chosen cell once per seed (bench_matrix.py --seed), the "
        "summary over all of them; a setting chosen on several seeds is chosen on more than one traffic",
    )
    args = parser.parse_args()
    args.workdir = args.workdir.resolve()  # scenario paths must not be read relative to examples/
    base = [c for c in cells() if args.half in ("all", c.half) and args.span in ("all", c.span)]
    base = [c for c in base if not c.arbitrated]
    chosen = [
        dataclasses.replace(c, seed=seed, name=c.name if seed == 1 else f"{c.name} seed={seed}")
        for seed in (int(s) for s in args.seeds.split(","))
        for c in base
    ]
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        cache = BaselineCache(args.baselines)
        ensure_baselines(chosen, args.workdir, cache, pool, stable=False)
        print(f"{'variant':<22}{'half':<9}{'cell':<42}{'xoracle':>8}  {'SLO % (oracle)':<26}{'rev/h':>6}  A B C D")
        for variant in args.variants:
            jobs = [(cell, args.workdir, VARIANTS[variant]) for cell in chosen]
            local = {name: agents["local"] for name, agents in pool.imap_unordered(run_agents, jobs)}
            figures: dict[str, list[tuple[dict[str, bool], float, float, float]]] = {}
            for cell in chosen:
                baselines = cache.get(cell)
                assert baselines is not None
                policies = {**baselines["policies"], "local": local[cell.name]}
                verdict = acceptance(policies)
                ratio = local[cell.name]["gpu_hours"] / policies["oracle"]["gpu_hours"]
                worst = max(local[cell.name]["reversals_per_hour"].values())
                changes = local[cell.name]["changes_per_pool_hour"]
                figures.setdefault(cell.half, []).append((verdict, ratio, worst, changes))
                slo = f"{_pct(local[cell.name]['attainment'])} ({_pct(policies['oracle']['attainment'])})"
                marks = " ".join("P" if ok else "F" for ok in verdict.values())
                print(f"{variant:<22}{cell.half:<9}{cell.name:<42}{ratio:>8.2f}  {slo:<26}{worst:>6.1f}  {marks}")
            for half, found in sorted(figures.items(), reverse=True):
                passed = {key: sum(v[key] for v, *_ in found) for key in found[0][0]}
                every = sum(all(v.values()) for v, *_ in found)
                print(
                    f"{variant} ({half}): cells passing {passed} of {len(found)}, every point {every}; median "
                    f"GPU-hours / oracle {statistics.median(r for _, r, _, _ in found):.2f}; mean reversals per "
                    f"deployment-hour {statistics.mean(w for _, _, w, _ in found):.1f}; mean target changes per "
                    f"pool-hour {statistics.mean(c for *_, c in found):.1f}",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    sys.exit(guarded(main))
