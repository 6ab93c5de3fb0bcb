"""The analytical capacity model: demand curves, sizing, load estimates and their validation."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pytest

from fleet_planner.perf import PerfModel, load_profile
from fleet_planner.planning import SLA, DeploymentSpec, Distribution, PoolSpec
from fleet_planner.traces.readers import read_trace
from local_agent.sizing import (
    Calibration,
    LoadEstimate,
    PoolCurve,
    agg_curve,
    cheapest_pair,
    decode_curve,
    deployment_curves,
    kv_transfer_ms,
    prefill_curve,
    replicas_for,
    size_deployment,
)

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
PROFILE = EXAMPLES / "profiles" / "llama3.1-8b_h200_vllm_tp1"
SLA_ = SLA(ttft_ms=500, itl_ms=20)
CURVES = {"prefill": prefill_curve, "decode": decode_curve, "agg": agg_curve}


@pytest.fixture(scope="module")
def model() -> PerfModel:
    return PerfModel(load_profile(PROFILE))


@pytest.fixture(scope="module")
def azure() -> tuple[np.ndarray, np.ndarray]:
    trace = read_trace(EXAMPLES / "traces" / "azure2023_conv.csv", "azure")
    return trace.input_tokens, trace.output_tokens


def _load(azure: tuple[np.ndarray, np.ndarray], rate: float) -> LoadEstimate:
    return LoadEstimate.from_samples(*azure, rate)


def _spec(mode: str, *, max_replicas: int = 64, gpus: int = 1) -> DeploymentSpec:
    roles = ("prefill", "decode") if mode == "disagg" else ("agg",)
    pools = {
        role: PoolSpec(
            deployment="chat",
            role=role,
            profile_path=str(PROFILE),
            gpu_type="h200",
            gpus_per_replica=gpus,
            min_replicas=0,
            max_replicas=max_replicas,
            initial_replicas=0,
            startup_s=60,
        )
        for role in roles
    }
    return DeploymentSpec(name="chat", tenant="acme", endpoint="chat", mode=mode, sla=SLA_, pools=pools)


# ----------------------------------------------------------------------------- curve shape


@pytest.mark.parametrize("role", CURVES)
@pytest.mark.parametrize("rate", [5.0, 60.0, 250.0])
def test_curves_are_bounded_monotone_and_aligned(model, azure, role, rate) -> None:
    curve = CURVES[role](model, _load(azure, rate), SLA_, max_replicas=64)
    assert curve.role == role
    assert curve.replicas == list(range(65))
    met = np.array(curve.attainment)
    assert np.all((met >= 0) & (met <= 1))
    assert np.all(np.diff(met) >= 0)
    assert met[0] == 0.0 and met[-1] > 0.99
    assert len(curve.ttft_p90_ms) == len(curve.itl_p90_ms) == len(curve.utilisation) == 65
    assert math.isinf(curve.utilisation[0])
    for column in (curve.ttft_p90_ms, curve.itl_p90_ms):
        known = [v for v in column if v is not None]
        assert all(a >= b for a, b in zip(known, known[1:], strict=False))


@pytest.mark.parametrize("role", CURVES)
def test_more_load_never_raises_attainment(model, azure, role) -> None:
    curves = [CURVES[role](model, _load(azure, r), SLA_, max_replicas=24) for r in (20, 60, 120)]
    for low, high in zip(curves, curves[1:], strict=False):
        assert all(hi <= lo + 1e-9 for lo, hi in zip(low.attainment, high.attainment, strict=True))
    assert replicas_for(curves[0]) < replicas_for(curves[2])


@pytest.mark.parametrize("role", CURVES)
def test_double_load_roughly_doubles_replicas(model, azure, role) -> None:
    base = {"prefill": 100.0, "decode": 250.0, "agg": 60.0}[role]
    one = replicas_for(CURVES[role](model, _load(azure, base), SLA_, max_replicas=64))
    two = replicas_for(CURVES[role](model, _load(azure, 2 * base), SLA_, max_replicas=64))
    assert 3 <= one <= 16
    assert 1.5 <= two / one <= 2.5


@pytest.mark.parametrize("role", CURVES)
def test_zero_load_needs_no_replica(model, azure, role) -> None:
    curve = CURVES[role](model, _load(azure, 0.0), SLA_, max_replicas=8)
    assert curve.attainment[0] == 1.0
    assert replicas_for(curve) == 0
    assert curve.utilisation[0] == 0.0


@pytest.mark.parametrize("role", CURVES)
def test_overload_attains_nothing(model, azure, role) -> None:
    curve = CURVES[role](model, _load(azure, 20000.0), SLA_, max_replicas=8)
    assert curve.attainment == [0.0] * 9
    assert curve.ceiling > 0.99
    assert all(u > 1 for u in curve.utilisation[1:])
    assert replicas_for(curve) == 8  # never reached: the largest count
    assert all(v is None for v in curve.ttft_p90_ms + curve.itl_p90_ms)


@pytest.mark.parametrize("role", CURVES)
def test_looser_sla_needs_fewer_replicas(model, azure, role) -> None:
    load = _load(azure, 120.0)
    tight = CURVES[role](model, load, SLA(ttft_ms=300, itl_ms=12), max_replicas=64)
    loose = CURVES[role](model, load, SLA(ttft_ms=1000, itl_ms=40), max_replicas=64)
    assert replicas_for(loose) <= replicas_for(tight)
    assert all(lo >= t for lo, t in zip(loose.attainment, tight.attainment, strict=True))


def test_unreachable_ttft_caps_attainment_without_inflating_sizes(model) -> None:
    """Prompts whose prefill alone exceeds the SLA miss it however many replicas there are:
    the curve's ceiling says so, and sizing aims at the target share of that ceiling."""
    inputs = np.array([1000.0] * 95 + [20000.0] * 5)
    load = LoadEstimate(rate_rps=1.0, input_tokens=inputs, output_tokens=np.full(100, 50.0))
    curve = prefill_curve(model, load, SLA(ttft_ms=500, itl_ms=20), max_replicas=16)
    assert curve.ceiling == pytest.approx(0.95, abs=0.005)
    assert curve.attainment[-1] == pytest.approx(0.95, abs=0.005)
    assert replicas_for(curve, 0.99) == 1


