"""The capacity-model check's length window (``benchmarks/bench_curve_fit.py --lengths-window``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))


def test_a_lengths_window_runs_the_pool_on_that_window_s_prompts(tmp_path: Path) -> None:
    from bench_curve_fit import AZURE, simulate, window_lengths

    from fleet_planner.traces import read_trace

    trace = read_trace(AZURE, "azure")
    inside = (trace.arrival_s >= 1200) & (trace.arrival_s < 2400)
    path = window_lengths((1200.0, 2400.0), tmp_path)
    assert read_trace(path, "azure").input_tokens.size == int(inside.sum())

    def p90_prompt(lengths: Path | None) -> float:
        result = simulate("a1", 2, 6.0, 6.0, 1, tmp_path, lengths)
        return float(np.percentile(result.requests.input_tokens, 90))

    # The trace's long-prompt half hour: its p90 prompt is far above the whole trace's.
    windowed, whole = p90_prompt(path), p90_prompt(None)
    assert windowed > 1.3 * whole
    assert abs(windowed - np.percentile(trace.input_tokens[inside], 90)) < 0.15 * windowed


def test_a_lengths_window_is_refused_for_a_template_without_conversation_lengths() -> None:
    run = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "bench_curve_fit.py"),
            "--template",
            "h1",
            "--lengths-window",
            "0:60",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 2 and "reads the Azure conversation trace" in run.stderr
