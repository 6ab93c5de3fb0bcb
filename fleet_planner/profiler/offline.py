"""``profile offline``: engine profiles without GPUs, from NVIDIA AIConfigurator's performance
database (PyPI ``aiconfigurator``, an optional extra: ``pip install 'fleet-planner[aiconfigurator]'``).

For each tensor-parallel size it runs AIConfigurator's static estimates — ``static_ctx`` at batch 1
for TTFT per input length, ``static_gen`` per (batch, context) for ITL, with ``osl`` output tokens
so the context is ``isl + osl/2`` — and writes one profile folder per size in the same layout as
``profile live``. KV capacity comes from AIConfigurator's memory model: the GPU memory share
``--memory-fraction`` minus weights, activations and runtime overheads, over the KV bytes per token.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fleet_planner.errors import InputError
from fleet_planner.profiler.layout import DecodePoint, PrefillPoint, ProfileMeta, write_profile

GIB = 1 << 30
FULL_ISL = (128, 256, 512, 1024, 2048, 3072, 4096, 6144, 8192, 12288, 16384, 24576, 32768, 65536, 131072)
QUICK_ISL = (256, 1024, 4096, 16384)
FULL_DECODE_ISL = (256, 1024, 2048, 4096, 8192, 16384, 30000)
QUICK_DECODE_ISL = (1024, 8192)
FULL_BATCHES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
QUICK_BATCHES = (1, 8, 64)

EXAMPLES = """examples:
  pip install 'fleet-planner[aiconfigurator]'
  fleet-planner profile offline --model meta-llama/Meta-Llama-3.1-8B --system h100_sxm --tp 1,2 --out profiles/
  fleet-planner profile offline --model meta-llama/Meta-Llama-3.1-70B --system h200_sxm --backend trtllm --tp 4,8 \\
      --out profiles/ --quick
