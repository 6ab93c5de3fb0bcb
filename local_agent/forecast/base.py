"""The forecast contract shared by every predictor: validation, idle zeros, missing data, clamping.

Subclasses only see clean observations (finite, >= 0, after the first non-zero value) and return
an unclamped mean/upper path; this base class owns every rule the anchor got wrong (negative
forecasts, one-step means only, a missing metric read as zero load).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from statistics import NormalDist

import numpy as np
from pydantic import BaseModel, Field, model_validator


class Forecast(BaseModel, frozen=True):
    """Load expected ``horizon_s`` ahead: ``mean`` and the ``quantile`` upper bound ``upper``."""

    mean: float = Field(ge=0.0, allow_inf_nan=False)
    upper: float = Field(ge=0.0, allow_inf_nan=False)
    quantile: float = Field(gt=0.0, lt=1.0)
    horizon_s: float = Field(gt=0.0, allow_inf_nan=False)

    @model_validator(mode="after")
    def _upper_covers_mean(self) -> Forecast:
        if self.upper < self.mean:
            raise ValueError(f"upper ({self.upper}) must be >= mean ({self.mean})")
        return self


def normal_z(quantile: float) -> float:
    """Standard-normal quantile, for predictors whose predictive distribution is Gaussian."""
    return NormalDist().inv_cdf(quantile)


def check_value(value: float) -> float:
    """The observation as a float, or ValueError: NaN, inf and negative loads are metric bugs."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"observation must be a number or None, got {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"observation must be finite, got {number!r} (pass None for a missing metric)")
    if number < 0:
        raise ValueError(f"observation must be >= 0, got {number!r}")
    return number


class Predictor(ABC):
    """Forecasts a per-interval load series (one observation every ``interval_s`` seconds).

    Rules every predictor follows:

    * ``observe(None)`` is a missing metric, never zero load: the model state is not touched, so
      predictions are exactly what they were. The seasonal and prophet predictors model time of
      day, so for them it also advances the clock (a recorded gap), keeping the daily phase.
    * Zeros before the first non-zero value are an idle service, not a level: they are skipped
      like missing values so they cannot drag the model down.
    * NaN, inf and negative observations raise ValueError and leave the state unchanged.
    * ``mean`` and ``upper`` are clamped at >= 0 and ``upper >= mean``.
    """

    name: str = ""

    def __init__(self, *, interval_s: float, quantile: float = 0.9) -> None:
        if not (isinstance(interval_s, (int, float)) and math.isfinite(interval_s) and interval_s > 0):
            raise ValueError(f"interval_s must be a finite number > 0, got {interval_s!r}")
        if not (isinstance(quantile, (int, float)) and 0.5 <= quantile < 1.0):
            raise ValueError(f"quantile must be in [0.5, 1), got {quantile!r}")
        self.interval_s = float(interval_s)
        self.quantile = float(quantile)
        self._started = False

    @property
    def started(self) -> bool:
        """True once a non-zero value has been seen (before that the forecast is zero load)."""
        return self._started

    def observe(self, value: float | None) -> None:
        """Record the load of the interval that just ended; None means the metric was missing."""
        if value is None:
            self._missing()
            return
        number = check_value(value)
        if not self._started and number == 0.0:
            self._missing()
            return
        self._started = True
        self._update(number)

    def warm(self, values: Sequence[float | None]) -> None:
        """Observe a history in order; all values are validated first so a bad one changes nothing."""
        for index, value in enumerate(values):
            if value is not None:
                try:
                    check_value(value)
                except ValueError as error:
                    raise ValueError(f"warm: values[{index}]: {error}") from None
        for value in values:
            self.observe(value)

    def predict(self, steps: int = 1) -> Forecast:
        """Mean and upper quantile of the load ``steps`` intervals ahead."""
        means, uppers = self.path(steps)
        return self._forecast(float(means[-1]), float(uppers[-1]), steps)

    def predict_max(self, steps: int) -> Forecast:
        """Largest mean and upper over horizons 1..steps: the load a replica starting now must cover."""
        means, uppers = self.path(steps)
        return self._forecast(float(means.max()), float(uppers.max()), steps)

    def path(self, steps: int) -> tuple[np.ndarray, np.ndarray]:
        """Clamped mean and upper for every horizon 1..steps, for callers that want the whole curve."""
        if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
            raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
        if not self._started:
            zeros = np.zeros(int(steps))
            return zeros, zeros
        means, uppers = self._path(int(steps))
        means = np.maximum(np.asarray(means, dtype=float), 0.0)
        uppers = np.maximum(np.asarray(uppers, dtype=float), means)
        if not (np.isfinite(means).all() and np.isfinite(uppers).all()):
            raise RuntimeError(f"{self.name} predictor produced a non-finite forecast")
        return means, uppers

    def _forecast(self, mean: float, upper: float, steps: int) -> Forecast:
        return Forecast(mean=mean, upper=upper, quantile=self.quantile, horizon_s=steps * self.interval_s)

    def _missing(self) -> None:
        """Hook for a missing (or leading idle) interval; by default the state is held."""

    @abstractmethod
    def _update(self, value: float) -> None:
        """Absorb one clean observation (finite, >= 0, after the service first saw load)."""

    @abstractmethod
    def _path(self, steps: int) -> tuple[np.ndarray, np.ndarray]:
        """Unclamped mean and upper for horizons 1..steps (arrays of length ``steps``)."""
