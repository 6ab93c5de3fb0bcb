"""Reshape a trace's load (more or fewer requests, faster or slower, shifted, cut) reproducibly,
so one real trace can drive scenarios at several fleet sizes."""

from __future__ import annotations

import math

import numpy as np

from fleet_planner.traces.trace import MAX_TRACE_REQUESTS, Trace

COPY_JITTER_S = 30.0


def scale_trace(
    trace: Trace,
    *,
    start_s: float = 0.0,
    rate_scale: float = 1.0,
    time_scale: float = 1.0,
    offset_s: float = 0.0,
    duration_s: float | None = None,
    seed: int = 0,
) -> Trace:
    """A transformed copy of ``trace``; the same ``seed`` always gives the same result.

    Steps, in order:
    0. ``start_s`` (on the trace's own time line): requests before it are dropped and the rest
       move earlier by it, so a slice of a days-long trace can be replayed from its own 0.
    1. ``rate_scale``: each request appears ``floor(rate_scale)`` times plus once more with
       probability ``rate_scale % 1`` (so < 1 thins by a seeded Bernoulli). Extra copies are
       moved by a uniform jitter within +-``COPY_JITTER_S`` (reflected at 0): they stand for other
       users sending the same kind of request in the same minute, so the minute-scale rate shape
       is kept while copies do not arrive as artificial bursts (a jitter of a fraction of the mean
       gap would turn every request into a burst of ``rate_scale`` simultaneous ones). Copies
       keep the original's lengths and ``hash_ids``.
    2. ``time_scale``: arrival times are multiplied (> 1 stretches, < 1 compresses).
    3. ``offset_s``: arrivals are shifted later.
    4. ``duration_s``: only arrivals < ``duration_s`` (on the new time line) are kept.
    """
    _require(math.isfinite(start_s) and start_s >= 0, f"start_s must be finite and >= 0, got {start_s!r}")
    if start_s > 0:
        _require(
            start_s <= trace.duration_s,
            f"start_s {start_s:g} s is after the trace's last request (at {trace.duration_s:g} s)",
        )
        trace = _from(trace, start_s)
    _require(math.isfinite(rate_scale) and rate_scale > 0, f"rate_scale must be finite and > 0, got {rate_scale!r}")
    _require(math.isfinite(time_scale) and time_scale > 0, f"time_scale must be finite and > 0, got {time_scale!r}")
    _require(math.isfinite(offset_s) and offset_s >= 0, f"offset_s must be finite and >= 0, got {offset_s!r}")
    if duration_s is not None:
        _require(math.isfinite(duration_s) and duration_s > 0, f"duration_s must be finite and > 0, got {duration_s!r}")

    n = len(trace)
    _require(
        n * rate_scale <= MAX_TRACE_REQUESTS,
        f"rate_scale {rate_scale:g} would make about {n * rate_scale:.3g} requests, more than {MAX_TRACE_REQUESTS}",
    )
    rng = np.random.default_rng(seed)
    whole, fraction = divmod(rate_scale, 1.0)
    copies = np.full(n, int(whole), dtype=np.int64) + (rng.random(n) < fraction)
    source_index = np.repeat(np.arange(n), copies)
    # Rank of each copy among the copies of its request: 0 is the original instant.
    first_of_request = np.repeat(np.cumsum(copies) - copies, copies)
    rank = np.arange(source_index.size) - first_of_request
    arrival = trace.arrival_s[source_index].astype(np.float64)
    jitter = (rng.random(source_index.size) - 0.5) * (2 * COPY_JITTER_S)
    arrival = np.where(rank > 0, np.abs(arrival + jitter), arrival)

    arrival = arrival * time_scale + offset_s
    order = np.argsort(arrival, kind="stable")
    if duration_s is not None:
        order = order[arrival[order] < duration_s]
    kept = source_index[order]
    hash_ids = [trace.hash_ids[i] for i in kept] if trace.hash_ids is not None else None
    return Trace(
        arrival_s=arrival[order],
        input_tokens=trace.input_tokens[kept],
        output_tokens=trace.output_tokens[kept],
        source=trace.source,
        hash_ids=hash_ids,
    )


def _from(trace: Trace, start_s: float) -> Trace:
    """The requests at or after ``start_s`` (arrivals are sorted), moved earlier by it."""
    first = int(np.searchsorted(trace.arrival_s, start_s, side="left"))
    return Trace(
        arrival_s=trace.arrival_s[first:] - start_s,
        input_tokens=trace.input_tokens[first:],
        output_tokens=trace.output_tokens[first:],
        source=trace.source,
        hash_ids=trace.hash_ids[first:] if trace.hash_ids is not None else None,
    )


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)
