"""Turning traces into per-interval rates, and walk-forward scoring of predictors on a series."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from local_agent.forecast.registry import make_predictor


def rates_from_arrivals(arrival_s: np.ndarray, interval_s: float, duration_s: float | None = None) -> np.ndarray:
    """Requests/s in each ``interval_s`` bin from 0 to ``duration_s`` (default: the last arrival,
    rounded up to whole bins). A partial last bin is divided by its true width, not the full
    interval, so its rate is not understated; arrivals at or after ``duration_s`` are dropped.
    """
    if not (math.isfinite(interval_s) and interval_s > 0):
        raise ValueError(f"interval_s must be a finite number > 0, got {interval_s!r}")
    arrivals = np.asarray(arrival_s, dtype=float)
    if arrivals.size and not (np.isfinite(arrivals).all() and arrivals.min() >= 0):
        raise ValueError("arrival_s must be finite and >= 0")
    if duration_s is None:
        bins = int(arrivals.max() // interval_s) + 1 if arrivals.size else 0
        duration = bins * interval_s
    else:
        if not (math.isfinite(duration_s) and duration_s >= 0):
            raise ValueError(f"duration_s must be finite and >= 0, got {duration_s!r}")
        bins, duration = math.ceil(duration_s / interval_s), float(duration_s)
        arrivals = arrivals[arrivals < duration]
    counts = np.bincount((arrivals // interval_s).astype(np.int64), minlength=bins)[:bins]
    widths = np.full(bins, interval_s)
    if bins:
        widths[-1] = duration - (bins - 1) * interval_s
    return counts / widths


def evaluate(
    predictor_name: str,
    series: Sequence[float | None] | np.ndarray,
    *,
    interval_s: float,
    horizon_steps: int = 1,
    warmup: int = 24,
    quantile: float = 0.9,
    **options: Any,
) -> dict[str, float]:
    """Walk-forward score: after each observation, forecast ``horizon_steps`` ahead and compare.

    Only the past is ever shown to the predictor. None or NaN entries are missing metrics (fed as
    None and not scored). ``mape`` uses only targets > 0 (NaN if there are none); ``bias`` is mean
    forecast minus actual (negative = under-forecast, the costly direction for SLAs).
    """
    if horizon_steps < 1 or warmup < 1:
        raise ValueError("horizon_steps and warmup must be >= 1")
    values: list[float | None] = [
        None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v) for v in series
    ]
    if len(values) < warmup + horizon_steps:
        raise ValueError(f"series too short: {len(values)} points for warmup={warmup}, horizon={horizon_steps}")
    predictor = make_predictor(predictor_name, interval_s=interval_s, quantile=quantile, **options)
    predictor.warm(values[:warmup])
    means, uppers, actuals = [], [], []
    for t in range(warmup, len(values) - horizon_steps + 1):
        actual = values[t + horizon_steps - 1]
        if actual is not None:
            forecast = predictor.predict(horizon_steps)
            means.append(forecast.mean)
            uppers.append(forecast.upper)
            actuals.append(actual)
        predictor.observe(values[t])
    mean, upper, target = np.array(means), np.array(uppers), np.array(actuals)
    errors = mean - target
    positive = target > 0
    return {
        "mae": float(np.abs(errors).mean()) if target.size else math.nan,
        "mape": float(np.abs(errors[positive] / target[positive]).mean()) if positive.any() else math.nan,
        "coverage_of_upper": float((target <= upper).mean()) if target.size else math.nan,
        "bias": float(errors.mean()) if target.size else math.nan,
        "n": float(target.size),
    }