@pytest.mark.parametrize("role", ["prefill", "agg"])
def test_prompts_over_the_length_limit_are_rejected_misses(model, role) -> None:
    inputs = np.array([1000.0] * 90 + [40000.0] * 10)  # the profile's context limit is 32768
    load = LoadEstimate(rate_rps=50.0, input_tokens=inputs, output_tokens=np.full(100, 100.0))
    curve = CURVES[role](model, load, SLA_, max_replicas=16)
    served = LoadEstimate(rate_rps=45.0, input_tokens=inputs[:90], output_tokens=np.full(90, 100.0))
    alone = CURVES[role](model, served, SLA_, max_replicas=16)
    assert curve.ceiling == pytest.approx(0.9 * alone.ceiling)
    assert curve.attainment == pytest.approx([0.9 * a for a in alone.attainment])
    assert replicas_for(curve) == replicas_for(alone)
    limited = CURVES[role](model, load, SLA_, max_replicas=4, max_input_tokens=500)
    assert limited.attainment == [0.0] * 5 and limited.ceiling == 0.0
    # Decode never sees rejected prompts.
    assert decode_curve(model, load, SLA_, max_replicas=4, max_input_tokens=500).attainment == [1.0] * 5


def test_max_replicas_zero_gives_only_the_empty_pool(model, azure) -> None:
    for role, fn in CURVES.items():
        curve = fn(model, _load(azure, 10.0), SLA_, max_replicas=0)
        assert curve.replicas == [0] and curve.attainment == [0.0], role


# ----------------------------------------------------------------------------- hand calculations


