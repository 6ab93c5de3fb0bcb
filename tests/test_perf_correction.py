"""Online performance-model correction: convergence, range coverage, bounds, robustness, drop-in."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from fleet_planner.perf import PerfModel, load_profile
from fleet_planner.planning import SLA
from local_agent.perf_correction import CorrectedPerfModel
from local_agent.sizing import Calibration, LoadEstimate, decode_curve, prefill_curve, replicas_for

PROFILE = Path(__file__).resolve().parent.parent / "examples" / "profiles" / "llama3.1-8b_h100_vllm_tp1"


@pytest.fixture(scope="module")
def base() -> PerfModel:
    return PerfModel(load_profile(PROFILE))


def _points(base: PerfModel) -> tuple[np.ndarray, np.ndarray]:
    """The profiled decode operating points (batch, context)."""
    return np.asarray(base.profile.decode_batch, float), np.asarray(base.profile.decode_context, float)


def _dense_points(base: PerfModel) -> tuple[np.ndarray, np.ndarray]:
    """A log grid between and across profiled points, limited to what fits in KV cache."""
    b, c = np.meshgrid(np.geomspace(1, 256, 15), np.geomspace(600, 30000, 15))
    b, c = b.ravel(), c.ravel()
    fits = b * c <= base.max_kv_tokens
    return b[fits], c[fits]


def _teach(
    model: CorrectedPerfModel, base: PerfModel, factor: float, *, rounds: int = 3, noise: float = 0.02, seed: int = 0
) -> None:
    """Feed decode and prefill samples at every profiled point, measured as ``factor`` x base."""
    rng = np.random.default_rng(seed)
    b, c = _points(base)
    for _ in range(rounds):
        for bi, ci in zip(b, c):
            jitter = 1.0 + noise * rng.standard_normal()
            model.observe_iteration("decode", base.itl_ms(bi, ci) * factor * jitter, bi, ci)
        for x in base.profile.prefill_isl:
            jitter = 1.0 + noise * rng.standard_normal()
            model.observe_iteration("prefill", base.ttft_ms(float(x)) * factor * jitter, 1, 0, float(x))


def _ratio(model: CorrectedPerfModel, base: PerfModel, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    return np.asarray(model.itl_ms(b, c)) / np.asarray(base.itl_ms(b, c))


# ----------------------------------------------------------------------------- convergence


def test_converges_to_a_uniform_slowdown_across_the_range(base) -> None:
    model = CorrectedPerfModel(base)
    _teach(model, base, 1.3)
    b, c = _dense_points(base)
    assert _ratio(model, base, b, c) == pytest.approx(1.3, rel=0.05)
    isl = np.geomspace(64, 24576, 30)
    assert np.asarray(model.ttft_ms(isl)) / base.ttft_ms(isl) == pytest.approx(1.3, rel=0.05)
    assert model.prefill_overhead_ms / base.prefill_overhead_ms == pytest.approx(1.3, rel=0.05)
    chunks = np.asarray(model.prefill_chunk_ms(np.full(8, 2048.0), np.full(8, 512.0)))
    assert chunks / base.prefill_chunk_ms(np.full(8, 2048.0), np.full(8, 512.0)) == pytest.approx(1.3, rel=0.05)
    summary = model.correction_summary()
    assert summary.decode_active and summary.prefill_active
    assert summary.residual_rms is not None and summary.residual_rms < 0.05
    assert all(f == pytest.approx(1.3, rel=0.05) for _, _, f in summary.decode_factors)
    assert all(f == pytest.approx(1.3, rel=0.05) for _, f in summary.prefill_factors)


def test_a_faster_engine_is_learned_too(base) -> None:
    model = CorrectedPerfModel(base)
    _teach(model, base, 0.8)
    b, c = _dense_points(base)
    assert _ratio(model, base, b, c) == pytest.approx(0.8, rel=0.05)


def test_mixed_iterations_correct_both_phases(base) -> None:
    model = CorrectedPerfModel(base)
    rng = np.random.default_rng(1)
    for _ in range(200):
        b, c, t = rng.uniform(4, 64), rng.uniform(600, 6000), rng.uniform(64, 2048)
        truth = (base.itl_ms(b, c) + base.prefill_chunk_ms(0.0, t)) * 1.5
        model.observe_iteration("mixed", truth, b, c, t)
    assert model.itl_ms(16.0, 2000.0) / base.itl_ms(16.0, 2000.0) == pytest.approx(1.5, rel=0.05)
    mixed = model.itl_ms(16.0, 2000.0) + model.prefill_chunk_ms(0.0, 1024.0)
    assert mixed / (base.itl_ms(16.0, 2000.0) + base.prefill_chunk_ms(0.0, 1024.0)) == pytest.approx(1.5, rel=0.05)


# ----------------------------------------------------------------------------- operating range


def test_one_operating_point_does_not_distort_far_away(base) -> None:
    model = CorrectedPerfModel(base)
    for _ in range(500):
        model.observe_iteration("decode", base.itl_ms(8.0, 1000.0) * 2.0, 8.0, 1000.0)
    assert model.itl_ms(8.0, 1000.0) / base.itl_ms(8.0, 1000.0) == pytest.approx(2.0, rel=0.05)
    ratio = _ratio(model, base, *_dense_points(base))
    # Never beyond the clamp, and not extrapolated past what was observed.
    lo, hi = model.factor_range
    assert ratio.min() >= lo and ratio.max() <= hi
    assert ratio.min() >= 1.0 and ratio.max() <= 2.0 + 1e-9
    assert model.correction_summary().samples_retained == model.max_samples


def test_bins_keep_what_was_learned_elsewhere(base) -> None:
    """A long stretch at one point refreshes its bin; a single window would forget the rest."""
    ratios = {}
    for bins in (8, 1):
        model = CorrectedPerfModel(base, bins=bins)
        _teach(model, base, 1.3, noise=0.0)
        for _ in range(2000):
            model.observe_iteration("decode", base.itl_ms(8.0, 1000.0) * 1.8, 8.0, 1000.0)
        ratios[bins] = _ratio(model, base, *_points(base))
        summary = model.correction_summary()
        assert summary.samples_retained <= summary.bins_occupied * model.max_samples
    assert ratios[8] == pytest.approx(1.3, rel=0.1)
    assert np.abs(ratios[1] - 1.3).max() > 0.2


def test_recent_samples_weigh_more_within_a_bin(base) -> None:
    model = CorrectedPerfModel(base, max_samples=64, half_life=4.0)
    for factor in (1.0, 1.6):
        for _ in range(30):
            model.observe_iteration("decode", base.itl_ms(8.0, 1000.0) * factor, 8.0, 1000.0)
    assert model.itl_ms(8.0, 1000.0) / base.itl_ms(8.0, 1000.0) > 1.55


# ----------------------------------------------------------------------------- bounds


def test_coefficients_stay_non_negative_and_latency_monotone(base) -> None:
    """Data where the profile overestimates at high load would want negative slopes."""
    model = CorrectedPerfModel(base)
    b, c = _points(base)
    share = np.log1p(b * c) / np.log1p((b * c).max())
    for bi, ci, si in zip(b, c, share):
        model.observe_iteration("decode", base.itl_ms(bi, ci) * (2.5 - 1.9 * si), bi, ci)
    for x in base.profile.prefill_isl:
        model.observe_iteration("prefill", base.ttft_ms(float(x)) * (2.0 - x / 24576), 1, 0, float(x))
    summary = model.correction_summary()
    coefficients = [*summary.decode_coefficients.values(), *summary.prefill_coefficients.values()]
    assert min(coefficients) >= 0.0
    grid_b, grid_c = np.meshgrid(np.geomspace(1, 512, 40), np.geomspace(500, 30000, 40))
    itl = np.asarray(model.itl_ms(grid_b, grid_c))
    assert (np.diff(itl, axis=0) >= -1e-9).all() and (np.diff(itl, axis=1) >= -1e-9).all()
    assert (np.asarray(model.prefill_chunk_ms(np.linspace(0, 30000, 50), 256.0)) > 0).all()


def test_a_stalled_iteration_cannot_drag_the_fit_beyond_the_clamp(base) -> None:
    model = CorrectedPerfModel(base, min_samples=1)
    model.observe_iteration("decode", 1e6, 8.0, 1000.0)
    assert model.itl_ms(8.0, 1000.0) <= 3.0 * base.itl_ms(8.0, 1000.0) + 1e-9


# ----------------------------------------------------------------------------- robustness


@pytest.mark.parametrize(
    "args",
    [
        ("decode", math.nan, 8.0, 1000.0),
        ("decode", math.inf, 8.0, 1000.0),
        ("decode", -5.0, 8.0, 1000.0),
        ("decode", 0.0, 8.0, 1000.0),
        ("decode", 10.0, -1.0, 1000.0),
        ("decode", 10.0, 0.0, 1000.0),
        ("decode", 10.0, 8.0, -1.0),
        ("decode", 10.0, 8.0, math.nan),
        ("decode", 10.0, 8.0, 1000.0, 512.0),
        ("prefill", 10.0, 1.0, 0.0, 0.0),
        ("prefill", 10.0, 0.0, 0.0, 512.0),
        ("prefill", 10.0, 1.0, 0.0, -512.0),
        ("mixed", 10.0, 8.0, 1000.0, 0.0),
        ("mixed", 10.0, 8.0, 1000.0, math.inf),
        ("speculative", 10.0, 8.0, 1000.0),
        ("decode", "10", 8.0, 1000.0),
        ("decode", None, 8.0, 1000.0),
    ],
)
def test_bad_samples_are_rejected_without_state_change(base, args) -> None:
    model = CorrectedPerfModel(base)
    _teach(model, base, 1.3, rounds=1)
    before = model.correction_summary()
    itl_before = model.itl_ms(16.0, 2000.0)
    with pytest.raises(ValueError):
        model.observe_iteration(*args)
    assert model.correction_summary() == before
    assert model.itl_ms(16.0, 2000.0) == itl_before


def test_constructor_checks_its_options(base) -> None:
    for bad in (
        {"min_samples": 0},
        {"max_samples": 0},
        {"bins": 0},
        {"half_life": 0.0},
        {"prior_weight": 0.0},
        {"factor_range": (1.2, 3.0)},
        {"factor_range": (0.5, 0.9)},
    ):
        with pytest.raises(ValueError):
            CorrectedPerfModel(base, **bad)


def test_below_min_samples_the_profile_is_returned_exactly(base) -> None:
    model = CorrectedPerfModel(base, min_samples=10)
    b, c = _dense_points(base)
    isl = np.geomspace(64, 24576, 20)
    for _ in range(9):
        model.observe_iteration("decode", base.itl_ms(8.0, 1000.0) * 2.0, 8.0, 1000.0)
        model.observe_iteration("prefill", base.ttft_ms(1024.0) * 2.0, 1, 0, 1024.0)
    assert np.array_equal(model.itl_ms(b, c), base.itl_ms(b, c))
    assert model.itl_ms(8.0, 1000.0) == base.itl_ms(8.0, 1000.0)
    assert np.array_equal(model.ttft_ms(isl), base.ttft_ms(isl))
    assert model.ttft_ms(1024.0) == base.ttft_ms(1024.0)
    assert model.prefill_overhead_ms == base.prefill_overhead_ms
    assert model.prefill_chunk_ms(1024.0, 512.0) == base.prefill_chunk_ms(1024.0, 512.0)
    assert np.array_equal(model.decode_tokens_per_s(b, c), base.decode_tokens_per_s(b, c))
    summary = model.correction_summary()
    assert not summary.decode_active and not summary.prefill_active
    assert summary.residual_rms is None
    # Decode reaches the threshold alone: prefill still follows the profile exactly.
    model.observe_iteration("decode", base.itl_ms(8.0, 1000.0) * 2.0, 8.0, 1000.0)
    assert model.itl_ms(8.0, 1000.0) > 1.5 * base.itl_ms(8.0, 1000.0)
    assert np.array_equal(model.ttft_ms(isl), base.ttft_ms(isl))
    assert model.prefill_overhead_ms == base.prefill_overhead_ms


def test_array_and_scalar_paths_agree(base) -> None:
    model = CorrectedPerfModel(base)
    _teach(model, base, 1.4)
    b, c = _dense_points(base)
    itl = model.itl_ms(b, c)
    assert isinstance(itl, np.ndarray) and itl.shape == b.shape
    assert itl == pytest.approx([model.itl_ms(float(x), float(y)) for x, y in zip(b, c)], rel=1e-12)
    assert np.asarray(model.itl_ms(list(b[:5]), 2000.0)) == pytest.approx(
        [model.itl_ms(float(x), 2000.0) for x in b[:5]], rel=1e-12
    )
    isl = np.geomspace(1, 30000, 25)
    assert model.ttft_ms(isl) == pytest.approx([model.ttft_ms(float(x)) for x in isl], rel=1e-12)
    done, chunk = np.linspace(0, 20000, 25), np.linspace(1, 4096, 25)
    assert model.prefill_chunk_ms(done, chunk) == pytest.approx(
        [model.prefill_chunk_ms(float(d), float(k)) for d, k in zip(done, chunk)], rel=1e-9
    )
    assert model.decode_tokens_per_s(b, c) == pytest.approx(
        [model.decode_tokens_per_s(float(x), float(y)) for x, y in zip(b, c)], rel=1e-12
    )


def test_prefill_chunks_add_up_to_the_corrected_prompt(base) -> None:
    model = CorrectedPerfModel(base)
    _teach(model, base, 1.7)
    edges = np.array([0.0, 512.0, 1536.0, 4096.0, 9000.0])
    chunks = np.asarray(model.prefill_chunk_ms(edges[:-1], np.diff(edges)))
    assert chunks.sum() == pytest.approx(model.ttft_ms(9000.0) - model.prefill_overhead_ms, rel=1e-9)


# ----------------------------------------------------------------------------- drop-in


def test_is_a_drop_in_for_sizing(base) -> None:
    model = CorrectedPerfModel(base)
    assert model.max_kv_tokens == base.max_kv_tokens
    assert model.gpus_per_engine == base.gpus_per_engine
    assert model.max_context == base.max_context
    assert model.profile is base.profile
    assert model.max_batch(2000.0) == base.max_batch(2000.0)
    assert np.array_equal(model.max_batch(np.array([500.0, 2000.0])), base.max_batch(np.array([500.0, 2000.0])))
    rng = np.random.default_rng(3)
    load = LoadEstimate.from_samples(rng.integers(200, 4000, 500), rng.integers(50, 600, 500), 40.0)
    sla = SLA(ttft_ms=500, itl_ms=25)
    untrained = decode_curve(model, load, sla, max_replicas=32)
    assert untrained == decode_curve(base, load, sla, max_replicas=32)
    _teach(model, base, 1.3, noise=0.0)
    corrected = decode_curve(model, load, sla, max_replicas=32)
    calibrated = decode_curve(base, load, sla, max_replicas=32, calibration=Calibration(itl_factor=1.3))
    assert replicas_for(corrected) >= replicas_for(decode_curve(base, load, sla, max_replicas=32))
    assert abs(replicas_for(corrected) - replicas_for(calibrated)) <= 1
    assert replicas_for(prefill_curve(model, load, sla, max_replicas=32)) >= replicas_for(
        prefill_curve(base, load, sla, max_replicas=32)
    )
