"""What the sizing model is asked about: a request rate and a sample of request shapes.

Sizing works on a *sample* of (input, output) token pairs rather than on means: TTFT tails come
from long prompts and ITL tails from short outputs sharing a batch with long ones, so a mean-only
model would size for the average request and miss the SLA on the tail. When only summaries are
known (a ``Distribution`` from an observation), a lognormal is fitted and sampled deterministically.
"""

from __future__ import annotations

from functools import lru_cache
from statistics import NormalDist
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from fleet_planner.planning import Distribution

DEFAULT_MAX_SAMPLES = 2000
_Z90 = 1.2815515655446004  # standard normal quantiles of 0.9 and 0.99
_Z99 = 2.3263478740408408


LengthFit = Literal["lognormal", "quantiles"]  # how a length sample is drawn from a summary


class Calibration(BaseModel):
    """Correction factors fitted against the simulator or production (1.0 = trust the profile).

    ``load_factor`` is planning headroom: the model sizes for ``rate * load_factor``.
    ``prefill_factor`` and ``itl_factor`` scale the profile's prefill cost and decode iteration
    time, for engines that run slower (or faster) than their profile. ``arrival_scv`` is the
    arrivals' squared coefficient of variation (1 = Poisson; see
    :mod:`local_agent.sizing.burstiness`): queueing waits and batch noise grow with it.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    load_factor: float = Field(default=1.0, gt=0, allow_inf_nan=False)
    prefill_factor: float = Field(default=1.0, gt=0, allow_inf_nan=False)
    itl_factor: float = Field(default=1.0, gt=0, allow_inf_nan=False)
    arrival_scv: float = Field(default=1.0, gt=0, allow_inf_nan=False)


class LoadEstimate(BaseModel):
    """Arrival rate (req/s) and a sample of request shapes that the rate applies to.

    ``input_tokens[i]`` and ``output_tokens[i]`` belong to the same request, so correlations
    between prompt and answer lengths survive. Arrays are read-only float64.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    rate_rps: float = Field(ge=0, allow_inf_nan=False)
    input_tokens: np.ndarray
    output_tokens: np.ndarray

    @field_validator("input_tokens", "output_tokens", mode="before")
    @classmethod
    def _token_array(cls, value: Any) -> np.ndarray:
        try:
            array = np.array(value, dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError("must be a 1-D sequence of numbers") from None
        if array.ndim != 1 or array.size == 0:
            raise ValueError("must be a non-empty 1-D sequence")
        if not np.all(np.isfinite(array)) or np.any(array < 1):
            raise ValueError("token counts must be finite and >= 1")
        array.setflags(write=False)
        return array

    @model_validator(mode="after")
    def _paired(self) -> LoadEstimate:
        if self.input_tokens.shape != self.output_tokens.shape:
            raise ValueError("input_tokens and output_tokens must have the same length")
        return self

    @classmethod
    def from_samples(
        cls,
        input_tokens: Any,
        output_tokens: Any,
        rate_rps: float,
        *,
        max_samples: int = DEFAULT_MAX_SAMPLES,
    ) -> LoadEstimate:
        """From observed requests (e.g. a trace window), thinned evenly to ``max_samples`` pairs
        so that a curve costs the same whatever the window size."""
        inputs = np.asarray(input_tokens, dtype=np.float64).ravel()
        outputs = np.asarray(output_tokens, dtype=np.float64).ravel()
        if inputs.size != outputs.size:
            raise ValueError("input_tokens and output_tokens must have the same length")
        if max_samples < 1:
            raise ValueError(f"max_samples must be >= 1, got {max_samples}")
        if inputs.size > max_samples:
            keep = np.linspace(0, inputs.size - 1, max_samples).round().astype(np.int64)
            inputs, outputs = inputs[keep], outputs[keep]
        return cls(rate_rps=rate_rps, input_tokens=inputs, output_tokens=outputs)

    @classmethod
    def from_distribution(
        cls,
        rate_rps: float,
        input_tokens: Distribution,
        output_tokens: Distribution,
        *,
        samples: int = 1000,
        admitted_below: int | None = None,
        fit: LengthFit = "lognormal",
    ) -> LoadEstimate:
        """From summaries only, sampled at evenly spaced quantiles (deterministic), inputs and
        outputs paired independently. ``fit``: a lognormal fitted to each (mean, p50, p90, p99),
        which keeps the mean throughput follows; or ``quantiles``, a sample through each one's own
        p50, p90 and p99 (its mean not matched), which a latency quantile follows: where prompts
        come in two clusters (a p90 near the p99) no lognormal passes through both, and its p90
        prompt sits far below the summary's.

        ``admitted_below``: the summaries describe requests an engine admitted, so no prompt was
        longer than this (its context). The lognormal's tail beyond it is an artefact of the fit,
        not traffic; it is kept as prompts at the limit, which an engine serves, instead of
        prompts the sizing would count as rejected (on Mooncake lengths with a 32k context 1.75%
        of the sample: a false attainment ceiling of 98.25%, and the costliest prompts' load lost)."""
        if samples < 1:
            raise ValueError(f"samples must be >= 1, got {samples}")

        def sample(summary: Distribution) -> np.ndarray:
            if fit == "quantiles":
                return _through_quantiles(summary, samples)
            return _lognormal_sample(_summary_key(summary), samples)

        inputs = sample(input_tokens)
        if admitted_below is not None:
            inputs = np.minimum(inputs, float(admitted_below))
        outputs = sample(output_tokens)[_pairing(samples)]
        return cls(rate_rps=rate_rps, input_tokens=inputs, output_tokens=outputs)


def _through_quantiles(summary: Distribution, samples: int) -> np.ndarray:
    """Evenly spaced quantiles of a distribution through the summary's p50, p90 and p99, log-linear
    in the normal score between them and at the neighbouring segment's slope beyond."""
    knots = np.log(np.maximum.accumulate(np.maximum([summary.p50, summary.p90, summary.p99], 1.0)))
    levels = _normal_levels(samples)
    logs = np.interp(levels, [0.0, _Z90, _Z99], knots)
    logs = np.where(levels < 0.0, knots[0] + (knots[1] - knots[0]) / _Z90 * levels, logs)
    logs = np.where(levels > _Z99, knots[2] + (knots[2] - knots[1]) / (_Z99 - _Z90) * (levels - _Z99), logs)
    return np.maximum(np.exp(logs), 1.0)


def _summary_key(summary: Distribution) -> tuple[float, float, float, float]:
    """What the lognormal fit reads of a summary (its count does not enter)."""
    return (summary.p50, summary.p90, summary.p99, summary.mean)


@lru_cache(maxsize=64)
def _lognormal_sample(summary: tuple[float, float, float, float], samples: int) -> np.ndarray:
    """Evenly spaced quantiles of the lognormal closest (in log space) to the summary
    (``_summary_key``: p50, p90, p99, mean).

    ``sigma`` is searched on a grid; for each sigma the best ``mu`` is the mean residual, so the
    fit balances the quantiles against the mean, which sets throughput and must not drift.
    Cached (read-only result): an agent sizes several rates per tick at the same lengths, and
    the lengths change only when a window's summary does.
    """
    targets = np.log(np.maximum(list(summary), 1.0))
    sigma = np.linspace(0.0, 3.0, 601)[:, None]
    offsets = np.hstack([np.zeros_like(sigma), _Z90 * sigma, _Z99 * sigma, 0.5 * sigma**2])
    weights = np.array([1.0, 1.0, 1.0, 2.0])
    residual = targets[None, :] - offsets
    mu = (residual * weights).sum(axis=1) / weights.sum()
    error = (((residual - mu[:, None]) ** 2) * weights).sum(axis=1)
    best = int(np.argmin(error))
    sample = np.maximum(np.exp(mu[best] + float(sigma[best, 0]) * _normal_levels(samples)), 1.0)
    sample.setflags(write=False)
    return sample


@lru_cache(maxsize=8)
def _pairing(samples: int) -> np.ndarray:
    """The fixed permutation pairing outputs with inputs (seed 0); cached like the levels."""
    order = np.random.default_rng(0).permutation(samples)
    order.setflags(write=False)
    return order


@lru_cache(maxsize=8)
def _normal_levels(samples: int) -> np.ndarray:
    """Standard normal quantiles at (i + 0.5) / samples; cached since agents reuse one size."""
    ppf = NormalDist().inv_cdf
    return np.array([ppf((i + 0.5) / samples) for i in range(samples)])