def test_decode_capacity_matches_profile_arithmetic(model) -> None:
    """Fixed shapes: the largest batch whose ITL meets the SLA, times tokens/s per sequence,
    bounds the request rate one decode replica carries; sizing lands within one replica."""
    inputs, outputs = 1000.0, 201.0
    context = inputs + outputs / 2
    sla = SLA(ttft_ms=1000, itl_ms=15)
    batch = np.arange(1, 257, dtype=float)
    fits = batch[model.itl_ms(batch, context) <= sla.itl_ms].max()
    per_replica_rps = model.decode_tokens_per_s(fits, context) / (outputs - 1)
    rate = 300.0
    load = LoadEstimate(rate_rps=rate, input_tokens=[inputs], output_tokens=[outputs])
    needed = replicas_for(decode_curve(model, load, sla, max_replicas=64))
    assert abs(needed - math.ceil(rate / per_replica_rps)) <= 1


def test_lone_prompt_ttft_is_prefill_plus_transfer(model) -> None:
    load = LoadEstimate(rate_rps=0.01, input_tokens=[2048.0], output_tokens=[10.0])
    curve = prefill_curve(model, load, SLA_, max_replicas=4)
    expected = model.ttft_ms(2048.0) + float(kv_transfer_ms(np.array([2048.0]))[0])
    assert curve.ttft_p90_ms[4] == pytest.approx(expected, rel=0.02)
    assert kv_transfer_ms(np.array([1000.0]))[0] == pytest.approx(1000 * 131072 * 8 / 50e9 * 1e3)


def test_prefill_capacity_matches_profile_throughput(model) -> None:
    """Utilisation is offered prefill work over one replica's capacity: at the profile's
    per-request prefill time, rate * time / N."""
    load = LoadEstimate(rate_rps=100.0, input_tokens=[4096.0], output_tokens=[10.0])
    curve = prefill_curve(model, load, SLA_, max_replicas=8)
    work_ms = model.ttft_ms(4096.0) - model.prefill_overhead_ms * (1 - 4096 / 8192)
    assert curve.utilisation[4] == pytest.approx(100.0 * work_ms / 1000 / 4, rel=1e-6)


# ----------------------------------------------------------------------------- deployments


def test_disagg_sizing_is_the_cheapest_pair_meeting_the_target(model, azure) -> None:
    spec = _spec("disagg", max_replicas=32)
    load = _load(azure, 150.0)
    curves = deployment_curves(spec, {"prefill": model, "decode": model}, load)
    sized = size_deployment(spec, {"prefill": model, "decode": model}, load, target=0.99)
    p, d = np.array(curves["prefill"].attainment), np.array(curves["decode"].attainment)
    assert p[sized["prefill"]] * d[sized["decode"]] >= 0.99
    combined = p[:, None] * d[None, :]
    gpus = np.add.outer(np.arange(33), np.arange(33))
    assert gpus[combined >= 0.99].min() == sized["prefill"] + sized["decode"]


def test_disagg_sizing_weighs_gpus_per_replica(model) -> None:
    prefill = PoolCurve(
        role="prefill",
        replicas=[0, 1, 2],
        attainment=[0.0, 0.995, 1.0],
        ttft_p90_ms=[None] * 3,
        itl_p90_ms=[None] * 3,
        utilisation=[math.inf, 0.5, 0.25],
    )
    decode = prefill.model_copy(update={"role": "decode", "attainment": [0.0, 0.996, 1.0]})
    assert cheapest_pair(prefill, decode, 0.99) == (1, 1)
    assert cheapest_pair(prefill, decode, 0.999) == (2, 2)
    assert cheapest_pair(prefill, decode, 0.993, prefill_gpus=1, decode_gpus=8) == (2, 1)
    # Unreachable target: the best attainment, then the fewest GPUs.
    short = decode.model_copy(update={"attainment": [0.0, 0.5, 0.5]})
    assert cheapest_pair(prefill, short, 0.99) == (2, 1)
    # The target is relative to what unlimited replicas could reach.
    capped = decode.model_copy(update={"attainment": [0.0, 0.5, 0.9], "ceiling": 0.9})
    assert cheapest_pair(prefill, capped, 0.99) == (1, 2)


