"""ARIMA on a sliding window (statsmodels SARIMAX), refitted every few observations.

Fitting costs ~20-60 ms, so parameters are re-estimated only every ``refit_every`` observations;
in between the fitted model is extended with the new data at fixed parameters (~3 ms). Until
``min_points`` observations exist, or when a fit fails, the last-value predictor answers.
"""

from __future__ import annotations

import logging
import warnings
from collections import deque
from typing import Literal

import numpy as np
from statsmodels.tsa.statespace.sarimax import SARIMAX, SARIMAXResultsWrapper

from local_agent.forecast.base import Predictor, normal_z
from local_agent.forecast.constant import ConstantPredictor

logger = logging.getLogger(__name__)

Order = tuple[int, int, int]
AUTO_ORDERS: tuple[Order, ...] = ((0, 1, 1), (1, 1, 1), (2, 1, 1), (1, 1, 0))
_MIN_CACHED_STEPS = 64  # one model call serves predict() and predict_max() on the same state


class ArimaPredictor(Predictor):
    """ARIMA(p, d, q) forecasts; upper from the model's Gaussian forecast interval.

    ``order="auto"`` picks the lowest-AIC order of a tiny grid at every refit (about 4x the fit
    cost). Values are divided by the window mean before fitting so the optimiser sees O(1) data.
    """

    name = "arima"

    def __init__(
        self,
        *,
        interval_s: float,
        quantile: float = 0.9,
        order: Order | Literal["auto"] = (2, 1, 1),
        window: int = 288,
        refit_every: int = 24,
        min_points: int = 12,
    ) -> None:
        super().__init__(interval_s=interval_s, quantile=quantile)
        if order != "auto" and not (len(order) == 3 and all(isinstance(o, int) and o >= 0 for o in order)):
            raise ValueError(f"order must be 'auto' or three integers >= 0, got {order!r}")
        if min_points < 4 or window < min_points or refit_every < 1:
            raise ValueError("need min_points >= 4, window >= min_points and refit_every >= 1")
        self._orders: tuple[Order, ...] = AUTO_ORDERS if order == "auto" else ((order[0], order[1], order[2]),)
        self._min_points = min_points
        self._refit_every = refit_every
        self._z = normal_z(quantile)
        self._values: deque[float] = deque(maxlen=window)
        self._fallback = ConstantPredictor(interval_s=interval_s, quantile=quantile)
        self._results: SARIMAXResultsWrapper | None = None
        self._params: dict[Order, np.ndarray] = {}
        self._scale = 1.0
        self._pending: deque[float] = deque(maxlen=refit_every)  # more than this means a refit is due
        self._observed = 0
        self._next_fit_at = min_points
        self._cache: tuple[int, np.ndarray, np.ndarray] | None = None
        self._warned = False

    def _update(self, value: float) -> None:
        self._values.append(value)
        self._fallback.observe(value)
        self._pending.append(value)
        self._observed += 1
        self._cache = None

    def _path(self, steps: int) -> tuple[np.ndarray, np.ndarray]:
        if self._cache is not None and self._cache[0] >= steps:
            return self._cache[1][:steps], self._cache[2][:steps]
        horizon = max(steps, _MIN_CACHED_STEPS)
        means, uppers = self._model_path(horizon)
        self._cache = (horizon, means, uppers)
        return means[:steps], uppers[:steps]

    def _model_path(self, steps: int) -> tuple[np.ndarray, np.ndarray]:
        if self._observed < self._min_points:
            return self._fallback.path(steps)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if self._observed >= self._next_fit_at:
                    self._next_fit_at = self._observed + self._refit_every
                    self._pending.clear()
                    self._results = self._fit(np.fromiter(self._values, dtype=float))
                elif self._results is not None and self._pending:
                    self._results = self._results.extend(np.fromiter(self._pending, dtype=float) / self._scale)
                    self._pending.clear()
                if self._results is None:
                    return self._fallback.path(steps)
                forecast = self._results.get_forecast(steps)
                means = np.asarray(forecast.predicted_mean, dtype=float) * self._scale
                uppers = means + self._z * np.asarray(forecast.se_mean, dtype=float) * self._scale
            if not (np.isfinite(means).all() and np.isfinite(uppers).all()):
                raise FloatingPointError("non-finite ARIMA forecast")
            return means, uppers
        except Exception as error:
            self._results = None
            if not self._warned:
                logger.warning("arima: model failed (%s); using last value until the next refit", error)
                self._warned = True
            return self._fallback.path(steps)

    def _fit(self, values: np.ndarray) -> SARIMAXResultsWrapper:
        """Best-AIC fit over the configured orders, warm-started from the previous parameters."""
        self._scale = max(float(values.mean()), 1e-9)
        data = values / self._scale
        best = None
        for order in self._orders:
            model = SARIMAX(data, order=order)
            results = model.fit(start_params=self._params.get(order), disp=False, maxiter=50)
            if not np.isfinite(results.params).all() or not np.isfinite(results.aic):
                continue
            self._params[order] = results.params
            if best is None or results.aic < best.aic:
                best = results
        if best is None:
            raise FloatingPointError("no ARIMA order gave finite parameters")
        return best
