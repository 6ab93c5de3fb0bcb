"""Predictors by name, so configs and the benchmark can pick one with a string."""

from __future__ import annotations

import inspect
from typing import Any

from local_agent.forecast.arima import ArimaPredictor
from local_agent.forecast.base import Predictor
from local_agent.forecast.constant import ConstantPredictor, MovingAveragePredictor
from local_agent.forecast.holt import HoltPredictor
from local_agent.forecast.kalman import KalmanPredictor
from local_agent.forecast.prophet import ProphetPredictor
from local_agent.forecast.seasonal import SeasonalPredictor

PREDICTORS: dict[str, type[Predictor]] = {
    cls.name: cls
    for cls in (
        ConstantPredictor,
        MovingAveragePredictor,
        HoltPredictor,
        ArimaPredictor,
        KalmanPredictor,
        SeasonalPredictor,
        ProphetPredictor,
    )
}


def make_predictor(name: str, *, interval_s: float, **options: Any) -> Predictor:
    """A fresh predictor; unknown names or options raise ValueError naming the valid ones.

    ``prophet`` raises ImportError with the install command when Prophet is not installed.
    """
    cls = PREDICTORS.get(name)
    if cls is None:
        raise ValueError(f"unknown predictor {name!r}; valid names: {', '.join(sorted(PREDICTORS))}")
    parameters = inspect.signature(cls.__init__).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        valid = sorted(n for n, p in parameters.items() if p.kind is p.KEYWORD_ONLY and n != "interval_s")
        unknown = sorted(set(options) - set(valid))
        if unknown:
            raise ValueError(f"predictor {name!r}: unknown options {unknown}; valid options: {', '.join(valid)}")
    return cls(interval_s=interval_s, **options)
