"""Prophet forecasts (optional extra ``fleet-planner[prophet]``), kept for parity with the anchor.

Prophet fits take seconds, so it refits every ``refit_every`` observations on the last ``window``
and answers from the last fit in between. Like the seasonal predictor, a missing interval advances
the clock (Prophet models time of day), so it is recorded as a gap rather than skipped.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections import deque
from typing import Any

import numpy as np

from local_agent.forecast.base import Predictor
from local_agent.forecast.constant import ConstantPredictor

INSTALL_HINT = "the prophet predictor needs the optional dependency: pip install 'fleet-planner[prophet]'"


def require_prophet() -> None:
    """Fail at construction time, with the install command, when Prophet is not installed."""
    if importlib.util.find_spec("prophet") is None:
        raise ImportError(INSTALL_HINT)


class ProphetPredictor(Predictor):
    """Prophet with daily seasonality; upper from Prophet's ``yhat_upper`` at the matching width."""

    name = "prophet"

    def __init__(
        self,
        *,
        interval_s: float,
        quantile: float = 0.9,
        window: int = 2016,
        refit_every: int = 288,
        min_points: int = 24,
        **prophet_options: Any,
    ) -> None:
        super().__init__(interval_s=interval_s, quantile=quantile)
        require_prophet()
        if min_points < 2 or window < min_points or refit_every < 1:
            raise ValueError("need min_points >= 2, window >= min_points and refit_every >= 1")
        self._prophet_cls = importlib.import_module("prophet").Prophet
        self._pandas = importlib.import_module("pandas")
        self._options = {"interval_width": 2 * quantile - 1, "daily_seasonality": True, **prophet_options}
        self._min_points = min_points
        self._refit_every = refit_every
        self._points: deque[tuple[int, float]] = deque(maxlen=window)
        self._clock = 0
        self._observed = 0
        self._fallback = ConstantPredictor(interval_s=interval_s, quantile=quantile)
        self._model: Any = None
        self._next_fit_at = min_points

    def _missing(self) -> None:
        self._clock += 1

    def _update(self, value: float) -> None:
        self._points.append((self._clock, value))
        self._clock += 1
        self._observed += 1
        self._fallback.observe(value)

    def _stamps(self, indices: np.ndarray) -> Any:
        return self._pandas.to_datetime(indices * self.interval_s, unit="s")

    def _path(self, steps: int) -> tuple[np.ndarray, np.ndarray]:
        if self._observed < self._min_points:
            return self._fallback.path(steps)
        if self._model is None or self._observed >= self._next_fit_at:
            indices, values = (np.array(column) for column in zip(*self._points, strict=True))
            model = self._prophet_cls(**self._options)
            model.fit(self._pandas.DataFrame({"ds": self._stamps(indices), "y": values}))
            self._model = model
            self._next_fit_at = self._observed + self._refit_every
        future = self._pandas.DataFrame({"ds": self._stamps(np.arange(self._clock, self._clock + steps))})
        state = np.random.get_state()
        np.random.seed(0)  # Prophet samples its intervals from the global RNG; fix it for replays
        try:
            frame = self._model.predict(future)
        finally:
            np.random.set_state(state)
        return frame["yhat"].to_numpy(dtype=float), frame["yhat_upper"].to_numpy(dtype=float)
