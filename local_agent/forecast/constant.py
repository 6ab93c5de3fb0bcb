"""Baselines: last value and moving average, with uppers from their own recent empirical errors.

The anchor's baselines gave only a mean; here the upper is the ``quantile`` of how far the load
actually moved k intervals after each recent forecast, so it widens with noise and with horizon.
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np

from local_agent.forecast.base import Predictor

MIN_ERROR_SAMPLES = 5


def error_quantiles(
    values: np.ndarray,
    levels: np.ndarray,
    steps: int,
    quantile: float,
    slopes: np.ndarray | None = None,
    carried: np.ndarray | None = None,
) -> np.ndarray:
    """Quantile of ``values[i + k] - levels[i]`` for k = 1..steps, where ``levels[i]`` is a flat
    forecast made after ``values[i]`` (with ``slopes``, the forecast k ahead adds ``carried[k - 1]``
    times ``slopes[i]``: a trend's).

    Horizons with too few samples extrapolate the last well-sampled one by sqrt(k) (random-walk
    growth), so long horizons never claim more certainty than short ones.
    """
    out = np.zeros(steps)
    known_k, known_q = 0, 0.0
    for k in range(1, steps + 1):
        if len(values) - k >= MIN_ERROR_SAMPLES:
            made = levels[:-k] if slopes is None or carried is None else levels[:-k] + carried[k - 1] * slopes[:-k]
            known_k, known_q = k, float(np.quantile(values[k:] - made, quantile))
            out[k - 1] = known_q
        elif known_k:
            out[k - 1] = max(known_q, 0.0) * math.sqrt(k / known_k)
        elif len(values) > 1:
            diffs = np.abs(np.diff(values))
            out[k - 1] = float(diffs.max()) * math.sqrt(k)
    return out


class ConstantPredictor(Predictor):
    """Last value: the baseline every other predictor has to beat."""

    name = "constant"

    def __init__(self, *, interval_s: float, quantile: float = 0.9, window: int = 120) -> None:
        super().__init__(interval_s=interval_s, quantile=quantile)
        if window < MIN_ERROR_SAMPLES + 1:
            raise ValueError(f"window must be >= {MIN_ERROR_SAMPLES + 1}, got {window}")
        self._values: deque[float] = deque(maxlen=window)

    def _update(self, value: float) -> None:
        self._values.append(value)

    def _path(self, steps: int) -> tuple[np.ndarray, np.ndarray]:
        values = np.fromiter(self._values, dtype=float)
        last = values[-1]
        means = np.full(steps, last)
        return means, last + error_quantiles(values, values, steps, self.quantile)


class MovingAveragePredictor(Predictor):
    """Mean of the last ``span`` values: smoother than last value on noise, laggier on ramps."""

    name = "moving_average"

    def __init__(self, *, interval_s: float, quantile: float = 0.9, span: int = 12, window: int = 120) -> None:
        super().__init__(interval_s=interval_s, quantile=quantile)
        if span < 1:
            raise ValueError(f"span must be >= 1, got {span}")
        if window < span + MIN_ERROR_SAMPLES:
            raise ValueError(f"window must be >= span + {MIN_ERROR_SAMPLES}, got {window}")
        self._span = span
        self._values: deque[float] = deque(maxlen=window)

    def _update(self, value: float) -> None:
        self._values.append(value)

    def _path(self, steps: int) -> tuple[np.ndarray, np.ndarray]:
        values = np.fromiter(self._values, dtype=float)
        sums = np.cumsum(np.concatenate(([0.0], values)))
        ends = np.arange(1, len(values) + 1)
        starts = np.maximum(ends - self._span, 0)
        levels = (sums[ends] - sums[starts]) / (ends - starts)
        means = np.full(steps, levels[-1])
        return means, levels[-1] + error_quantiles(values, levels, steps, self.quantile)
