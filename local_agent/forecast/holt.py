"""Damped-trend exponential smoothing (Holt with a damped slope), uppers from its own errors.

The moving average trails a ramp by half its span, and its upper quantile, read from its own
recent errors, then carries that lag as uncertainty long after the ramp has ended. A smoothed
level with a slope leans into the ramp (with the default rates it trails a clean ramp by less
than the average, by more than last value); damping the slope (each step ahead adds ``damping``
times the previous step's rise) keeps a short rise from being extrapolated into a long one,
which is where an undamped trend overshoots a load that steps up and stays. The agent's scale-down
guard checks at its upper by default (``guard_predictor``); as the agent's forecast itself it was
measured and not kept: docs/local-agent.md, *a damped trend in the scale-down check*.
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np

from local_agent.forecast.base import Predictor
from local_agent.forecast.constant import MIN_ERROR_SAMPLES, error_quantiles


def _fraction(name: str, value: object, *, closed: bool = False) -> float:
    """``value`` as a float in (0, 1) (or (0, 1] with ``closed``), else ValueError naming it."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or not (0.0 < float(value) < 1.0 or (closed and float(value) == 1.0)):  # type: ignore[arg-type]
        interval = "(0, 1]" if closed else "(0, 1)"
        raise ValueError(f"{name} must be a number in {interval}, got {value!r}")
    return float(value)  # type: ignore[arg-type]


class HoltPredictor(Predictor):
    """Level and damped slope; the upper at each horizon is the mean plus the ``quantile`` of the
    errors its own forecasts made that far ahead over the last ``window`` intervals.

    ``level_rate`` and ``slope_rate`` are the smoothing rates of the level and the slope;
    ``damping`` (at most 1, which is Holt's undamped trend) bounds how far a slope is carried:
    at most ``damping / (1 - damping)`` steps' worth of it at any horizon.
    """

    name = "holt"

    def __init__(
        self,
        *,
        interval_s: float,
        quantile: float = 0.9,
        level_rate: float = 0.15,
        slope_rate: float = 0.05,
        damping: float = 0.9,
        window: int = 120,
    ) -> None:
        super().__init__(interval_s=interval_s, quantile=quantile)
        self._level_rate = _fraction("level_rate", level_rate)
        self._slope_rate = _fraction("slope_rate", slope_rate)
        self._damping = _fraction("damping", damping, closed=True)
        if isinstance(window, bool) or not isinstance(window, int) or window < MIN_ERROR_SAMPLES + 1:
            raise ValueError(f"window must be an integer >= {MIN_ERROR_SAMPLES + 1}, got {window!r}")
        self._values: deque[float] = deque(maxlen=window)
        self._levels: deque[float] = deque(maxlen=window)  # state after each value
        self._slopes: deque[float] = deque(maxlen=window)
        self._level = 0.0
        self._slope = 0.0

    def _update(self, value: float) -> None:
        if not self._values:
            self._level, self._slope = value, 0.0
        else:
            carried = self._damping * self._slope
            expected = self._level + carried
            level = expected + self._level_rate * (value - expected)
            self._slope = carried + self._slope_rate * (level - self._level - carried)
            self._level = level
        self._values.append(value)
        self._levels.append(self._level)
        self._slopes.append(self._slope)

    def _carried(self, steps: int) -> np.ndarray:
        """How many steps' worth of the slope the forecast k = 1..steps ahead adds."""
        return np.cumsum(self._damping ** np.arange(1, steps + 1))

    def _path(self, steps: int) -> tuple[np.ndarray, np.ndarray]:
        carried = self._carried(steps)
        means = self._level + carried * self._slope
        values = np.fromiter(self._values, dtype=float)
        levels = np.fromiter(self._levels, dtype=float)
        slopes = np.fromiter(self._slopes, dtype=float)
        return means, means + error_quantiles(values, levels, steps, self.quantile, slopes, carried)
