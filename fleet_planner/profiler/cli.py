"""``fleet-planner profile live`` and ``fleet-planner profile offline``."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
from pathlib import Path

from fleet_planner.errors import InputError
from fleet_planner.profiler import live

LIVE_EXAMPLES = """examples:
  fleet-planner profile live --url http://127.0.0.1:8000 --model meta-llama/Meta-Llama-3.1-8B --out prof/ --quick
  fleet-planner profile live --url http://127.0.0.1:8000 --model M --out prof/ --max-context 16384 --kv-tokens 400000
  fleet-planner profile live ... --prefill-isl 128,1024,8192 --decode-isl 1024,4096 --concurrency 1,8,32 --osl 128

Interrupted? Run the same command again: measured points are kept in OUT/measurements.jsonl.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    profile = subparsers.add_parser("profile", help="measure an engine profile (live server or AIConfigurator)")
    modes = profile.add_subparsers(dest="profile_mode", required=True)
    live = modes.add_parser(
        "live",
        help="sweep a running OpenAI-compatible server",
        description="Measure TTFT vs input length and ITL vs context x concurrency by timing streamed "
        "tokens from any OpenAI-compatible server (vLLM, SGLang, TRT-LLM, fleet-planner emulate); write "
        "the Dynamo profiler layout (JSON + NPZ) and plots.html. See docs/profiling.md.",
        epilog=LIVE_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    live.add_argument("--url", required=True, help="server base URL, e.g. http://127.0.0.1:8000")
    live.add_argument("--model", required=True, help="served model name")
    live.add_argument("--out", required=True, type=Path, help="output profile folder (created; resumable)")
    live.add_argument("--max-context", type=int, help="context limit (default: the server's max_model_len)")
    live.add_argument("--kv-tokens", type=int, help="KV cache capacity in tokens (default: read from /metrics)")
    live.add_argument(
        "--quick", action="store_true", help="a small sweep (under a minute against a fast server): fewer points"
    )
    live.add_argument("--prefill-isl", help="comma-separated input lengths for TTFT")
    live.add_argument("--decode-isl", help="comma-separated input lengths for the decode sweep")
    live.add_argument("--concurrency", help="comma-separated decode batch sizes")
    live.add_argument("--osl", type=int, help="output tokens per decode request (default 256, quick 96)")
    live.add_argument(
        "--repeats",
        type=int,
        help="requests per TTFT point, fastest kept (default 5, quick 3; four times as many up to 1024 tokens)",
    )
    live.add_argument("--gpus", type=int, default=1, help="GPUs per engine (for per-GPU throughput)")
    live.add_argument("--system", default="unknown", help="GPU system label for meta.json (e.g. h100_sxm)")
    live.add_argument("--backend", default="unknown", help="engine label for meta.json (e.g. vllm)")
    live.add_argument("--timeout", type=float, default=300.0, help="seconds per request (default 300)")
    live.add_argument("--restart", action="store_true", help="discard measurements already in --out")
    live.add_argument("--no-progress", action="store_true", help="no progress bar")
    live.set_defaults(run=_live)

    from fleet_planner.profiler.offline import register_offline

    register_offline(modes)


def _live(args: argparse.Namespace) -> int:
    from fleet_planner.profiler.client import ServerError

    for name in ("max_context", "kv_tokens", "osl", "repeats", "gpus"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise InputError(f"must be >= 1 (got {value})", field="--" + name.replace("_", "-"))
    if not args.url.startswith(("http://", "https://")):
        raise InputError(f"must start with http:// or https:// (got {args.url!r})", field="--url")
    if not args.timeout > 0:
        raise InputError(f"must be > 0 (got {args.timeout})", field="--timeout")
    try:
        return asyncio.run(_profile_live(args))
    except ServerError as exc:
        raise InputError(str(exc)) from None


async def _profile_live(args: argparse.Namespace) -> int:
    import tqdm

    from fleet_planner.profiler.client import ServerError
    from fleet_planner.profiler.layout import ProfileMeta, write_profile

    client, session = await live.open_client(args.url, args.model, args.timeout)
    async with session:
        info = await client.probe()
        max_context = args.max_context or info.max_context
        if max_context is None:
            raise ServerError(f"{args.url} does not report max_model_len in /v1/models; pass --max-context")
        kv_tokens = args.kv_tokens or info.kv_tokens
        if kv_tokens is None:
            raise ServerError(
                f"{args.url}/metrics exports neither vllm:cache_config_info nor dynamo_component_kvstats_total_blocks; "
                "pass --kv-tokens (the engine logs its KV cache size at start-up)"
            )
        plan = _plan(args, max_context, kv_tokens)
        if not plan.decode_points():
            raise InputError("no decode point fits the context limit and KV cache; lower --decode-isl or --osl")
        state = live.SweepState(args.out, plan, restart=args.restart)
        total = len(plan.point_keys())
        bar = tqdm.tqdm(total=total, initial=len(state.done), unit="point", disable=args.no_progress)
        try:
            await live.run_sweep(client, state, bar.update)
        except (KeyboardInterrupt, asyncio.CancelledError):
            bar.close()
            print(f"interrupted after {len(state.done)} of {total} points; run the same command to resume")
            return 130
        bar.close()
    prefill, decode, skipped = state.points()
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    meta = ProfileMeta(
        model=args.model,
        system=args.system,
        backend=args.backend,
        tp=args.gpus,
        gpus_per_engine=args.gpus,
        max_context=max_context,
        max_kv_tokens=kv_tokens,
        source=f"fleet-planner profile live against {args.url}, {stamp}",
    )
    write_profile(args.out, meta, prefill, decode)
    print(f"profile written to {args.out}: {live.describe(state)}; plots: {args.out / 'plots.html'}")
    for line in skipped:
        print(f"skipped {line}")
    return 0


def _plan(args: argparse.Namespace, max_context: int, kv_tokens: int) -> live.SweepPlan:
    quick = args.quick

    def grid(value: str | None, default: tuple[int, ...], flag: str) -> list[int]:
        if value is None:
            return list(default)
        try:
            return live.parse_int_list(value, flag)
        except ValueError as exc:
            raise InputError(str(exc)) from None

    osl = args.osl or (96 if quick else 256)
    if osl < live.MIN_STEADY_GAPS + 2:
        raise InputError(f"must be >= {live.MIN_STEADY_GAPS + 2} to time decode (got {osl})", field="--osl")
    return live.SweepPlan(
        url=args.url,
        model=args.model,
        max_context=max_context,
        kv_tokens=kv_tokens,
        prefill_isl=grid(args.prefill_isl, live.QUICK_PREFILL_ISL if quick else live.FULL_PREFILL_ISL, "--prefill-isl"),
        repeats=args.repeats or (3 if quick else 5),
        decode_isl=grid(args.decode_isl, live.QUICK_DECODE_ISL if quick else live.FULL_DECODE_ISL, "--decode-isl"),
        osl=osl,
        concurrency=grid(args.concurrency, live.QUICK_CONCURRENCY if quick else live.FULL_CONCURRENCY, "--concurrency"),
    )
