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
  fleet-planner demo examples/demo/scenario.yaml --slice 10m --policy local --json
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="live fleet on this machine (emulated engines, frontend, real HTTP replay) beside simulate",
        description="Start one emulated engine process per replica of the scenario's (single) deployment, a "
        "frontend routing streamed completions to them, and replay the first --slice of the scenario's "
        "traffic in real time, with fixed replicas or the local agent scaling them through the processes "
        "connector; then simulate the same requests with the same policy and print SLO attainment and "
        "GPU-hours of both. See docs/profiling.md.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("scenario", type=Path, help="scenario YAML with one deployment")
    parser.add_argument("--slice", default="10m", help="how much of the traffic to replay (real time), e.g. 10m")
    parser.add_argument(
        "--policy", choices=["static", "local"], default="local", help="the local agent (default), or fixed replicas"
    )
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    from fleet_sim.demo.run import render, run_demo

    try:
        slice_s = parse_duration(args.slice)
    except ValueError as exc:
        raise InputError(str(exc), field="--slice") from None
    if not 10 <= slice_s <= 6 * 3600:
        raise InputError(f"must be between 10 s and 6 h (got {args.slice})", field="--slice")
    with tempfile.TemporaryDirectory(prefix="fleet-demo-") as work:
        result = asyncio.run(run_demo(args.scenario, slice_s, args.policy, Path(work)))
    print(json.dumps(result, indent=1) if args.json else render(result))
    return 0
