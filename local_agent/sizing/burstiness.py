"""How much burstier than Poisson the arrivals are, as the squared coefficient of variation
``ca^2`` that the G/G/c approximations in :mod:`local_agent.sizing.curves` take.

The estimate is the index of dispersion of request counts in equal windows (variance over mean;
1 for Poisson), which for a renewal process tends to ``ca^2`` as windows grow. Counts are
differenced first — ``var = mean((n_i - n_{i-1})^2) / 2`` — so that a rate that rises or falls
across windows (a diurnal ramp) is not mistaken for burstiness. The same estimator serves the live
agent (its windows of admitted requests) and analytic baselines that size from a trace.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

MIN_SCV = 1.0  # never plan for smoother-than-Poisson arrivals: a noisy estimate must not under-size
MAX_SCV = 25.0
MIN_WINDOWS = 8  # fewer windows than this give no estimate (Poisson is assumed)
# The differenced variance of n windows has a relative standard error of about sqrt(3 / (n - 1))
# (adjacent differences share a window). The estimate used is its one-sided 90% lower bound, so
# Poisson traffic is not taken for bursty traffic by chance (the clamp at 1 alone biases upward).
CONFIDENCE_Z = 1.2815515655446004


def count_dispersion(counts: Sequence[float] | np.ndarray) -> float | None:
    """Index of dispersion of window counts, trend removed by differencing, at its one-sided 90%
    lower confidence bound, clamped to ``[MIN_SCV, MAX_SCV]``; None when there are fewer than
    ``MIN_WINDOWS`` windows or no requests."""
    values = np.asarray(counts, dtype=np.float64)
    if values.ndim != 1:
        raise ValueError("counts must be a 1-D sequence")
    if values.size < MIN_WINDOWS:
        return None
    if np.any(values < 0) or not np.all(np.isfinite(values)):
        raise ValueError("counts must be finite and >= 0")
    mean = float(values.mean())
    if mean <= 0:
        return None
    variance = float(np.mean(np.diff(values) ** 2)) / 2.0
    lower = 1.0 - CONFIDENCE_Z * np.sqrt(3.0 / (values.size - 1))
    return float(np.clip(variance / mean * max(lower, 0.0), MIN_SCV, MAX_SCV))


def arrival_scv(arrival_s: np.ndarray, window_s: float, start_s: float = 0.0, end_s: float | None = None) -> float:
    """``ca^2`` of a trace's arrival times, from counts in ``window_s`` windows over
    ``[start_s, end_s)`` (default: to the last arrival); 1 (Poisson) when too short to tell."""
    if window_s <= 0:
        raise ValueError(f"window_s must be > 0, got {window_s}")
    times = np.asarray(arrival_s, dtype=np.float64)
    stop = float(times.max()) if end_s is None and times.size else (end_s or start_s)
    windows = int((stop - start_s) // window_s)
    if windows < MIN_WINDOWS:
        return MIN_SCV
    inside = times[(times >= start_s) & (times < start_s + windows * window_s)]
    counts = np.bincount(((inside - start_s) // window_s).astype(np.int64), minlength=windows)
    return count_dispersion(counts) or MIN_SCV
