"""Realistic synthetic arrivals: the default client-superposition model matches the burstiness of
the real Azure trace, and ServeGen gap windows with blank cells load as missing data."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from fleet_planner.errors import InputError
from fleet_planner.traces import read_rate_series, read_trace
from fleet_planner.traces.dispersion import index_of_dispersion, series_like, write_rate_series
from fleet_planner.traces.synth import client_rates, synthesize_from_rates

ROOT = Path(__file__).resolve().parents[1]
TRACES = ROOT / "examples" / "traces"
sys.path.insert(0, str(ROOT / "benchmarks"))

GAP_FILE = (
    "window_start_s,day,hour_of_day,total_rate_rps,requests_in_window_est,n_active_clients,"
    "top_client_share,rate_weighted_client_cv,zero_rate_window\n"
    "0,0,0.0,4.0,2400,40,0.4,2.0,0\n"
    "600,0,0.167,0.0,0,0,,,1\n"
    "1200,0,0.333,,,,,,1\n"
    "1800,0,0.5,6.0,3600,45,0.3,1.8,0\n"
)


def test_default_arrivals_match_real_dispersion_within_25_percent() -> None:
    from bench_dispersion import TOLERANCE, measure

    rows = measure(spans=12)
    azure = {row["model"]: row for row in rows if row["trace"] == "azure2023_conv.csv"}
    real = azure["real"]["idc"]
    for got, want in zip(azure["clients"]["idc"], real):
        assert abs(got / want - 1) <= TOLERANCE, (azure["clients"]["idc"], real)
    # The models it replaces miss: the aggregate Gamma stream at 1 s, Poisson at 60 s.
    assert azure["gamma"]["idc"][0] > 2 * real[0]
    assert azure["poisson"]["idc"][2] < 0.75 * real[2]


def test_auto_picks_clients_and_keeps_the_mean_rate() -> None:
    azure = read_trace(TRACES / "azure2023_conv.csv", "azure")
    trace = synthesize_from_rates(
        TRACES / "servegen_m-large_rate_10min.csv", lengths=azure, peak_rps=20.0, duration_s=6 * 3600.0, seed=3
    )
    assert "clients" in trace.source
    series = read_rate_series(TRACES / "servegen_m-large_rate_10min.csv")
    rates = series.rate_rps[:36] / series.rate_rps[:36].max() * 20.0
    assert len(trace) == pytest.approx(rates.sum() * 600.0, rel=0.05)
    hourly = np.bincount((trace.arrival_s // 3600).astype(int), minlength=6) / 3600.0
    np.testing.assert_allclose(hourly, rates.reshape(6, 6).mean(axis=1), rtol=0.15)


def test_client_rates_split_by_top_share() -> None:
    rates = client_rates(10.0, 40, 0.4)
    assert rates.size == 40 and rates.sum() == pytest.approx(10.0)
    assert rates[0] == pytest.approx(4.0) and rates[1:].max() <= 4.0 + 1e-12
    assert np.all(np.diff(rates[1:]) <= 0)
    assert client_rates(3.0, 1, 0.2).tolist() == [3.0]


@pytest.mark.parametrize("top_share", [1.0, 0.0])
def test_a_top_client_share_at_either_end_of_its_range_keeps_the_window_rate(tmp_path: Path, top_share: float) -> None:
    """A top share of 1 leaves the other active clients nothing; one of 0 cannot be the largest
    client's, which sends at least an equal share. Both are within the file's valid range, and
    a top share of 1 made the synthesiser divide by zero and fail (``benchmarks/fuzz_inputs.py
    --seed 31``)."""
    rates = client_rates(10.0, 5, top_share)
    assert rates.sum() == pytest.approx(10.0) and rates[0] == pytest.approx(max(top_share, 0.2) * 10.0)
    assert np.isfinite(rates).all() and (rates >= 0).all()
    path = tmp_path / "rates.csv"
    path.write_text(GAP_FILE.replace("0,0,0.0,4.0,2400,40,0.4,2.0,0", f"0,0,0.0,4.0,2400,5,{top_share},2.0,0"))
    azure = read_trace(TRACES / "azure2023_conv.csv", "azure")
    trace = synthesize_from_rates(path, lengths=azure, seed=1, duration_s=600.0)
    assert len(trace) == pytest.approx(600 * 4, rel=0.2)


def test_blank_gap_cells_load_as_missing_data(tmp_path: Path) -> None:
    path = tmp_path / "rates.csv"
    path.write_text(GAP_FILE)
    series = read_rate_series(path)
    assert series.gap.tolist() == [False, True, True, False]
    assert series.rate_rps.tolist() == [4.0, 0.0, 0.0, 6.0]
    assert series.cv is not None and np.isnan(series.cv[1:3]).all() and series.cv[3] == 1.8
    azure = read_trace(TRACES / "azure2023_conv.csv", "azure")
    trace = synthesize_from_rates(path, lengths=azure, seed=1)
    assert not ((trace.arrival_s >= 600) & (trace.arrival_s < 1800)).any()  # the gap has no traffic
    assert len(trace) == pytest.approx(600 * 4 + 600 * 6, rel=0.15)


def test_blank_cell_outside_a_gap_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "rates.csv"
    path.write_text(GAP_FILE.replace("0,0,0.0,4.0,2400,40,0.4,2.0,0", "0,0,0.0,4.0,2400,40,0.4,,0"))
    with pytest.raises(InputError) as info:
        read_rate_series(path)
    assert info.value.field == "line 2: rate_weighted_client_cv" and "outside a zero_rate_window gap" in str(info.value)


def test_series_like_round_trips_through_csv(tmp_path: Path) -> None:
    azure = read_trace(TRACES / "azure2023_conv.csv", "azure")
    clients = read_rate_series(TRACES / "servegen_m-large_rate_10min.csv")
    series = series_like(azure, 600.0, clients, first_window=10)
    path = tmp_path / "like.csv"
    write_rate_series(series, path)
    again = read_rate_series(path)
    np.testing.assert_allclose(again.rate_rps, series.rate_rps, rtol=1e-5)
    assert again.top_share is not None and again.top_share[0] == pytest.approx(clients.top_share[10], rel=1e-5)
    assert series.rate_rps.size == 6  # five whole windows and the partial last one
    assert series.rate_rps[:5].mean() == pytest.approx(np.count_nonzero(azure.arrival_s < 3000) / 3000.0)
    assert series.rate_rps[5] == pytest.approx(np.count_nonzero(azure.arrival_s >= 3000) / (azure.duration_s - 3000))
    with pytest.raises(ValueError, match="two"):
        index_of_dispersion(azure.arrival_s, 60.0, 100.0)