"""


def register_offline(modes: argparse._SubParsersAction) -> None:
    parser = modes.add_parser(
        "offline",
        help="profiles from NVIDIA AIConfigurator's performance database (no GPU needed)",
        description="Write one profile folder per tensor-parallel size from AIConfigurator's silicon-calibrated "
        "estimates (TTFT vs input length, ITL vs batch and context, KV capacity). Needs the optional "
        "extra: pip install 'fleet-planner[aiconfigurator]'. See docs/profiling.md.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", required=True, help="Hugging Face model id AIConfigurator knows")
    parser.add_argument("--system", required=True, help="GPU system, e.g. h100_sxm, h200_sxm, a100_sxm")
    parser.add_argument("--backend", choices=["vllm", "trtllm", "sglang"], default="vllm")
    parser.add_argument("--backend-version", help="database version (default: AIConfigurator's latest)")
    parser.add_argument("--tp", default="1", help="comma-separated tensor-parallel sizes (default 1)")
    parser.add_argument("--out", required=True, type=Path, help="parent folder; one profile folder per TP size")
    parser.add_argument("--max-context", type=int, default=32768, help="context limit written to meta.json")
    parser.add_argument("--osl", type=int, default=500, help="output tokens of the decode sweep (default 500)")
    parser.add_argument("--memory-fraction", type=float, default=0.9, help="GPU memory share for weights + KV")
    parser.add_argument("--quick", action="store_true", help="fewer points (a couple of minutes per TP size)")
    parser.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    try:
        sizes = sorted({int(x) for x in args.tp.split(",") if x.strip()})
    except ValueError:
        raise InputError(f"expected comma-separated integers (got {args.tp!r})", field="--tp") from None
    if not sizes or min(sizes) < 1:
        raise InputError(f"expected positive sizes (got {args.tp!r})", field="--tp")
    if args.max_context < 2 or args.osl < 2:
        raise InputError("--max-context and --osl must be >= 2")
    if not 0 < args.memory_fraction <= 1:
        raise InputError(f"must be in (0, 1] (got {args.memory_fraction})", field="--memory-fraction")
    estimate, source = load_estimator()
    for tp in sizes:
        folder = args.out / f"{_slug(args.model)}_{args.system}_{args.backend}_tp{tp}"
        meta = profile_offline(estimate, source, args, tp, folder)
        print(f"{folder}: {meta.model} on {tp}x {meta.system}, {meta.backend}, KV {meta.max_kv_tokens} tokens")
    return 0


Estimator = Callable[..., Any]


def load_estimator() -> tuple[Estimator, str]:
    """AIConfigurator's ``cli_estimate`` and its name with version, or a clear error when the extra
    is not installed."""
    try:
        from aiconfigurator.cli.api import cli_estimate
    except ImportError as exc:
        raise InputError(
            f"profile offline needs NVIDIA AIConfigurator ({exc.name or 'aiconfigurator'} is not installed): "
            "pip install 'fleet-planner[aiconfigurator]'"
        ) from None
    from importlib.metadata import version

    return cli_estimate, f"NVIDIA AIConfigurator {version('aiconfigurator')}"


def profile_offline(estimate: Estimator, source: str, args: argparse.Namespace, tp: int, folder: Path) -> ProfileMeta:
    """Sweep one TP size and write its profile folder."""
    common = {"backend_name": args.backend, "backend_version": args.backend_version, "tp_size": tp}

    def call(**kwargs: Any) -> Any:
        try:
            with _quiet():
                return estimate(args.model, args.system, **common, **kwargs)
        except Exception as exc:  # AIConfigurator raises plain exceptions for unknown models/systems
            raise InputError(f"AIConfigurator: {exc}") from None

    first = call(mode="static_ctx", isl=1024, osl=1, batch_size=1)
    kv_tokens = _kv_tokens(first.summary, args.memory_fraction)
    isl_grid = [i for i in (QUICK_ISL if args.quick else FULL_ISL) if i < args.max_context]
    prefill = [PrefillPoint(isl=i, ttft_ms=call(mode="static_ctx", isl=i, osl=1, batch_size=1).ttft) for i in isl_grid]
    decode = []
    for isl in QUICK_DECODE_ISL if args.quick else FULL_DECODE_ISL:
        if isl + args.osl > args.max_context:
            continue
        for batch in QUICK_BATCHES if args.quick else FULL_BATCHES:
            if batch * (isl + args.osl) > kv_tokens:
                break
            result = call(mode="static_gen", isl=isl, osl=args.osl, batch_size=batch)
            decode.append(DecodePoint(context=isl + args.osl / 2, batch=batch, itl_ms=result.tpot))
    meta = ProfileMeta(
        model=args.model,
        system=args.system,
        backend=first.backend_name,
        tp=tp,
        gpus_per_engine=tp,
        max_context=args.max_context,
        max_kv_tokens=kv_tokens,
        source=f"{source} {first.backend_name} {first.backend_version} database "
        f"via fleet-planner profile offline (silicon-calibrated estimates, memory fraction {args.memory_fraction:g})",
    )
    write_profile(folder, meta, prefill, decode)
    return meta


def _kv_tokens(summary: Any, fraction: float) -> int:
    """KV tokens per engine: free memory per GPU over KV bytes per token per GPU."""
    memory = summary.get_memory()  # GiB per GPU
    kv_bytes, tokens = summary.get_kv_per_seq()  # one sequence's KV bytes per GPU, and its length
    other = (memory["total"] - memory["kvcache"]) * GIB
    free = fraction * summary.get_mem_capacity_bytes() - other
    if free <= 0:
        raise InputError("the model does not fit this GPU at that tensor-parallel size (no memory left for KV)")
    return int(free / (kv_bytes / tokens))


@contextlib.contextmanager
def _quiet() -> Any:
    """AIConfigurator logs a warning per database file it loads; keep the terminal for our output."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logging.disable(previous)


def _slug(model: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", model.split("/")[-1]).lower()
