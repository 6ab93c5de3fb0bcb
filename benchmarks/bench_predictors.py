"""Compare the local agent's load predictors: forecast error, then GPU-hours and SLO attainment.

    python benchmarks/bench_predictors.py                      # Azure (1 h) + diurnal (first 6 h)
    python benchmarks/bench_predictors.py --duration 1d        # diurnal over the full day (slow)
    python benchmarks/bench_predictors.py --predictors constant arima --skip-forecast

(a) Forecast error: walk-forward on the per-interval request rate (interval = the scenario's
    planner interval, 30 s) of the vendored traces — the Azure conversation trace at its own
    recorded rate and at the 4x of examples/azure-disagg, and each endpoint of the synthesised
    diurnal day of examples/diurnal-two-tenant (always the whole day). The horizon is the number
    of intervals covering a replica's startup plus one throughput interval (what the agent must
    forecast). MAE and bias in req/s (bias = forecast - actual, negative = under-forecast), MAPE
    over non-zero targets, coverage = share of actuals at or below the p90 upper quantile.
(b) Closed loop: a `local` simulation with each predictor on examples/azure-disagg (full hour) and
    on examples/diurnal-two-tenant (``--duration``, default 6h). GPU-hours, fleet SLO attainment,
    the worst deployment's attainment and scaling direction reversals per deployment-hour.

Everything is deterministic (fixed seeds), so reruns print the same numbers.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import json
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fleet_planner.cli import guarded  # noqa: E402
from fleet_planner.durations import parse_duration  # noqa: E402
from fleet_planner.traces import read_trace  # noqa: E402
from fleet_sim.outputs import scaling_stability, summarize  # noqa: E402
from fleet_sim.scenario import load_scenario  # noqa: E402
from fleet_sim.simulate import run_scenario  # noqa: E402
from fleet_sim.workload import build_workload  # noqa: E402
from local_agent.agent import AgentOptions  # noqa: E402
from local_agent.forecast import evaluate, rates_from_arrivals  # noqa: E402

AZURE = ROOT / "examples" / "azure-disagg" / "scenario.yaml"
DIURNAL = ROOT / "examples" / "diurnal-two-tenant" / "scenario.yaml"
AZURE_TRACE = ROOT / "examples" / "traces" / "azure2023_conv.csv"
PREDICTORS = ("constant", "moving_average", "holt", "kalman", "arima", "seasonal")


def horizon_steps(scenario) -> int:
    """Intervals a forecast must cover: the slowest pool's startup plus one throughput interval."""
    interval = float(scenario.planner.interval_s)
    throughput = float(scenario.planner.options.get("throughput_interval_s", AgentOptions().throughput_interval_s))
    startup = max(pool.startup_s for d in scenario.deployments for pool in d.pools.values())
    return max(1, math.ceil((startup + throughput) / interval))


def forecast_series() -> list[tuple[str, object, float, int]]:
    """(label, rate series, interval_s, horizon steps) of every trace the forecasts are scored on."""
    series = []
    azure = load_scenario(AZURE)
    interval, steps = float(azure.planner.interval_s), horizon_steps(azure)
    raw = read_trace(AZURE_TRACE, "azure")
    series.append(("azure conv 1x", rates_from_arrivals(raw.arrival_s, interval, azure.duration_s), interval, steps))
    workload = build_workload(azure)
    series.append(
        ("azure conv 4x", rates_from_arrivals(workload.arrival_s, interval, azure.duration_s), interval, steps)
    )
    diurnal = load_scenario(DIURNAL)  # always the whole synthesised day
    interval, steps = float(diurnal.planner.interval_s), horizon_steps(diurnal)
    workload = build_workload(diurnal)
    for name, trace in workload.traces.items():
        series.append(
            (f"diurnal {name}", rates_from_arrivals(trace.arrival_s, interval, diurnal.duration_s), interval, steps)
        )
    return series


