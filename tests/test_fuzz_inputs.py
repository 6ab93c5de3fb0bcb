"""Every input boundary, fuzzed briefly (benchmarks/fuzz_inputs.py; longer runs there): malformed
files, absurd observations and random gRPC messages end in a clear error, never anything else."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from fuzz_inputs import TARGETS, fuzz


@pytest.mark.parametrize("target", TARGETS)
def test_fuzzed_inputs_end_in_a_clear_error_or_are_accepted(target: str) -> None:
    findings = fuzz([target], iterations=120, seed=11)
    assert not findings.failures, "\n".join(f"{key}\n{trace}" for key, trace in findings.failures.items())
    tried = sum(findings.outcomes.values())
    assert tried >= {"agent": 12, "runs": 3}.get(target, 100), findings.outcomes  # runs of ticks, whole replays
    assert any(word in outcome for outcome in findings.outcomes for word in ("accepted", "OK", ": 200")), (
        findings.outcomes
    )
    if target in ("files", "profiles", "traces"):  # some of what they read must be refused
        assert any("refused" in outcome for outcome in findings.outcomes), findings.outcomes
