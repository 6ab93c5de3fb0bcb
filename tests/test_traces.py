"""Trace readers, transforms, rate-series synthesis and the ``trace`` CLI, on the vendored data."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import get_args

import numpy as np
import pytest

from fleet_planner.errors import InputError
from fleet_planner.traces import (
    TRACE_FORMATS,
    Trace,
    read_rate_series,
    read_trace,
    scale_trace,
    synthesize_from_rates,
    write_mooncake_jsonl,
)
from fleet_planner.traces import cli as trace_cli
from fleet_sim.scenario import TraceFormat, TraceSource
from fleet_sim.workload import load_endpoint_trace

DATA = Path(__file__).resolve().parents[1] / "examples" / "traces"
AZURE = DATA / "azure2023_conv.csv"
MOONCAKE = DATA / "mooncake_fast25_synthetic.jsonl"
RATES = DATA / "servegen_m-large_rate_10min.csv"


@pytest.fixture(scope="module")
def azure() -> Trace:
    return read_trace(AZURE, "azure")


def _trace(arrivals: list[float], isl: int = 100, osl: int = 10) -> Trace:
    n = len(arrivals)
    return Trace(np.asarray(arrivals, float), np.full(n, isl, np.int64), np.full(n, osl, np.int64), source="test")


# --- readers ----------------------------------------------------------------------------------


def test_azure_normalised_real_file(azure: Trace) -> None:
    assert len(azure) == 19_366
    assert azure.arrival_s[0] == 0.0
    assert np.all(np.diff(azure.arrival_s) >= 0)
    assert azure.duration_s == pytest.approx(3501.7, abs=0.1)
    assert azure.input_tokens.dtype == np.int64 and azure.input_tokens.min() >= 1
    assert round(float(azure.input_tokens.mean())) == 1155
    assert round(float(azure.output_tokens.mean())) == 211


def test_azure_loads_fast() -> None:
    began = time.perf_counter()
    read_trace(AZURE, "azure")
    assert time.perf_counter() - began < 0.5


def test_generic_csv_reads_azure_normalised_file(azure: Trace) -> None:
    generic = read_trace(AZURE, "csv")
    np.testing.assert_array_equal(generic.arrival_s, azure.arrival_s)
    np.testing.assert_array_equal(generic.output_tokens, azure.output_tokens)


def test_mooncake_real_file() -> None:
    trace = read_trace(MOONCAKE, "mooncake")
    assert len(trace) == 3_993
    assert trace.arrival_s[0] == 0.0
    assert trace.duration_s == pytest.approx(1022.025)
    assert trace.hash_ids is not None and trace.hash_ids[0][:3] == [0, 1, 2]


def test_azure_original_header(tmp_path: Path) -> None:
    path = tmp_path / "AzureLLMInferenceTrace_conv.csv"
    path.write_text(
        "TIMESTAMP,ContextTokens,GeneratedTokens\n"
        "2023-11-16 18:15:50.9951690,396,109\n"
        "2023-11-16 18:15:46.6805900,374,44\n"
        "2023-11-16 18:15:51.2224670,879,0\n"
    )
    trace = read_trace(path, "azure")
    np.testing.assert_allclose(trace.arrival_s, [0.0, 4.314579, 4.541877], atol=1e-7)
    assert trace.input_tokens.tolist() == [374, 396, 879]
    assert trace.output_tokens.tolist() == [44, 109, 1]  # zero generated tokens counted as one


def test_azure_timestamps_with_utc_offset(tmp_path: Path) -> None:
    path = tmp_path / "tz.csv"
    path.write_text(
        "TIMESTAMP,ContextTokens,GeneratedTokens\n"
        "2024-05-10 00:00:00.5000000+00:00,10,5\n"
        "2024-05-10 01:00:01.5+01:00,10,5\n"
    )
    np.testing.assert_allclose(read_trace(path, "azure").arrival_s, [0.0, 1.0])


def test_unsorted_arrivals_are_sorted_stably(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("arrival_s,input_tokens,output_tokens,extra\n2.0,1,1,x\n1.0,2,2,y\n1.0,3,3,z\n")
    trace = read_trace(path, "csv")
    assert trace.arrival_s.tolist() == [1.0, 1.0, 2.0]
    assert trace.input_tokens.tolist() == [2, 3, 1]


@pytest.mark.parametrize(
    ("fmt", "content", "field"),
    [
        ("csv", "arrival_s,input_tokens\n0,5\n", "header"),
        ("csv", "arrival_s,input_tokens,output_tokens\n0,5,5\n1,nan,5\n", "line 3: input_tokens"),
        ("csv", "arrival_s,input_tokens,output_tokens\n0,5,5\n1,5,abc\n", "line 3: output_tokens"),
        ("csv", "arrival_s,input_tokens,output_tokens\n-1,5,5\n", "line 2: arrival_s"),
        ("csv", "arrival_s,input_tokens,output_tokens\n0,5,0\n", "line 2: output_tokens"),
        ("csv", "arrival_s,input_tokens,output_tokens\n0,5,5\n1,5\n", "line 3: output_tokens"),
        ("csv", "arrival_s,input_tokens,output_tokens\n0,inf,5\n", "line 2: input_tokens"),
        (
            "azure",
            "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46,5,5\nyesterday,5,5\n",
            "line 3: TIMESTAMP",
        ),
        ("azure", "when,ctx,gen\n1,2,3\n", "header"),
        ("azure", "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46,5,-1\n", "line 2: GeneratedTokens"),
        ("burstgpt", "Timestamp,Model,Request tokens\n5,ChatGPT,472\n", "header"),
        ("burstgpt", "Timestamp,Request tokens,Response tokens\n5,472,18\n-3,10,10\n", "line 3: Timestamp"),
        ("burstgpt", "Timestamp,Request tokens,Response tokens\n5,472.5,18\n", "line 2: Request tokens"),
        ("burstgpt", "Timestamp,Request tokens,Response tokens\n5,472,-1\n", "line 2: Response tokens"),
        ("burstgpt", "Timestamp,Request tokens,Response tokens\n5,472,nan\n", "line 2: Response tokens"),
        (
            "mooncake",
            '{"timestamp": 0, "input_length": 5, "output_length": 5}\n{"timestamp": 1, "output_length": 5}\n',
            "line 2: input_length",
        ),
        ("mooncake", '{"timestamp": 0, "input_length": NaN, "output_length": 5}\n', "line 1: input_length"),
        ("mooncake", '{"timestamp": -5, "input_length": 5, "output_length": 5}\n', "line 1: timestamp"),
        ("mooncake", '{"timestamp": 0, "input_length": 5, "output_length": 5}\n{"timestamp": \n', "line 2"),
        (
            "mooncake",
            '{"timestamp": 0, "input_length": 5, "output_length": 5, "hash_ids": [1, "a"]}\n',
            "line 1: hash_ids",
        ),
    ],
)
def test_malformed_inputs_name_file_and_field(tmp_path: Path, fmt: str, content: str, field: str) -> None:
    path = tmp_path / "bad.txt"
    path.write_text(content)
    with pytest.raises(InputError) as info:
        read_trace(path, fmt)
    assert info.value.file == str(path)
    assert info.value.field == field
    assert str(path) in str(info.value) and field in str(info.value)


@pytest.mark.parametrize(
    ("fmt", "content", "field", "words"),
    [
        ("csv", "arrival_s,input_tokens,output_tokens\n0,99999999999999999999,5\n", "line 2: input_tokens", "[1, "),
        ("burstgpt", "Timestamp,Request tokens,Response tokens\n5,472,1e12\n", "line 2: Response tokens", "[0, "),
        ("csv", "arrival_s,input_tokens,output_tokens\n0,5,5\n1e300,5,5\n", "line 3: arrival_s", "within [0, "),
        ("mooncake", '{"timestamp": 0, "input_length": 1e300, "output_length": 5}\n', "line 1: input_length", "<="),
        (
            "mooncake",
            '{"timestamp": 0, "input_length": 5, "output_length": 5}\n'
            '{"timestamp": 1e300, "input_length": 5, "output_length": 5}\n',
            "line 2: timestamp",
            "after the first request",
        ),
    ],
)
def test_absurdly_large_tokens_or_arrivals_name_their_line(
    tmp_path: Path, fmt: str, content: str, field: str, words: str
) -> None:
    """Were an int64 overflow (negative token counts, read without a word), an OverflowError or,
    in ``trace info``, a numpy traceback."""
    path = tmp_path / "big.txt"
    path.write_text(content)
    with pytest.raises(InputError) as info:
        read_trace(path, fmt)
    assert info.value.file == str(path) and info.value.field == field and words in info.value.problem


def test_burstgpt_header_reads_seconds_and_counts_failed_requests(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "BurstGPT_1.csv"
    path.write_text(
        "Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n"
        "45,ChatGPT,1087,230,1317,Conversation log\n"
        "5,ChatGPT,472,18,490,Conversation log\n"
        "118.5,GPT-4,417,0,417,API log\n"
    )
    with caplog.at_level("WARNING"):
        trace = read_trace(path, "burstgpt")
    assert trace.arrival_s.tolist() == [0.0, 40.0, 113.5]  # seconds from the first request, sorted
    assert trace.input_tokens.tolist() == [472, 1087, 417]
    assert trace.output_tokens.tolist() == [18, 230, 1]  # the failed request arrived: one token
    assert "1 requests with 0 Response tokens counted as 1" in caplog.text


BURSTGPT_ROWS = (
    "Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n"
    "5,ChatGPT,472,18,490,Conversation log\n"
    "45,GPT-4,1087,230,1317,Conversation log\n"
    "118,GPT-4,417,276,693,API log\n"
    "130,ChatGPT,80,20,100,API log\n"
)


def test_select_keeps_one_model_of_a_trace_that_logs_several(tmp_path: Path) -> None:
    path = tmp_path / "burst.csv"
    path.write_text(BURSTGPT_ROWS)
    gpt4 = read_trace(path, "burstgpt", {"Model": ["GPT-4"]})
    assert gpt4.input_tokens.tolist() == [1087, 417] and gpt4.arrival_s.tolist() == [0.0, 73.0]
    both = read_trace(path, "burstgpt", {"Model": ["GPT-4", "ChatGPT"], "Log Type": ["API log"]})
    assert both.input_tokens.tolist() == [417, 80]


@pytest.mark.parametrize(
    ("fmt", "select", "words"),
    [
        ("burstgpt", {"model": ["GPT-4"]}, "no column 'model'"),
        ("burstgpt", {"Model": ["GPT-5"]}, "no row matches select (Model in ['GPT-5'])"),
        ("mooncake", {"Model": ["GPT-4"]}, "CSV traces only"),
    ],
)
def test_a_bad_select_names_the_file_and_changes_nothing(
    tmp_path: Path, fmt: str, select: dict[str, list[str]], words: str
) -> None:
    path = tmp_path / "burst.csv"
    path.write_text(BURSTGPT_ROWS)
    with pytest.raises(InputError) as info:
        read_trace(path, fmt, select)
    assert info.value.field == "select" and words in str(info.value) and str(path) in str(info.value)


def test_cli_info_selects_rows(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "burst.csv"
    path.write_text(BURSTGPT_ROWS)
    args = _parser().parse_args(["trace", "info", str(path), "--select", "Model=GPT-4", "--select", "Model=ChatGPT"])
    assert args.run(args) == 0
    assert "requests        4" in capsys.readouterr().out
    args = _parser().parse_args(["trace", "info", str(path), "--select", "Log Type=API log"])
    assert args.run(args) == 0
    assert "requests        2" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        _parser().parse_args(["trace", "info", str(path), "--select", "Model"])


def test_a_burstgpt_file_read_as_azure_names_the_format(tmp_path: Path) -> None:
    path = tmp_path / "b.csv"
    path.write_text("Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n5,ChatGPT,472,18,490,x\n")
    with pytest.raises(InputError, match="use format burstgpt"):
        read_trace(path, "azure")
    assert trace_cli.default_format(path) == "burstgpt"  # what `trace info` reads it as
    assert trace_cli.default_format(AZURE) == "azure"
    assert trace_cli.default_format(tmp_path / "absent.csv") == "azure"  # the reader says why it fails


def test_scenario_trace_formats_are_the_readers_formats() -> None:
    assert set(get_args(TraceFormat)) == set(TRACE_FORMATS)


@pytest.mark.parametrize("fmt", ["csv", "azure", "mooncake", "burstgpt"])
def test_missing_and_empty_files(tmp_path: Path, fmt: str) -> None:
    with pytest.raises(InputError, match="cannot read trace"):
        read_trace(tmp_path / "absent.csv", fmt)
    with pytest.raises(InputError, match="cannot read trace"):
        read_trace(tmp_path, fmt)  # a directory is unreadable as a trace
    empty = tmp_path / "empty"
    empty.write_text("arrival_s,input_tokens,output_tokens\n" if fmt == "csv" else "")
    with pytest.raises(InputError) as info:
        read_trace(empty, fmt)
    assert info.value.file == str(empty)


def test_unknown_format() -> None:
    with pytest.raises(InputError) as info:
        read_trace(AZURE, "parquet")
    assert info.value.field == "format" and str(AZURE) in str(info.value)


def test_mooncake_round_trip(tmp_path: Path) -> None:
    original = read_trace(MOONCAKE, "mooncake")
    path = tmp_path / "copy.jsonl"
    write_mooncake_jsonl(original, path)
    first = json.loads(path.read_text().splitlines()[0])
    assert isinstance(first["timestamp"], int) and "hash_ids" in first
    again = read_trace(path, "mooncake")
    np.testing.assert_allclose(again.arrival_s, original.arrival_s, atol=1e-9)
    np.testing.assert_array_equal(again.input_tokens, original.input_tokens)
    np.testing.assert_array_equal(again.output_tokens, original.output_tokens)
    assert again.hash_ids == original.hash_ids


def test_round_trip_without_hash_ids_keeps_millisecond_arrivals(tmp_path: Path, azure: Trace) -> None:
    path = tmp_path / "azure.jsonl"
    write_mooncake_jsonl(azure, path)
    again = read_trace(path, "mooncake")
    assert again.hash_ids is None
    np.testing.assert_allclose(again.arrival_s, azure.arrival_s, atol=5e-4)
    np.testing.assert_array_equal(again.input_tokens, azure.input_tokens)


# --- transform --------------------------------------------------------------------------------


@pytest.mark.parametrize("scale", [0.5, 2.0, 2.5])
def test_rate_scale_scales_count(azure: Trace, scale: float) -> None:
    scaled = scale_trace(azure, rate_scale=scale, seed=1)
    assert len(scaled) == pytest.approx(scale * len(azure), rel=0.03)
    assert np.all(np.diff(scaled.arrival_s) >= 0) and scaled.arrival_s.min() >= 0
    # Only original requests' lengths appear, and copies do not all land on the original instant.
    assert set(scaled.input_tokens.tolist()) <= set(azure.input_tokens.tolist())
    if scale > 1:
        assert np.unique(scaled.arrival_s).size > 0.9 * len(scaled)


def test_scale_is_deterministic_per_seed(azure: Trace) -> None:
    a = scale_trace(azure, rate_scale=1.7, seed=3)
    b = scale_trace(azure, rate_scale=1.7, seed=3)
    c = scale_trace(azure, rate_scale=1.7, seed=4)
    np.testing.assert_array_equal(a.arrival_s, b.arrival_s)
    np.testing.assert_array_equal(a.input_tokens, b.input_tokens)
    assert len(a) != len(c) or not np.array_equal(a.arrival_s, c.arrival_s)


def test_time_scale_offset_and_duration(azure: Trace) -> None:
    stretched = scale_trace(azure, time_scale=2.0)
    np.testing.assert_allclose(stretched.arrival_s, azure.arrival_s * 2.0)
    shifted = scale_trace(azure, time_scale=0.5, offset_s=10.0, duration_s=1000.0)
    assert shifted.arrival_s[0] == pytest.approx(10.0)
    assert shifted.arrival_s.max() < 1000.0
    assert len(shifted) == int(np.count_nonzero(azure.arrival_s * 0.5 + 10.0 < 1000.0))


def test_start_replays_a_slice_from_its_own_zero(azure: Trace) -> None:
    sliced = scale_trace(azure, start_s=1800.0, time_scale=0.5, duration_s=600.0)
    later = azure.arrival_s[azure.arrival_s >= 1800.0]
    np.testing.assert_allclose(sliced.arrival_s, ((later - 1800.0) * 0.5)[(later - 1800.0) * 0.5 < 600.0])
    np.testing.assert_array_equal(sliced.input_tokens, azure.input_tokens[azure.arrival_s >= 1800.0][: len(sliced)])
    with pytest.raises(ValueError, match="after the trace's last request"):
        scale_trace(azure, start_s=azure.duration_s + 1.0)


def test_a_scenario_trace_starts_where_it_says() -> None:
    source = TraceSource(path=AZURE, format="azure", start_s="30m", rate_scale=1.0)
    replayed = load_endpoint_trace(source, duration_s=600.0, seed=0, where="endpoint e: trace")
    whole = read_trace(AZURE, "azure")
    expected = whole.arrival_s[(whole.arrival_s >= 1800.0) & (whole.arrival_s < 2400.0)] - 1800.0
    np.testing.assert_allclose(replayed.arrival_s, expected)


def test_start_keeps_hash_ids_aligned() -> None:
    trace = read_trace(MOONCAKE, "mooncake")
    start = float(trace.arrival_s[len(trace) // 2])
    sliced = scale_trace(trace, start_s=start)
    first = len(trace) - len(sliced)
    assert sliced.arrival_s[0] == 0.0 and trace.arrival_s[first - 1] < start
    assert sliced.hash_ids == (trace.hash_ids or [])[first:]


def test_scale_keeps_hash_ids_aligned() -> None:
    trace = read_trace(MOONCAKE, "mooncake")
    scaled = scale_trace(trace, rate_scale=0.5, seed=2)
    assert scaled.hash_ids is not None and len(scaled.hash_ids) == len(scaled)
    by_blocks = {tuple(h): i for h, i in zip(trace.hash_ids or [], trace.input_tokens.tolist())}
    assert all(by_blocks[tuple(h)] == i for h, i in zip(scaled.hash_ids, scaled.input_tokens.tolist()))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"rate_scale": 0.0},
        {"rate_scale": float("nan")},
        {"time_scale": -1.0},
        {"offset_s": -1.0},
        {"duration_s": float("inf")},
        {"start_s": float("nan")},
        {"start_s": -5.0},
    ],
)
def test_scale_rejects_bad_arguments(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        scale_trace(_trace([0.0, 1.0]), **kwargs)


# --- synthesis --------------------------------------------------------------------------------


def test_rate_series_window_lengths() -> None:
    series = read_rate_series(RATES)
    assert series.window_start_s.size == 2016
    assert np.all(series.window_s == 600.0)
    assert series.end_s == 14 * 86400
    assert series.cv is not None


def test_synthesis_reproducible_per_seed(azure: Trace) -> None:
    kwargs = {"lengths": azure, "peak_rps": 5.0, "duration_s": 6 * 3600.0}
    a = synthesize_from_rates(RATES, seed=7, **kwargs)
    b = synthesize_from_rates(RATES, seed=7, **kwargs)
    c = synthesize_from_rates(RATES, seed=8, **kwargs)
    np.testing.assert_array_equal(a.arrival_s, b.arrival_s)
    np.testing.assert_array_equal(a.output_tokens, b.output_tokens)
    assert not np.array_equal(a.arrival_s[:100], c.arrival_s[:100])


@pytest.mark.parametrize("arrival", ["poisson", "gamma"])
def test_synthesis_tracks_rescaled_series(azure: Trace, arrival: str) -> None:
    start, duration, peak = 86400.0, 86400.0, 20.0
    trace = synthesize_from_rates(
        RATES, lengths=azure, peak_rps=peak, start_s=start, duration_s=duration, arrival=arrival
    )
    series = read_rate_series(RATES)
    inside = (series.window_start_s >= start) & (series.window_start_s < start + duration)
    expected = series.rate_rps[inside] / series.rate_rps[inside].max() * peak
    assert trace.arrival_s.min() >= 0 and trace.arrival_s.max() < duration
    assert np.all(np.diff(trace.arrival_s) >= 0)
    assert len(trace) == pytest.approx(expected.sum() * 600.0, rel=0.02)
    # Hourly means follow the shape (six 10-minute windows an hour).
    observed = np.bincount((trace.arrival_s // 3600).astype(int), minlength=24) / 3600.0
    np.testing.assert_allclose(observed, expected.reshape(24, 6).mean(axis=1), rtol=0.1)


def test_gamma_is_burstier_than_poisson(azure: Trace) -> None:
    def gap_cv(arrival: str) -> float:
        trace = synthesize_from_rates(RATES, lengths=azure, peak_rps=10.0, duration_s=3 * 3600.0, arrival=arrival)
        gaps = np.diff(trace.arrival_s)
        return float(gaps.std() / gaps.mean())

    assert gap_cv("poisson") == pytest.approx(1.0, abs=0.1)
    assert gap_cv("gamma") > 1.5


def test_synthesis_draws_length_pairs_from_source(azure: Trace) -> None:
    trace = synthesize_from_rates(RATES, lengths=azure, peak_rps=5.0, duration_s=3600.0)
    pairs = set(zip(azure.input_tokens.tolist(), azure.output_tokens.tolist()))
    assert all(pair in pairs for pair in zip(trace.input_tokens.tolist(), trace.output_tokens.tolist()))
    assert trace.hash_ids is None
    assert trace.input_tokens.mean() == pytest.approx(azure.input_tokens.mean(), rel=0.05)


def test_synthesis_without_cv_column_is_poisson(tmp_path: Path, azure: Trace) -> None:
    path = tmp_path / "rates.csv"
    path.write_text("window_start_s,total_rate_rps\n0,2\n600,4\n")
    trace = synthesize_from_rates(path, lengths=azure, seed=1)
    assert len(trace) == pytest.approx(600 * 2 + 600 * 4, rel=0.1)
    assert trace.arrival_s.max() < 1200.0
    with pytest.raises(InputError, match="rate_weighted_client_cv"):
        synthesize_from_rates(path, lengths=azure, arrival="gamma")


@pytest.mark.parametrize(
    ("content", "field"),
    [
        ("window_start_s,rate\n0,1\n600,1\n", "header"),
        ("window_start_s,total_rate_rps\n0,1\n600,-2\n", "line 3: total_rate_rps"),
        ("window_start_s,total_rate_rps\n0,1\n600,nan\n", "line 3: total_rate_rps"),
        ("window_start_s,total_rate_rps\n0,1\n0,1\n", "line 3: window_start_s"),
        ("window_start_s,total_rate_rps,rate_weighted_client_cv\n0,1,1\n600,1,-1\n", "line 3: rate_weighted_client_cv"),
    ],
)
def test_bad_rate_files(tmp_path: Path, azure: Trace, content: str, field: str) -> None:
    path = tmp_path / "rates.csv"
    path.write_text(content)
    with pytest.raises(InputError) as info:
        synthesize_from_rates(path, lengths=azure)
    assert info.value.file == str(path) and info.value.field == field


def test_span_outside_series(azure: Trace) -> None:
    with pytest.raises(InputError, match="start"):
        synthesize_from_rates(RATES, lengths=azure, start_s=15 * 86400.0)
    with pytest.raises(InputError, match="series end"):
        synthesize_from_rates(RATES, lengths=azure, start_s=13 * 86400.0, duration_s=2 * 86400.0)


def test_synthesis_speed_for_a_million_requests(azure: Trace) -> None:
    began = time.perf_counter()
    trace = synthesize_from_rates(RATES, lengths=azure, peak_rps=25.0, duration_s=86400.0)
    assert len(trace) > 900_000
    assert time.perf_counter() - began < 3.0


# --- CLI --------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fleet-planner")
    trace_cli.register(parser.add_subparsers(dest="command", required=True))
    return parser


def test_cli_synth_and_info(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "day.jsonl"
    argv = [
        "trace",
        "synth",
        "--rate",
        str(RATES),
        "--lengths",
        str(AZURE),
        "--peak-rps",
        "2",
        "--duration",
        "2h",
        "--seed",
        "3",
        "--out",
        str(out),
    ]
    args = _parser().parse_args(argv)
    assert args.run(args) == 0
    summary = capsys.readouterr().out
    assert "requests" in summary and "req/s" in summary and summary.count("\n") == 1
    written = read_trace(out, "mooncake")
    assert 0 < len(written) < 2 * 2 * 7200

    args = _parser().parse_args(["trace", "info", str(out)])
    assert args.run(args) == 0
    info = capsys.readouterr().out
    assert f"requests        {len(written)}" in info and "p99" in info and "peak 1-min" in info


def test_cli_bad_input_raises_input_error(tmp_path: Path) -> None:
    args = _parser().parse_args(["trace", "info", str(tmp_path / "missing.csv")])
    with pytest.raises(InputError, match="missing.csv"):
        args.run(args)
    with pytest.raises(SystemExit):
        _parser().parse_args(["trace", "synth", "--rate", "r", "--lengths", "l", "--out", "o", "--duration", "soon"])


def test_trace_stats_matches_published_azure_figures(azure: Trace) -> None:
    stats = trace_cli.trace_stats(azure)
    assert stats["requests"] == 19_366
    assert stats["mean_rps"] == pytest.approx(5.5, abs=0.05)
    assert stats["peak_1min_rps"] == pytest.approx(8.5, abs=0.1)
    assert (stats["input_p50"], stats["input_p99"]) == (1020.0, 4142.0)
    assert (stats["output_p50"], stats["output_p99"]) == (129.0, 601.0)


def test_synth_refuses_a_negative_seed(capsys: pytest.CaptureFixture[str]) -> None:
    """``--seed -1`` reached numpy and ended in a ValueError traceback."""
    from fleet_planner_cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["trace", "synth", "--rate", "r.csv", "--lengths", "l.csv", "--out", "o.jsonl", "--seed", "-1"])
    assert exit_info.value.code == 2
    assert "argument --seed: must be >= 0, got '-1'" in capsys.readouterr().err


def test_a_trace_too_large_for_one_machine_is_refused_before_it_is_drawn(azure: Trace) -> None:
    """A slipped peak rate or scale factor was a MemoryError (or numpy's 'array is too big')
    after minutes of drawing; the expected request count is checked first."""
    with pytest.raises(InputError, match=r"peak_rps / rate_scale: .*more than 50000000"):
        synthesize_from_rates(RATES, lengths=azure, peak_rps=1e12, duration_s=600.0)
    with pytest.raises(ValueError, match=r"rate_scale 1e\+09 would make about .* requests, more than 50000000"):
        scale_trace(azure, rate_scale=1e9)
    assert len(synthesize_from_rates(RATES, lengths=azure, peak_rps=5.0, duration_s=600.0)) > 0


def test_a_json_lines_file_read_as_csv_gets_a_short_error_and_a_hint(tmp_path: Path) -> None:
    path = tmp_path / "trace.jsonl"
    ids = ", ".join(str(i) for i in range(500))
    path.write_text(f'{{"timestamp": 0, "input_length": 10, "output_length": 5, "hash_ids": [{ids}]}}\n')
    with pytest.raises(InputError, match="use format mooncake") as caught:
        read_trace(path, "azure")
    assert len(str(caught.value)) < 500  # the whole line was echoed as the header