def test_agg_sizing_and_zero_load(model, azure) -> None:
    spec = _spec("agg")
    models = {"agg": model}
    sized = size_deployment(spec, models, _load(azure, 60.0))
    curve = deployment_curves(spec, models, _load(azure, 60.0))["agg"]
    assert curve.attainment[sized["agg"]] >= 0.99 > curve.attainment[sized["agg"] - 1]
    assert size_deployment(spec, models, _load(azure, 0.0)) == {"agg": 0}
    disagg = _spec("disagg")
    both = {"prefill": model, "decode": model}
    assert size_deployment(disagg, both, _load(azure, 0.0)) == {"prefill": 0, "decode": 0}


def test_deployment_curves_use_pool_limits_and_check_inputs(model, azure) -> None:
    load = _load(azure, 30.0)
    curves = deployment_curves(_spec("disagg", max_replicas=5), {"prefill": model, "decode": model}, load)
    assert set(curves) == {"prefill", "decode"}
    assert curves["prefill"].replicas == list(range(6))
    assert deployment_curves(_spec("agg"), {"agg": model}, load, max_replicas=3)["agg"].replicas == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="no performance model"):
        deployment_curves(_spec("disagg"), {"prefill": model}, load)
    with pytest.raises(ValueError, match="target"):
        size_deployment(_spec("agg"), {"agg": model}, load, target=1.5)


@pytest.mark.parametrize("mode", ["agg", "disagg"])
@pytest.mark.parametrize("rate", [5.0, 60.0, 250.0])
def test_a_lesser_detail_computes_the_same_columns(model, azure, mode, rate) -> None:
    """``attainment`` and ``entry_ttft`` leave computations out, never change what they keep."""
    models = {"agg": model} if mode == "agg" else {"prefill": model, "decode": model}
    load = _load(azure, rate)
    full = deployment_curves(_spec(mode, max_replicas=16), models, load)
    attainment = deployment_curves(_spec(mode, max_replicas=16), models, load, detail="attainment")
    for role, curve in attainment.items():
        assert curve.attainment == full[role].attainment and curve.ceiling == full[role].ceiling
        assert curve.utilisation == full[role].utilisation
    entry = "agg" if mode == "agg" else "prefill"
    assert set(attainment[entry].ttft_p90_ms) == set(attainment[entry].itl_p90_ms) == {None}
    if mode == "disagg":  # the decode pool's p90s are closed forms: kept
        assert attainment["decode"] == full["decode"]
    entry_ttft = deployment_curves(_spec(mode, max_replicas=16), models, load, detail="entry_ttft")
    assert list(entry_ttft) == [entry]
    assert entry_ttft[entry].ttft_p90_ms == full[entry].ttft_p90_ms


def test_calibration_load_factor_is_headroom(model, azure) -> None:
    scaled = agg_curve(model, _load(azure, 40.0), SLA_, max_replicas=16, calibration=Calibration(load_factor=1.5))
    direct = agg_curve(model, _load(azure, 60.0), SLA_, max_replicas=16)
    assert scaled.attainment[1:] == pytest.approx(direct.attainment[1:])
    slower = decode_curve(model, _load(azure, 200.0), SLA_, max_replicas=16, calibration=Calibration(itl_factor=1.3))
    assert replicas_for(slower) > replicas_for(decode_curve(model, _load(azure, 200.0), SLA_, max_replicas=16))


def test_a_curve_is_fast(model, azure) -> None:
    load = _load(azure, 100.0)
    for fn in CURVES.values():
        fn(model, load, SLA_, max_replicas=64)
        start = time.perf_counter()
        for _ in range(10):
            fn(model, load, SLA_, max_replicas=64)
        assert (time.perf_counter() - start) / 10 < 0.02  # typically 1-3 ms; generous for CI


# ----------------------------------------------------------------------------- load estimates


