"""``fleet-planner recommend``: the layout, ratio and reactive thresholds to deploy, from profiles."""

from __future__ import annotations

import argparse
import json

from fleet_planner.errors import InputError
from fleet_planner.knobs import DEFAULT_MAX_BATCH_TOKENS, DEFAULT_MAX_NUM_SEQS
from fleet_planner.perf.profile import MAX_PROFILE_VALUE

EXAMPLES = """examples:
  fleet-planner recommend --profiles examples/profiles/* --isl 3000 --osl 300 --ttft 500 --itl 20
  fleet-planner recommend --profiles prof-tp1 prof-tp2 prof-tp4 --isl 1024 --osl 256 --ttft 300 --itl 15 --json
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "recommend",
        help="best layout per role, prefill:decode ratio and reactive thresholds for an SLA",
        description="Compare profiled layouts (one profile folder each) by SLA-compliant requests/s per GPU "
        "for prefill, decode and aggregated serving at the given lengths; print the best per role, the "
        "prefill:decode ratio and the agent's reactive thresholds. See docs/profiling.md.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--profiles", nargs="+", required=True, help="profile folders (several layouts)")
    parser.add_argument("--isl", type=float, required=True, help="mean input tokens per request")
    parser.add_argument("--osl", type=float, required=True, help="mean output tokens per request")
    parser.add_argument("--ttft", type=float, required=True, help="TTFT target, ms")
    parser.add_argument("--itl", type=float, required=True, help="ITL target, ms")
    parser.add_argument(
        "--max-num-seqs", type=int, default=DEFAULT_MAX_NUM_SEQS, help="engine decode batch cap (default %(default)s)"
    )
    parser.add_argument(
        "--max-batch-tokens",
        type=int,
        default=DEFAULT_MAX_BATCH_TOKENS,
        help="prefill chunk budget (default %(default)s)",
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    from fleet_planner.perf import PerfModel, load_profile
    from fleet_planner.perf.recommend import recommend, render

    for flag in ("isl", "osl", "ttft", "itl", "max_num_seqs", "max_batch_tokens"):
        value = getattr(args, flag)
        if not 0 < value <= MAX_PROFILE_VALUE:  # NaN fails too; past the bound is a slip (a 1e308 ms SLA)
            raise InputError(
                f"must be a positive number up to {MAX_PROFILE_VALUE:g} (got {value})",
                field="--" + flag.replace("_", "-"),
            )
    models = [PerfModel(load_profile(path)) for path in args.profiles]
    recommendations = recommend(
        models,
        isl=args.isl,
        osl=args.osl,
        ttft_ms=args.ttft,
        itl_ms=args.itl,
        max_num_seqs=args.max_num_seqs,
        max_batch_tokens=args.max_batch_tokens,
    )
    if args.json:
        print(json.dumps([r.model_dump(mode="json") for r in recommendations], indent=1))
    else:
        print(render(recommendations, isl=args.isl, osl=args.osl, ttft=args.ttft, itl=args.itl))
    return 0
