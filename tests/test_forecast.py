"""Load predictors: tracking, honest uppers, no negative forecasts, missing data and bad input."""

from __future__ import annotations

import importlib.util
import logging
import math
import statistics
import time

import numpy as np
import pytest
from pydantic import ValidationError

from local_agent.decide.options import AgentOptions
from local_agent.forecast import Forecast, evaluate, make_predictor, rates_from_arrivals
from local_agent.forecast.arima import ArimaPredictor
from local_agent.forecast.constant import ConstantPredictor

NAMES = ["constant", "moving_average", "holt", "kalman", "arima", "seasonal"]
HOUR = 3600.0


def _series(shape: str, n: int = 120, seed: int = 7) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n, dtype=float)
    if shape == "step":
        return np.where(t < n // 2, 100.0, 200.0) + rng.normal(0, 2, n)
    if shape == "ramp":
        return 20.0 + 2.0 * t + rng.normal(0, 1, n)
    if shape == "noisy":
        return rng.poisson(50, n).astype(float)
    if shape == "sine":  # hourly samples, daily period
        return 100.0 + 60.0 * np.sin(2 * np.pi * t / 24) + rng.normal(0, 3, n)
    raise AssertionError(shape)


def _assert_sane(forecast: Forecast) -> None:
    assert 0.0 <= forecast.mean <= forecast.upper
    assert math.isfinite(forecast.upper)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("shape", ["step", "ramp", "noisy", "sine"])
def test_mean_tracks_and_upper_covers_mean(name: str, shape: str) -> None:
    if name in ("moving_average", "holt") and shape == "sine":
        pytest.skip("a 12-sample average (or a level smoothed at 0.15) of a 24-sample cycle lags by design")
    series = _series(shape)
    predictor = make_predictor(name, interval_s=HOUR)
    errors = []
    for t, value in enumerate(series):
        if t >= 90:
            forecast = predictor.predict(1)
            _assert_sane(forecast)
            errors.append(abs(forecast.mean - value))
            for steps in (3, 12):
                _assert_sane(predictor.predict(steps))
        predictor.observe(value)
    scale = float(np.mean(np.abs(series[90:])))
    # Poisson(50) noise alone costs last value ~17%; hourly steps of a daily sine cost it ~15%
    limit = {"step": 0.1, "ramp": 0.1, "noisy": 0.25, "sine": 0.25}[shape]
    assert np.mean(errors) / scale < limit


@pytest.mark.parametrize("name", NAMES)
def test_upper_above_mean_on_noisy_load(name: str) -> None:
    predictor = make_predictor(name, interval_s=60.0)
    predictor.warm(list(_series("noisy", n=80)))
    forecast = predictor.predict(1)
    assert forecast.upper > forecast.mean * 1.05
    assert forecast.quantile == 0.9 and forecast.horizon_s == 60.0


@pytest.mark.parametrize("name", NAMES)
def test_never_negative_on_steep_fall(name: str) -> None:
    series = np.maximum(500.0 - 25.0 * np.arange(60), 0.0)
    predictor = make_predictor(name, interval_s=60.0)
    for value in series:
        predictor.observe(value)
        for steps in (1, 5, 30):
            _assert_sane(predictor.predict(steps))
            _assert_sane(predictor.predict_max(steps))


@pytest.mark.parametrize("name", NAMES)
def test_leading_idle_zeros_are_skipped(name: str) -> None:
    data = list(_series("noisy", n=30))
    with_zeros = make_predictor(name, interval_s=60.0)
    assert with_zeros.predict(2) == Forecast(mean=0, upper=0, quantile=0.9, horizon_s=120)
    with_zeros.warm([0.0] * 50 + data)
    plain = make_predictor(name, interval_s=60.0)
    plain.warm(data)
    assert with_zeros.predict(3) == plain.predict(3)
    assert with_zeros.predict(1).mean > 30


@pytest.mark.parametrize("name", ["constant", "moving_average", "holt", "kalman", "arima"])
def test_missing_value_holds_state(name: str) -> None:
    data = list(_series("ramp", n=40))
    held = make_predictor(name, interval_s=60.0)
    held.warm(data)
    before = held.predict(4)
    held.observe(None)
    skipped = make_predictor(name, interval_s=60.0)
    skipped.warm(data)
    assert held.predict(4) == before == skipped.predict(4)
    assert held.predict(1).mean > 50  # not dragged towards zero


def test_seasonal_missing_values_keep_the_daily_phase() -> None:
    series = _series("sine", n=24 * 4)
    gap = slice(40, 46)  # a day before the reference phase of the forecast target (61)
    outcomes = {}
    for label, fill in (("truth", None), ("missing", "none"), ("zeros", 0.0)):
        predictor = make_predictor("seasonal", interval_s=HOUR)
        values: list[float | None] = list(series[:80])
        if fill is not None:
            values[gap] = [None if fill == "none" else fill] * 6
        predictor.warm(values)
        outcomes[label] = predictor.predict(6).mean
    target = series[85]
    assert abs(outcomes["missing"] - target) < 0.15 * target
    assert abs(outcomes["missing"] - outcomes["truth"]) < 0.05 * target
    assert abs(outcomes["zeros"] - outcomes["truth"]) > abs(outcomes["missing"] - outcomes["truth"])


@pytest.mark.parametrize("name", NAMES)
def test_bad_values_rejected_without_changing_state(name: str) -> None:
    predictor = make_predictor(name, interval_s=60.0)
    predictor.warm(list(_series("noisy", n=40)))
    before = predictor.predict(3)
    for bad in (math.nan, math.inf, -1.0, "12", True):
        with pytest.raises(ValueError, match="observation"):
            predictor.observe(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"values\[2\]"):
        predictor.warm([10.0, 20.0, math.nan])
    assert predictor.predict(3) == before


@pytest.mark.parametrize("name", NAMES)
def test_deterministic_and_predict_max_covers_each_horizon(name: str) -> None:
    data = list(_series("sine", n=60))
    first, second = make_predictor(name, interval_s=HOUR), make_predictor(name, interval_s=HOUR)
    first.warm(data)
    second.warm(data)
    assert first.predict(6) == second.predict(6)
    peak = first.predict_max(8)
    assert peak.horizon_s == 8 * HOUR
    assert all(peak.upper >= first.predict(k).upper - 1e-9 for k in range(1, 9))
    with pytest.raises(ValueError, match="steps"):
        first.predict(0)


def test_seasonal_beats_last_value_on_a_daily_pattern() -> None:
    series = _series("sine", n=24 * 5, seed=3)
    seasonal = evaluate("seasonal", series, interval_s=HOUR, horizon_steps=3, warmup=24)
    constant = evaluate("constant", series, interval_s=HOUR, horizon_steps=3, warmup=24)
    assert seasonal["mae"] < 0.6 * constant["mae"]


def test_seasonal_period_is_configurable() -> None:
    series = 50.0 + 40.0 * np.sin(2 * np.pi * np.arange(200) / 20)  # a 20-minute cycle
    seasonal = evaluate("seasonal", series, interval_s=60.0, horizon_steps=5, period_s=1200.0, level_window_s=300.0)
    constant = evaluate("constant", series, interval_s=60.0, horizon_steps=5)
    assert seasonal["mae"] < 0.2 * constant["mae"]
    with pytest.raises(ValueError, match="period_s"):
        make_predictor("seasonal", interval_s=60.0, period_s=60.0)


def test_kalman_follows_a_ramp_with_less_lag_than_last_value() -> None:
    ramp = 10.0 + 3.0 * np.arange(80)
    kalman = evaluate("kalman", ramp, interval_s=60.0, horizon_steps=2)
    constant = evaluate("constant", ramp, interval_s=60.0, horizon_steps=2)
    assert constant["bias"] == pytest.approx(-6.0)
    assert kalman["mae"] < 0.3 * constant["mae"]


def test_holt_follows_a_ramp_with_less_lag_than_the_moving_average() -> None:
    ramp = 10.0 + 3.0 * np.arange(80)
    holt = evaluate("holt", ramp, interval_s=60.0, horizon_steps=4)
    average = evaluate("moving_average", ramp, interval_s=60.0, horizon_steps=4)
    assert average["bias"] < -20.0  # half its 12-sample span plus the horizon, 3 req/s a step
    # the damped slope takes back over a quarter of the lag (a level alone, smoothed at 0.15,
    # would trail by about as much as the average)
    assert holt["mae"] < 0.8 * average["mae"]


def test_holt_damping_bounds_how_far_a_rise_is_carried() -> None:
    """After a rise that stopped, the forecast at any horizon adds at most damping / (1 - damping)
    steps of the slope; undamped (damping 1) it keeps climbing with the horizon."""
    rise = [100.0] * 20 + [100.0 + 10.0 * step for step in range(1, 11)]
    damped = make_predictor("holt", interval_s=60.0, damping=0.8)
    undamped = make_predictor("holt", interval_s=60.0, damping=1.0)
    damped.warm(rise)
    undamped.warm(rise)
    slope = damped._slope  # type: ignore[attr-defined]
    level = damped._level  # type: ignore[attr-defined]
    assert slope > 0
    far = damped.predict(200).mean
    assert far <= level + slope * 0.8 / 0.2 + 1e-9
    assert damped.predict(200).mean == pytest.approx(damped.predict(100).mean, rel=1e-6)
    assert undamped.predict(200).mean > undamped.predict(100).mean + 50.0


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("level_rate", 0.0),
        ("level_rate", 1.0),
        ("slope_rate", math.nan),
        ("slope_rate", True),
        ("damping", 0.0),
        ("damping", 1.5),
        ("window", 5),
        ("window", 12.5),
    ],
)
def test_holt_rejects_bad_options(option: str, value: object) -> None:
    with pytest.raises(ValueError, match=option):
        make_predictor("holt", interval_s=60.0, **{option: value})


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"predictor": "lstm"}, "predictor: unknown predictor 'lstm'"),
        ({"guard_predictor": "lstm"}, "guard_predictor: unknown predictor 'lstm'"),
        ({"predictor_options": {"windw": 10}}, "predictor: predictor 'moving_average': unknown options"),
        ({"predictor": "holt", "predictor_options": {"damping": 2.0}}, "predictor: damping must be"),
    ],
)
def test_agent_options_refuse_unknown_predictors_where_the_config_is_read(options: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        AgentOptions(**options)
    assert AgentOptions(guard_predictor=None).guard_predictor is None


@pytest.mark.parametrize(
    "options",
    [
        {"headroom": True},
        {"down_margin": "0.5"},
        {"max_step_up": 2.5},
        {"tune_knobs": 1},
        {"warmup_windows": "3"},
        {"opening_margin": True},
        {"opening_margin": 11.0},
        {"opening_margin": float("inf")},
    ],
)
def test_agent_options_refuse_values_of_the_wrong_type(options: dict) -> None:
    with pytest.raises(ValidationError, match=next(iter(options))):
        AgentOptions(**options)
    assert AgentOptions(headroom=2, stabilization_window_s=600).headroom == 2.0  # an int is a valid float


def test_arima_falls_back_to_last_value_with_few_points() -> None:
    arima, constant = make_predictor("arima", interval_s=60.0), ConstantPredictor(interval_s=60.0)
    for value in (5.0, 9.0, 7.0, 8.0, 6.0):
        arima.observe(value)
        constant.observe(value)
        assert arima.predict(2) == constant.predict(2)


def test_arima_survives_flat_series_and_failed_fits(monkeypatch: pytest.MonkeyPatch, caplog) -> None:
    flat = make_predictor("arima", interval_s=60.0)
    flat.warm([10.0] * 30)
    assert flat.predict(3).mean == pytest.approx(10.0, rel=0.01)

    def broken_fit(self, values):
        raise np.linalg.LinAlgError("singular")

    monkeypatch.setattr(ArimaPredictor, "_fit", broken_fit)
    failing = make_predictor("arima", interval_s=60.0, refit_every=5)
    last_value = ConstantPredictor(interval_s=60.0)
    with caplog.at_level(logging.WARNING):
        for value in _series("noisy", n=40):
            failing.observe(value)
            last_value.observe(value)
            assert failing.predict(2) == last_value.predict(2)
    assert sum("arima" in record.message for record in caplog.records) == 1


def test_arima_predict_after_observe_is_fast() -> None:
    predictor = make_predictor("arima", interval_s=60.0)
    series = _series("noisy", n=120)
    predictor.warm(list(series[:80]))
    predictor.predict(1)
    timings = []
    for value in series[80:]:
        start = time.perf_counter()
        predictor.observe(value)
        predictor.predict(1)
        timings.append(time.perf_counter() - start)
    assert statistics.median(timings) < 0.05


@pytest.mark.skipif(importlib.util.find_spec("prophet") is not None, reason="prophet is installed")
def test_prophet_missing_gives_install_hint() -> None:
    with pytest.raises(ImportError, match=r"fleet-planner\[prophet\]"):
        make_predictor("prophet", interval_s=60.0)


def test_unknown_names_and_options_are_listed() -> None:
    with pytest.raises(
        ValueError, match="valid names: arima, constant, holt, kalman, moving_average, prophet, seasonal"
    ):
        make_predictor("lstm", interval_s=60.0)
    with pytest.raises(ValueError, match="unknown options \\['windw'\\]; valid options: quantile, window"):
        make_predictor("constant", interval_s=60.0, windw=10)
    with pytest.raises(ValueError, match="interval_s"):
        make_predictor("kalman", interval_s=0.0)
    with pytest.raises(ValueError, match="quantile"):
        make_predictor("kalman", interval_s=1.0, quantile=1.0)


def test_forecast_contract() -> None:
    with pytest.raises(ValidationError):
        Forecast(mean=5.0, upper=4.0, quantile=0.9, horizon_s=60.0)
    with pytest.raises(ValidationError):
        Forecast(mean=-1.0, upper=4.0, quantile=0.9, horizon_s=60.0)
    forecast = Forecast(mean=1.0, upper=2.0, quantile=0.9, horizon_s=60.0)
    with pytest.raises(ValidationError):
        forecast.mean = 3.0  # type: ignore[misc]


def test_rates_from_arrivals() -> None:
    arrivals = np.array([0.1, 0.2, 1.5, 2.9, 3.0])
    np.testing.assert_allclose(rates_from_arrivals(arrivals, 1.0), [2.0, 1.0, 1.0, 1.0])
    np.testing.assert_allclose(rates_from_arrivals(arrivals, 2.0), [1.5, 1.0])
    # explicit duration: later arrivals dropped, the partial last bin divided by its true width
    np.testing.assert_allclose(rates_from_arrivals(arrivals, 1.0, duration_s=2.5), [2.0, 1.0, 0.0])
    np.testing.assert_allclose(rates_from_arrivals(arrivals, 1.0, duration_s=6.0), [2, 1, 1, 1, 0, 0])
    np.testing.assert_allclose(rates_from_arrivals(np.array([2.0, 2.5]), 1.0, duration_s=2.5), [0, 0, 2.0])
    assert rates_from_arrivals(np.array([]), 1.0).shape == (0,)
    with pytest.raises(ValueError, match="interval_s"):
        rates_from_arrivals(arrivals, 0.0)
    with pytest.raises(ValueError, match="arrival_s"):
        rates_from_arrivals(np.array([-1.0]), 1.0)


@pytest.mark.parametrize("name", NAMES)
def test_evaluate_coverage_on_stationary_poisson(name: str) -> None:
    series = np.random.default_rng(11).poisson(40, 200 if name == "arima" else 400).astype(float)
    result = evaluate(name, series, interval_s=60.0, horizon_steps=1, warmup=30)
    assert set(result) == {"mae", "mape", "coverage_of_upper", "bias", "n"}
    assert 0.75 <= result["coverage_of_upper"] <= 1.0
    assert abs(result["bias"]) < 2.0
    assert result["mae"] < 10.0 and 0 < result["mape"] < 0.3


def test_evaluate_skips_missing_targets() -> None:
    series = [10.0, 12.0, None, 11.0, math.nan, 9.0] * 10
    result = evaluate("kalman", series, interval_s=60.0, warmup=6)
    assert result["n"] == 54 - 18