def test_from_samples_thins_evenly_and_keeps_pairs() -> None:
    inputs = np.arange(1, 10001, dtype=float)
    load = LoadEstimate.from_samples(inputs, inputs * 2, 3.0, max_samples=100)
    assert load.input_tokens.size == 100
    assert np.array_equal(load.output_tokens, load.input_tokens * 2)
    assert load.input_tokens[0] == 1 and load.input_tokens[-1] == 10000
    with pytest.raises(ValueError):
        load.input_tokens[0] = 5  # read-only


def test_from_distribution_fits_a_lognormal() -> None:
    summary = Distribution(count=500, mean=1155, p50=1020, p90=2300, p99=4142)
    out = Distribution(count=500, mean=211, p50=129, p90=450, p99=601)
    load = LoadEstimate.from_distribution(5.0, summary, out, samples=2000)
    assert load.rate_rps == 5.0 and load.input_tokens.size == 2000
    assert np.median(load.input_tokens) == pytest.approx(1020, rel=0.15)
    assert np.quantile(load.input_tokens, 0.9) == pytest.approx(2300, rel=0.2)
    assert load.input_tokens.mean() == pytest.approx(1155, rel=0.15)
    assert load.output_tokens.mean() == pytest.approx(211, rel=0.25)
    flat = Distribution(count=1, mean=100, p50=100, p90=100, p99=100)
    assert np.allclose(LoadEstimate.from_distribution(1.0, flat, flat).input_tokens, 100)


# Prompt lengths of admitted Mooncake conversations on a 32k-context engine: heavy-tailed and cut at
# the limit (p99 just under it), which the lognormal fitted to the summary does not know.
ADMITTED_LONG = Distribution(count=1927, mean=9428, p50=6117, p90=23640, p99=32577)


def test_admitted_lengths_keep_the_fitted_tail_at_the_context_limit() -> None:
    out = Distribution(count=1927, mean=167, p50=103, p90=418, p99=830)
    fitted = LoadEstimate.from_distribution(1.0, ADMITTED_LONG, out, samples=400).input_tokens
    admitted = LoadEstimate.from_distribution(1.0, ADMITTED_LONG, out, samples=400, admitted_below=32768).input_tokens
    assert (fitted > 32768).mean() > 0.01  # the fit's tail crosses the limit the traffic never did
    assert admitted.max() == 32768 and np.array_equal(admitted[fitted <= 32768], fitted[fitted <= 32768])
    # Kept as prompts at the limit, the tail's load stays: dropping it would lose the costliest prompts.
    assert admitted.mean() > fitted[fitted <= 32768].mean()


@pytest.mark.parametrize("rate", [-1.0, math.nan, math.inf])
def test_bad_rates_are_rejected(rate: float) -> None:
    with pytest.raises(ValueError):
        LoadEstimate(rate_rps=rate, input_tokens=[100], output_tokens=[10])
    with pytest.raises(ValueError):
        LoadEstimate.from_samples([100], [10], rate)


@pytest.mark.parametrize(
    ("inputs", "outputs"),
    [([], []), ([100, 200], [10]), ([0.5], [10]), ([math.nan], [10]), ([[1, 2]], [[1, 2]]), (["a"], [1])],
)
def test_bad_samples_are_rejected(inputs, outputs) -> None:
    with pytest.raises(ValueError):
        LoadEstimate(rate_rps=1.0, input_tokens=inputs, output_tokens=outputs)


def test_bad_limits_are_rejected(model, azure) -> None:
    load = _load(azure, 1.0)
    with pytest.raises(ValueError, match="max_replicas"):
        prefill_curve(model, load, SLA_, max_replicas=-1)
    with pytest.raises(ValueError, match="max_batch_tokens"):
        agg_curve(model, load, SLA_, max_replicas=4, max_batch_tokens=0)
    with pytest.raises(ValueError, match="max_num_seqs"):
        decode_curve(model, load, SLA_, max_replicas=4, max_num_seqs=0)
    with pytest.raises(ValueError):
        Calibration(load_factor=0)
    with pytest.raises(ValueError, match="one entry per replica"):
        PoolCurve(
            role="agg", replicas=[0, 1], attainment=[0.0], ttft_p90_ms=[None], itl_p90_ms=[None], utilisation=[0.0]
        )