def run_forecasts(predictors: list[str]) -> list[dict]:
    rows = []
    for label, rates, interval, steps in forecast_series():
        for predictor in predictors:
            started = time.perf_counter()
            score = evaluate(predictor, rates, interval_s=interval, horizon_steps=steps, warmup=12)
            rows.append(
                {
                    "trace": label,
                    "predictor": predictor,
                    "horizon_s": steps * interval,
                    "mean_rps": float(rates.mean()),
                    **score,
                    "wall_s": time.perf_counter() - started,
                }
            )
            print(f"  forecast {label:28s} {predictor:15s} {rows[-1]['wall_s']:6.1f} s", file=sys.stderr, flush=True)
    return rows


def run_simulation(path: Path, predictor: str, duration_s: float | None) -> dict:
    overrides: dict = {"policy": "local"}
    if duration_s is not None:
        overrides["duration"] = duration_s
    scenario = load_scenario(path, overrides=overrides)
    planner = scenario.planner.model_copy(update={"predictor": predictor})
    scenario = scenario.model_copy(update={"planner": planner})
    started = time.perf_counter()
    result = run_scenario(scenario)
    summary = summarize(result)
    fleet = summary["fleet"]
    return {
        "scenario": f"{scenario.name} ({scenario.duration_s / 3600:g} h)",
        "predictor": predictor,
        "gpu_hours": fleet["gpu_hours"],
        "slo_attainment": fleet["slo_attainment"],
        "worst_deployment_attainment": min(d["slo_attainment"] for d in summary["deployments"].values()),
        "unfinished": fleet["unfinished"],
        "reversals_per_deployment_hour": scaling_stability(result).reversals_per_deployment_hour,
        "wall_s": time.perf_counter() - started,
    }


def run_simulations(predictors: list[str], diurnal_duration_s: float, which: list[str]) -> list[dict]:
    rows = []
    plans = []
    if "azure" in which:
        plans.append((AZURE, None))
    if "diurnal" in which:
        plans.append((DIURNAL, diurnal_duration_s))
    for path, duration in plans:
        for predictor in predictors:
            rows.append(run_simulation(path, predictor, duration))
            print(
                f"  simulate {rows[-1]['scenario']:30s} {predictor:15s} {rows[-1]['wall_s']:6.1f} s",
                file=sys.stderr,
                flush=True,
            )
    return rows


def _pct(value: float) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.1f}%"


def forecast_table(rows: list[dict]) -> str:
    lines = [
        "| trace | predictor | horizon | MAE (req/s) | MAPE | p90 coverage | bias (req/s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['trace']} (mean {r['mean_rps']:.2f} req/s) | {r['predictor']} | {r['horizon_s']:.0f} s | "
            f"{r['mae']:.3f} | "
            f"{_pct(r['mape'])} | {_pct(r['coverage_of_upper'])} | {r['bias']:+.3f} |"
        )
    return "\n".join(lines)


def simulation_table(rows: list[dict]) -> str:
    lines = [
        "| scenario | predictor | GPU-hours | SLO attainment | worst deployment | unfinished"
        " | reversals / deployment-hour |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['scenario']} | {r['predictor']} | {r['gpu_hours']:.2f} | {100 * r['slo_attainment']:.2f}% | "
            f"{100 * r['worst_deployment_attainment']:.2f}% | {r['unfinished']} | "
            f"{r['reversals_per_deployment_hour']:.1f} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--predictors", nargs="+", default=list(PREDICTORS), choices=PREDICTORS)
    parser.add_argument("--duration", default="6h", help="diurnal simulation length (default 6h; 1d = the full day)")
    parser.add_argument("--scenarios", nargs="+", default=["azure", "diurnal"], choices=["azure", "diurnal"])
    parser.add_argument("--skip-forecast", action="store_true", help="skip part (a)")
    parser.add_argument("--skip-sim", action="store_true", help="skip part (b)")
    parser.add_argument("--json", help="also write all rows to this JSON file")
    args = parser.parse_args()

    out: dict = {}
    if not args.skip_forecast:
        out["forecast"] = run_forecasts(args.predictors)
        print("\n### Forecast error (walk-forward, horizon = startup + throughput interval)\n")
        print(forecast_table(out["forecast"]), flush=True)
    if not args.skip_sim:
        out["simulation"] = run_simulations(args.predictors, parse_duration(args.duration), args.scenarios)
        print("\n### Closed loop: `local` policy per predictor\n")
        print(simulation_table(out["simulation"]), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(guarded(main))
