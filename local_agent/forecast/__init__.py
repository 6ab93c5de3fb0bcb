"""Load forecasts for the local agent: mean and upper quantile at any horizon, never negative.

``make_predictor(name, interval_s=...)`` gives one of: constant (last value), moving_average, holt,
arima, kalman, seasonal, prophet (optional extra).
"""

from local_agent.forecast.base import Forecast, Predictor
from local_agent.forecast.evaluate import evaluate, rates_from_arrivals
from local_agent.forecast.registry import PREDICTORS, make_predictor

__all__ = ["PREDICTORS", "Forecast", "Predictor", "evaluate", "make_predictor", "rates_from_arrivals"]
