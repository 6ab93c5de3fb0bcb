"""``fleet-planner simulate``, ``fleet-planner compare`` and ``fleet-planner bench``."""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from fleet_planner.durations import parse_duration
from fleet_planner.errors import InputError
from fleet_sim.scenario import load_scenario


def register(subparsers: argparse._SubParsersAction) -> None:
    simulate = subparsers.add_parser("simulate", help="replay a scenario's traffic against a policy")
    simulate.add_argument("scenario", help="scenario YAML file")
    simulate.add_argument("--out", required=True, help="output folder (created)")
    simulate.add_argument("--seed", type=int, help="override the scenario's seed")
    simulate.add_argument("--duration", help="override the scenario's duration (e.g. 1h, 90m)")
    simulate.add_argument("--policy", help="override planner.policy (static, static-peak, oracle, ...)")
    simulate.add_argument("--no-progress", action="store_true", help="no progress bar even on a terminal")
    simulate.set_defaults(run=_simulate)

    compare = subparsers.add_parser(
        "compare",
        help="replay a scenario under several policies and compare them",
        description="Replay the same traffic (same seed) under each policy, write each one's outputs to "
        "OUT/POLICY/ and print SLO attainment and GPU-hours side by side, then the reports.",
    )
    compare.add_argument("scenario", help="scenario YAML file")
    compare.add_argument("--out", required=True, help="output folder (one subfolder per policy)")
    compare.add_argument(
        "--policies", nargs="+", default=["global", "static-peak"], help="policies, the first is the reference"
    )
    compare.add_argument("--seed", type=int, help="override the scenario's seed")
    compare.add_argument("--duration", help="override the scenario's duration (e.g. 1h, 90m)")
    compare.set_defaults(run=_compare)

    bench = subparsers.add_parser("bench", help="closed-loop benchmark of one simulated engine")
    bench.add_argument("--profile", required=True, help="engine profile folder")
    bench.add_argument("--mode", choices=["agg", "disagg"], default="agg")
    bench.add_argument("--concurrency", type=int, required=True)
    bench.add_argument("--isl", type=int, required=True, help="input tokens per request")
    bench.add_argument("--osl", type=int, required=True, help="output tokens per request")
    bench.add_argument("--max-batch-tokens", type=int, default=8192)
    bench.add_argument("--json", action="store_true", help='print {"ttft_ms": ..., "tpot_ms": ...}')
    bench.set_defaults(run=_bench)


def _overrides(args: argparse.Namespace) -> dict[str, object]:
    """``--seed`` and ``--duration`` as scenario overrides."""
    overrides: dict[str, object] = {}
    if args.seed is not None:
        overrides["seed"] = args.seed
    if args.duration is not None:
        try:
            overrides["duration"] = parse_duration(args.duration)
        except ValueError as exc:
            raise InputError(str(exc), field="--duration") from exc
    return overrides


def _simulate(args: argparse.Namespace) -> int:
    from fleet_sim.simulate import simulate_scenario

    overrides = _overrides(args)
    if args.policy is not None:
        overrides["policy"] = args.policy
    show_progress = sys.stderr.isatty() and not args.no_progress
    summary = simulate_scenario(args.scenario, Path(args.out), overrides=overrides, progress=show_progress)
    fleet = summary["fleet"]
    label = " (clairvoyant)" if summary["clairvoyant"] else ""
    print(
        f"{summary['name']}: policy {summary['policy']}{label}: {fleet['requests']} requests, "
        f"SLO attainment {fleet['slo_attainment'] * 100:.2f}%, {fleet['gpu_hours']:.2f} GPU-hours, "
        f"{fleet['budget_violations']} budget violations, {summary['requests_per_wall_second']:.0f} requests/s wall"
    )
    print(f"report: {Path(args.out) / 'report.html'}")
    return 0


def _compare(args: argparse.Namespace) -> int:
    from fleet_sim.simulate import simulate_scenario

    out = Path(args.out)
    base = _overrides(args)
    repeated = sorted({policy for policy in args.policies if args.policies.count(policy) > 1})
    if repeated:  # two workers would write OUT/POLICY at once
        raise InputError(f"each policy once; given more than once: {', '.join(repeated)}", field="--policies")
    for policy in args.policies:  # every policy is validated before the first one runs
        load_scenario(args.scenario, overrides={**base, "policy": policy})
    # One process per policy (as many at once as there are cores): the replays are independent.
    workers = max(1, min(len(args.policies), os.cpu_count() or 1))
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        runs = [
            pool.submit(simulate_scenario, args.scenario, out / policy, overrides={**base, "policy": policy})
            for policy in args.policies
        ]
        summaries = [run.result() for run in runs]
    reference = summaries[0]["fleet"]["gpu_hours"]
    print(f"{summaries[0]['name']}: {summaries[0]['fleet']['requests']} requests, same traffic for every policy")
    print(f"{'policy':<14}{'SLO attainment':>16}{'GPU-hours':>11}{'vs ' + args.policies[0]:>14}{'over budget':>13}")
    for summary in summaries:
        fleet = summary["fleet"]
        ratio = fleet["gpu_hours"] / reference if reference > 0 else float("nan")
        label = summary["policy"] + (" *" if summary["clairvoyant"] else "")
        print(
            f"{label:<14}{fleet['slo_attainment'] * 100:>15.2f}%{fleet['gpu_hours']:>11.1f}{ratio:>13.2f}x"
            f"{fleet['budget_violations']:>13}"
        )
        tenants = ", ".join(f"{name} {_percent(t['slo_attainment'])}" for name, t in summary["tenants"].items())
        print(f"{'':<14}per tenant: {tenants}")
    if any(summary["clairvoyant"] for summary in summaries):
        print("* clairvoyant: sees the future traffic (the physical limit, not a real policy)")
    for policy in args.policies:
        print(f"report: {out / policy / 'report.html'}")
    return 0


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 100:.2f}%"


MAX_BENCH_CLIENTS = 100_000


def _bench(args: argparse.Namespace) -> int:
    from fleet_planner.knobs import EngineKnobs
    from fleet_planner.perf import PerfModel, load_profile
    from fleet_sim.closed_loop import run_closed_loop

    for flag in ("concurrency", "isl", "osl", "max_batch_tokens"):
        value = getattr(args, flag)
        if value < 1:
            raise InputError(f"must be >= 1, got {value}", field="--" + flag.replace("_", "-"))
    if args.concurrency > MAX_BENCH_CLIENTS:  # ten requests each are simulated: 10^8 clients ran for hours
        raise InputError(f"at most {MAX_BENCH_CLIENTS} clients, got {args.concurrency}", field="--concurrency")
    model = PerfModel(load_profile(args.profile))
    if model.max_context is not None and args.isl + args.osl > model.max_context:
        # The engine refuses such a request at admission: the figures would describe nothing served.
        raise InputError(
            f"input + output = {args.isl + args.osl} tokens is past the profile's context of "
            f"{model.max_context} tokens",
            field="--isl/--osl",
        )
    try:
        result = run_closed_loop(
            model,
            mode=args.mode,
            concurrency=args.concurrency,
            isl=args.isl,
            osl=args.osl,
            knobs=EngineKnobs(max_batch_tokens=args.max_batch_tokens),
        )
    except ValueError as exc:
        raise InputError(str(exc)) from exc
    if args.json:
        print(json.dumps({"ttft_ms": result.ttft_ms, "tpot_ms": result.tpot_ms}))
    else:
        print(f"mean TTFT {result.ttft_ms:.1f} ms, mean TPOT {result.tpot_ms:.2f} ms over {result.requests} requests")
    return 0
