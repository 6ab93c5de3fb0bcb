"""Burstiness of arrivals: the index of dispersion of request counts, and rate series shaped like a
real trace (for comparing a synthetic arrival model with the trace at equal mean rate)."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import numpy as np

from fleet_planner.errors import InputError
from fleet_planner.files import write_atomically
from fleet_planner.traces.synth import RateSeries
from fleet_planner.traces.trace import Trace

# Counting intervals: a scheduler's second, a queue's ten seconds, an autoscaler's minute.
DISPERSION_BINS_S: tuple[float, ...] = (1.0, 10.0, 60.0)


def index_of_dispersion(arrival_s: np.ndarray, bin_s: float, duration_s: float) -> float:
    """Variance over mean of the request counts in consecutive ``bin_s`` intervals of ``[0, duration_s)``.

    1 for Poisson arrivals at a constant rate; larger when requests come in bursts or the rate
    drifts within the span. A trailing partial interval is left out.
    """
    bins = int(duration_s // bin_s)
    if bins < 2:
        raise ValueError(f"need at least two {bin_s:g} s intervals in {duration_s:g} s")
    counts = np.bincount((arrival_s[arrival_s < bins * bin_s] // bin_s).astype(np.int64), minlength=bins)
    mean = counts.mean()
    return float(counts.var() / mean) if mean > 0 else math.nan


def series_like(trace: Trace, window_s: float, clients_from: RateSeries, first_window: int = 0) -> RateSeries:
    """``trace``'s own rate per ``window_s`` window, with the client columns of ``clients_from``'s
    windows from ``first_window`` on: synthesis from it has the trace's mean rate and load shape
    and the client mix of the other source. A partial last window's rate is over its covered part."""
    if not clients_from.has_clients:
        raise InputError("the client source has no client columns", file=clients_from.source)
    windows = math.ceil(trace.duration_s / window_s)
    if windows < 2:
        raise ValueError(f"the trace is shorter than two {window_s:g} s windows")
    if not 0 <= first_window <= clients_from.rate_rps.size - windows:
        raise ValueError(f"first_window {first_window} leaves fewer than {windows} client windows")
    take = slice(first_window, first_window + windows)
    counts = np.bincount((trace.arrival_s // window_s).astype(np.int64), minlength=windows)[:windows]
    covered = np.minimum(window_s, trace.duration_s - np.arange(windows) * window_s)  # the last may be partial
    assert clients_from.cv is not None and clients_from.clients is not None and clients_from.top_share is not None
    return RateSeries(
        window_start_s=np.arange(windows) * window_s,
        window_s=np.full(windows, window_s),
        rate_rps=counts / covered,
        cv=clients_from.cv[take].copy(),
        clients=clients_from.clients[take].copy(),
        top_share=clients_from.top_share[take].copy(),
        gap=np.zeros(windows, dtype=bool),
        source=f"{trace.source} rates with {Path(clients_from.source).name} clients",
    )


def write_rate_series(series: RateSeries, path: str | Path) -> None:
    """Write ``series`` as a rate CSV that :func:`~fleet_planner.traces.synth.read_rate_series` reads back."""
    header = ["window_start_s", "total_rate_rps"]
    columns = [series.window_start_s, series.rate_rps]
    for name, values in (
        ("n_active_clients", series.clients),
        ("top_client_share", series.top_share),
        ("rate_weighted_client_cv", series.cv),
    ):
        if values is not None:
            header.append(name)
            columns.append(values)
    header.append("zero_rate_window")
    columns.append(series.gap.astype(np.float64))
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    for row in zip(*columns):
        writer.writerow(["" if math.isnan(v) else f"{v:.6g}" for v in row])
    write_atomically(Path(path), buffer.getvalue())  # matrix workers may write the same file at once
