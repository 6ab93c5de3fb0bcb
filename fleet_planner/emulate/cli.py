"""``fleet-planner emulate``: serve an emulated engine over HTTP until SIGTERM/SIGINT, then drain."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web
from pydantic import ValidationError

from fleet_planner.errors import InputError
from fleet_planner.files import write_atomically
from fleet_planner.knobs import DEFAULT_MAX_BATCH_TOKENS, DEFAULT_MAX_NUM_SEQS

if TYPE_CHECKING:
    from fleet_planner.emulate.server import EmulatorServer

log = logging.getLogger(__name__)

EXAMPLES = """examples:
  fleet-planner emulate --profile examples/profiles/llama3.1-8b_h100_vllm_tp1 --port 8000
  fleet-planner emulate --profile DIR --port 0 --role decode --ready-file /tmp/w1.ready
  curl -N localhost:8000/v1/completions -d '{"model": "meta-llama/Meta-Llama-3.1-8B", "prompt": "hi",
       "max_tokens": 8, "stream": true}'
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "emulate",
        help="OpenAI-compatible streaming server whose timing follows an engine profile",
        description="Serve /v1/completions, /v1/chat/completions, /v1/models, /health and /metrics with "
        "the latency of a profiled engine (continuous batching, chunked prefill, KV capacity). "
        "Prompt length: token ids count as given, text counts whitespace-separated words; the output "
        "is exactly max_tokens tokens. See docs/profiling.md.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--profile", required=True, help="engine profile folder (JSON or NPZ layout)")
    parser.add_argument("--port", type=int, required=True, help="TCP port (0: any free port, see --ready-file)")
    parser.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    parser.add_argument("--model", help="served model name (default: the profile's model)")
    parser.add_argument("--role", choices=["agg", "prefill", "decode"], default="agg")
    parser.add_argument(
        "--max-batch-tokens",
        "--max-num-batched-tokens",  # vLLM's name: what a connector setting engine knobs passes
        type=int,
        default=DEFAULT_MAX_BATCH_TOKENS,
        help="prefill token budget per iteration",
    )
    parser.add_argument("--max-num-seqs", type=int, default=DEFAULT_MAX_NUM_SEQS, help="decode batch cap")
    parser.add_argument("--max-context", type=int, help="max input + output tokens (default: the profile's)")
    parser.add_argument("--namespace", default="emulator", help="dynamo_namespace label of the metrics")
    parser.add_argument(
        "--no-frontend-metrics", action="store_true", help="omit dynamo_frontend_* (a separate frontend exports them)"
    )
    parser.add_argument(
        "--speed",
        type=float,
        default=1.0,
        help="time compression: iterations last 1/SPEED of the profile's time (default 1, real time)",
    )
    parser.add_argument(
        "--startup-s",
        type=float,
        default=0.0,
        help="seconds to wait after listening before reporting ready (emulated model loading; default 0)",
    )
    parser.add_argument("--ready-file", type=Path, help="written (JSON: pid, port) once listening")
    parser.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    from fleet_planner.emulate.server import EmulatorServer
    from fleet_planner.knobs import EngineKnobs
    from fleet_planner.perf import PerfModel, load_profile

    if not 0 <= args.port <= 65535:
        raise InputError(f"must be 0..65535 (got {args.port})", field="--port")
    if not 0 < args.speed <= 1000:
        raise InputError(f"must be in (0, 1000] (got {args.speed})", field="--speed")
    if not 0 <= args.startup_s <= 3600:
        raise InputError(f"must be between 0 and 3600 (got {args.startup_s})", field="--startup-s")
    if args.max_context is not None and args.max_context < 2:
        raise InputError(f"must be >= 2 (got {args.max_context})", field="--max-context")
    try:
        knobs = EngineKnobs(max_batch_tokens=args.max_batch_tokens, max_num_seqs=args.max_num_seqs)
    except ValidationError as exc:
        problem = exc.errors(include_url=False)[0]
        raise InputError(problem["msg"], field="--" + str(problem["loc"][0]).replace("_", "-")) from None
    model = PerfModel(load_profile(args.profile))
    served = args.model or model.profile.model
    if served == "unknown":
        raise InputError("the profile names no model (meta.json); pass --model NAME", field="--model")
    server = EmulatorServer(
        model,
        served_model=served,
        knobs=knobs,
        role=args.role,
        max_context=args.max_context,
        namespace=args.namespace,
        frontend_metrics=not args.no_frontend_metrics,
        speed=args.speed,
    )
    return asyncio.run(_serve(server, args.host, args.port, args.ready_file, args.startup_s))


async def _serve(server: EmulatorServer, host: str, port: int, ready_file: Path | None, startup_s: float) -> int:
    runner = web.AppRunner(server.app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise InputError(f"cannot listen on {host}:{port}: {exc.strerror}", field="--port") from None
    bound = runner.addresses[0][1]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if startup_s > 0:  # like an engine loading its weights: listening, not ready
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=startup_s)
    if ready_file is not None and not stop.is_set():
        write_atomically(ready_file, json.dumps({"pid": os.getpid(), "port": bound}))
    log.info("emulating %s on http://%s:%d (%s)", server.served_model, host, bound, server.engine.role)
    print(f"READY {bound}", flush=True)
    await stop.wait()
    log.info("draining: %d request(s) in flight", server.engine.in_flight)
    await server.drain()
    await runner.cleanup()
    print(f"DRAINED worst-lag-ms {server.engine.lag_s * 1000:.1f}", flush=True)  # how well the host kept up
    return 0
