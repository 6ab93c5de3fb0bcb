"""``fleet-planner demo``: replay a scenario live against emulated engines and print it beside ``simulate``."""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
from pathlib import Path

from fleet_planner.durations import parse_duration
from fleet_planner.errors import InputError

EXAMPLES = """examples:
  fleet-planner demo examples/demo/scenario.yaml --slice 10m
  fleet-planner demo examples/demo/scenario.yaml --slice 10m --policy global
  fleet-planner demo examples/demo/scenario.yaml --slice 2m --speed 4 --observe direct --json
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="live fleet on this machine (emulated engines, frontend, real HTTP replay) beside simulate",
        description="Start one emulated engine process per replica of the scenario's (single) deployment, a "
        "frontend routing streamed completions to them, Prometheus (when installed), the global planner "
        "(policy global) and the agent runtime scaling the engines through the processes connector; replay "
        "the first --slice of the scenario's traffic in real time (or --speed times faster); then simulate "
        "the same requests with the same policy and print SLO attainment and GPU-hours of both. "
        "See docs/profiling.md.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("scenario", type=Path, help="scenario YAML with one deployment")
    parser.add_argument("--slice", default="10m", help="how much of the traffic to replay (scenario time), e.g. 10m")
    parser.add_argument(
        "--policy",
        choices=["static", "local", "global"],
        default="local",
        help="the local agent alone (default), the agent under the global planner over gRPC, or fixed replicas",
    )
    parser.add_argument(
        "--speed", type=float, default=1.0, help="time compression: replay and engines N times faster (default 1)"
    )
    parser.add_argument(
        "--observe",
        choices=["auto", "prometheus", "direct"],
        default="auto",
        help="the agent's observations: Prometheus if installed (auto, default), Prometheus, or direct scrapes",
    )
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    from fleet_sim.demo.run import DemoOptions, render, run_demo

    try:
        slice_s = parse_duration(args.slice)
    except ValueError as exc:
        raise InputError(str(exc), field="--slice") from None
    if not 10 <= slice_s <= 6 * 3600:
        raise InputError(f"must be between 10 s and 6 h (got {args.slice})", field="--slice")
    if not 0.1 <= args.speed <= 100:
        raise InputError(f"must be between 0.1 and 100 (got {args.speed:g})", field="--speed")
    options = DemoOptions(slice_s=slice_s, policy=args.policy, speed=args.speed, observe=args.observe)
    with tempfile.TemporaryDirectory(prefix="fleet-demo-") as work:
        result = asyncio.run(run_demo(args.scenario, options, Path(work)))
    print(json.dumps(result, indent=1) if args.json else render(result))
    return 0
