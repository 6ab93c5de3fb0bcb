"""Daily seasonal naive with level correction, blended with a trend filter until a period exists.

Serving load repeats daily, so the best guess for "k intervals from now" is usually the load one
period earlier at that time of day, scaled by how today's recent level compares with the same
hours yesterday. Unlike the other predictors, a missing interval advances this predictor's clock
(recorded as a gap) because skipping it would shift the time-of-day alignment.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Literal

import numpy as np

from local_agent.forecast.base import Predictor
from local_agent.forecast.constant import ConstantPredictor
from local_agent.forecast.kalman import KalmanPredictor


class SeasonalPredictor(Predictor):
    """Seasonal naive x level ratio, with the fallback predictor answering where that is unknown.

    * reference: mean of the observed values within ``smooth_steps`` of the same phase one period
      ago (smoothing halves the reference noise that plain seasonal naive adds);
    * level ratio: sum of the last ``level_window_s`` of load over the same window one period ago,
      using only pairs where both are observed;
    * blend weight: the share of such pairs times the fallback's share of the two methods' recent
      squared errors (inverse-MSE weighting), so the forecast moves from the fallback to seasonal
      over the second period and back again on days the pattern breaks. Errors are measured one
      step ahead; the fallback's are scaled up per horizon by the growth of its own predictive
      spread, since a trend extrapolated hours ahead is far worse than one step ahead;
    * upper: the ``quantile`` of the seasonal method's own one-step residuals, blended with the
      fallback's upper at the same weight (needs ``min_residuals`` residuals before the seasonal
      part is used at all).
    """

    name = "seasonal"

    def __init__(
        self,
        *,
        interval_s: float,
        quantile: float = 0.9,
        period_s: float = 86400.0,
        level_window_s: float = 3600.0,
        smooth_steps: int = 2,
        residual_window: int = 288,
        min_residuals: int = 12,
        fallback: Literal["kalman", "constant"] = "kalman",
    ) -> None:
        super().__init__(interval_s=interval_s, quantile=quantile)
        period = round(period_s / interval_s) if math.isfinite(period_s) else 0
        if period < 2:
            raise ValueError(f"period_s must span at least 2 intervals, got {period_s!r} at interval_s={interval_s}")
        if smooth_steps < 0 or min_residuals < 1 or residual_window < min_residuals:
            raise ValueError("need smooth_steps >= 0, min_residuals >= 1 and residual_window >= min_residuals")
        if fallback not in ("kalman", "constant"):
            raise ValueError(f"fallback must be 'kalman' or 'constant', got {fallback!r}")
        self._period = period
        self._window = max(1, min(round(level_window_s / interval_s), period))
        self._smooth = min(smooth_steps, period // 2)
        self._min_residuals = min_residuals
        self._buffer = np.full(period + max(self._window, self._smooth + 1), np.nan)
        self._count = 0  # intervals recorded, observed or missing, since the first observe() call
        self._residuals: deque[float] = deque(maxlen=residual_window)
        self._fallback_residuals: deque[float] = deque(maxlen=residual_window)
        fallback_cls = KalmanPredictor if fallback == "kalman" else ConstantPredictor
        self._fallback: Predictor = fallback_cls(interval_s=interval_s, quantile=quantile)

    def _missing(self) -> None:
        self._record(math.nan)

    def _update(self, value: float) -> None:
        seasonal, _ = self._seasonal(1)
        if not math.isnan(seasonal[0]):
            self._residuals.append(value - float(seasonal[0]))
            self._fallback_residuals.append(value - float(self._fallback.path(1)[0][0]))
        self._record(value)
        self._fallback.observe(value)

    def _record(self, value: float) -> None:
        self._buffer[self._count % len(self._buffer)] = value
        self._count += 1

    def _get(self, indices: np.ndarray) -> np.ndarray:
        """Recorded values at absolute interval indices; NaN where missing or out of the buffer."""
        size = len(self._buffer)
        held = (indices >= max(self._count - size, 0)) & (indices < self._count)
        return np.where(held, self._buffer[indices % size], np.nan)

    def _seasonal(self, steps: int) -> tuple[np.ndarray, float]:
        """Seasonal forecasts for horizons 1..steps (NaN where unknown) and the share of the level
        window observed both now and one period ago."""
        nothing = np.full(steps, np.nan), 0.0
        last = self._count - 1
        recent = self._get(np.arange(last - self._window + 1, last + 1))
        before = self._get(np.arange(last - self._window + 1, last + 1) - self._period)
        paired = ~np.isnan(recent) & ~np.isnan(before)
        denominator = before[paired].sum()
        if not paired.any() or denominator <= 0:
            return nothing
        ratio = recent[paired].sum() / denominator
        horizons = np.arange(1, steps + 1)
        references = last + horizons - self._period * np.ceil(horizons / self._period).astype(int)
        offsets = np.arange(-self._smooth, self._smooth + 1)
        around = self._get(references[:, None] + offsets[None, :])
        counts = (~np.isnan(around)).sum(axis=1)
        sums = np.nansum(around, axis=1)
        smoothed = np.divide(sums, counts, out=np.full(steps, np.nan), where=counts > 0)
        return smoothed * ratio, float(paired.mean())

    def _path(self, steps: int) -> tuple[np.ndarray, np.ndarray]:
        means, uppers = self._fallback.path(steps)
        if len(self._residuals) < self._min_residuals:
            return means, uppers
        seasonal, coverage = self._seasonal(steps)
        known = ~np.isnan(seasonal)
        if coverage == 0 or not known.any():
            return means, uppers
        residuals = np.fromiter(self._residuals, dtype=float)
        seasonal_mse = float(np.mean(residuals**2))
        fallback_mse = float(np.mean(np.fromiter(self._fallback_residuals, dtype=float) ** 2))
        spreads = uppers - means
        growth = (spreads / spreads[0]) ** 2 if spreads[0] > 0 else np.ones(steps)
        fallback_mses = fallback_mse * growth
        totals = seasonal_mse + fallback_mses
        weights = coverage * np.divide(fallback_mses, totals, out=np.full(steps, 0.5), where=totals > 0)
        spread = max(float(np.quantile(residuals, self.quantile)), 0.0)
        blended_means = np.where(known, weights * seasonal + (1 - weights) * means, means)
        blended_uppers = np.where(known, weights * (seasonal + spread) + (1 - weights) * uppers, uppers)
        return blended_means, blended_uppers
