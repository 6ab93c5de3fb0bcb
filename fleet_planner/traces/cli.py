"""``fleet-planner trace synth|info``: build replayable traces from rate shapes and inspect traces."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from fleet_planner.durations import parse_duration
from fleet_planner.traces.readers import (
    TRACE_FORMATS,
    csv_header,
    is_burstgpt_header,
    read_trace,
    write_mooncake_jsonl,
)
from fleet_planner.traces.synth import ARRIVAL_MODELS, synthesize_from_rates
from fleet_planner.traces.trace import Trace

DEFAULT_FORMAT_RULE = "mooncake for .jsonl, burstgpt for a CSV with its header, else azure"


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``trace`` command and its ``synth`` and ``info`` subcommands."""
    trace = subparsers.add_parser("trace", help="synthesise and inspect request traces")
    commands = trace.add_subparsers(dest="trace_command", required=True)

    synth = commands.add_parser("synth", help="synthesise a Mooncake JSONL trace from a rate series")
    synth.add_argument(
        "--rate",
        required=True,
        type=Path,
        help="rate series CSV (window_start_s,total_rate_rps[,rate_weighted_client_cv])",
    )
    synth.add_argument(
        "--lengths", required=True, type=Path, help="trace whose (input, output) length pairs are resampled"
    )
    synth.add_argument(
        "--lengths-format", choices=TRACE_FORMATS, help=f"format of --lengths (default: {DEFAULT_FORMAT_RULE})"
    )
    synth.add_argument(
        "--peak-rps", type=_positive_float, help="rescale the series so its peak over the span is this rate"
    )
    synth.add_argument("--rate-scale", type=_positive_float, default=1.0, help="multiply all rates (after --peak-rps)")
    synth.add_argument("--start", type=_duration, default=0.0, help="where in the series to start (e.g. 6h); default 0")
    synth.add_argument("--duration", type=_duration, help="how long (e.g. 1d); default: to the end of the series")
    synth.add_argument(
        "--arrival",
        choices=ARRIVAL_MODELS,
        default="auto",
        help="arrival process within a window (auto: clients if the CSV has ServeGen's client columns, "
        "else gamma if it has a CV column, else poisson)",
    )
    synth.add_argument("--seed", type=_seed, default=0)
    synth.add_argument("--out", required=True, type=Path, help="output Mooncake JSONL path")
    synth.set_defaults(run=run_synth)

    info = commands.add_parser("info", help="print a trace's size, rates and length statistics")
    info.add_argument("path", type=Path)
    info.add_argument("--format", choices=TRACE_FORMATS, help=f"default: {DEFAULT_FORMAT_RULE}")
    info.add_argument(
        "--select",
        action="append",
        type=_selection,
        default=[],
        metavar="COLUMN=VALUE",
        help="CSV traces: only rows whose COLUMN holds VALUE (repeat for several values or columns), "
        "e.g. --select Model=GPT-4",
    )
    info.set_defaults(run=run_info)


def run_synth(args: argparse.Namespace) -> int:
    """Synthesise, write Mooncake JSONL and print a one-line summary."""
    lengths = read_trace(args.lengths, args.lengths_format or default_format(args.lengths))
    trace = synthesize_from_rates(
        args.rate,
        lengths=lengths,
        peak_rps=args.peak_rps,
        rate_scale=args.rate_scale,
        start_s=args.start,
        duration_s=args.duration,
        seed=args.seed,
        arrival=args.arrival,
    )
    write_mooncake_jsonl(trace, args.out)
    span = args.duration if args.duration is not None else trace.duration_s
    rate = len(trace) / span if span > 0 else 0.0
    print(f"wrote {args.out}: {len(trace)} requests over {span:.0f} s (mean {rate:.2f} req/s)")
    return 0


def run_info(args: argparse.Namespace) -> int:
    """Print :func:`trace_stats` of a trace file, one statistic a line."""
    select: dict[str, list[str]] = {}
    for column, value in args.select:
        select.setdefault(column, []).append(value)
    stats = trace_stats(read_trace(args.path, args.format or default_format(args.path), select))
    print(f"{args.path}")
    print(f"  requests        {stats['requests']:.0f}")
    print(f"  duration        {stats['duration_s']:.1f} s")
    print(f"  rate            mean {stats['mean_rps']:.2f} req/s, peak 1-min {stats['peak_1min_rps']:.2f} req/s")
    for kind in ("input", "output"):
        print(
            f"  {kind:<6} tokens   mean {stats[f'{kind}_mean']:.0f}, p50 {stats[f'{kind}_p50']:.0f}, "
            f"p99 {stats[f'{kind}_p99']:.0f}"
        )
    return 0


def trace_stats(trace: Trace) -> dict[str, float]:
    """Count, duration, mean and peak 1-minute request rate, and input/output token mean/p50/p99."""
    n = len(trace)
    duration = trace.duration_s
    per_minute = np.bincount((trace.arrival_s // 60.0).astype(np.int64)) if n else np.zeros(1)
    stats = {
        "requests": float(n),
        "duration_s": duration,
        "mean_rps": n / duration if duration > 0 else 0.0,
        "peak_1min_rps": float(per_minute.max()) / 60.0,
    }
    for kind, tokens in (("input", trace.input_tokens), ("output", trace.output_tokens)):
        p50, p99 = np.percentile(tokens, [50, 99]) if n else (0.0, 0.0)
        stats[f"{kind}_mean"] = float(tokens.mean()) if n else 0.0
        stats[f"{kind}_p50"] = float(p50)
        stats[f"{kind}_p99"] = float(p99)
    return stats


def default_format(path: Path) -> str:
    """Mooncake for ``.jsonl``; burstgpt for a CSV with BurstGPT's header; otherwise azure, whose
    reader also accepts the generic CSV header (an unreadable file fails in the reader)."""
    if path.suffix.lower() in (".jsonl", ".json"):
        return "mooncake"
    header = csv_header(path)
    return "burstgpt" if header is not None and is_burstgpt_header(header) else "azure"


def _selection(text: str) -> tuple[str, str]:
    column, equals, value = text.partition("=")
    if not equals or not column.strip():
        raise argparse.ArgumentTypeError(f"expected COLUMN=VALUE, got {text!r}")
    return column.strip(), value.strip()


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _seed(text: str) -> int:
    """A random seed numpy accepts: a whole number >= 0 (a negative one was a traceback)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (np.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be finite and > 0, got {text!r}")
    return value
