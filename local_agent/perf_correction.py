"""Online correction of a profile-based performance model from measured engine iterations.

A pre-deployment profile is measured on another day, driver, engine version or prompt mix; the
live engine is the truth. :class:`CorrectedPerfModel` wraps a :class:`PerfModel`, keeps a sample of
measured iteration times that covers the operating range, and fits one regression per phase::

    decode  iteration  ~  s_d * itl_base(b, c) + a0 + a1 * b + a2 * b * c
    prefill to x tokens ~ s_p * ttft_base(x)   + p0 + p1 * x + p2 * x**2 / 2

``b`` is the running batch (scheduled decode tokens), ``b * c`` the KV tokens attended to, ``x``
the prefilled tokens (attention makes prefill cost grow with position, hence ``x**2 / 2``).
Why this form:

* Physical and non-negative. The additive terms are the costs a profile can miss (a fixed
  per-iteration overhead, per scheduled token, per KV token) and ``s`` a uniform speed ratio;
  none can be negative, so the coefficients are fitted by NNLS. Because every term is
  non-decreasing in load, the corrected latency stays monotone in batch, context and prompt
  length, like the base surfaces: sizing never sees latency fall when load rises, and prefill
  chunk costs stay positive.
* Anchored to the profile. A ridge prior pulls toward ``s = 1`` and no additive cost, with each
  feature scaled so that one unit changes the prediction by at most 100% anywhere in the profiled
  range. Few or clustered samples then move the prediction mostly where they were measured: a
  discrepancy seen at one point moves distant points by at most 1.5x that discrepancy.
* Bounded. The corrected/base ratio is clamped (default 0.5x..3x), and each sample's own ratio is
  clipped to the same range before fitting, so one stalled iteration cannot drag the fit.

Samples live in bins over the operating range (batch x context x prefill tokens, log-spaced, per
kind), each a bounded reservoir of the newest ``max_samples``; within a bin recent samples weigh
more (half-life in samples) and a bin's total weight saturates with its count. A long stretch at
one operating point therefore refreshes that bin without erasing what other bins learned.

Until ``min_samples`` samples touched a phase, that phase returns the base profile exactly.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from numbers import Real
from typing import Any, Literal, overload

import numpy as np
from scipy.optimize import nnls

from fleet_planner.perf import EngineProfile, PerfModel
from fleet_planner.perf.model import ArrayLike

Kind = Literal["decode", "prefill", "mixed"]
KINDS: tuple[Kind, ...] = ("decode", "prefill", "mixed")

# Coefficient layout: decode [s_d, a0, a1, a2] then prefill [s_p, p0, p1, p2].
_N_COEF = 8
_DECODE = slice(0, 4)
_PREFILL = slice(4, 8)
_PRIOR = np.array([1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0])
# A bin of n samples weighs n / (n + _BIN_SATURATION): one noisy sample counts less than a full bin.
_BIN_SATURATION = 4.0

_DECODE_NAMES = ("scale", "fixed_ms", "per_seq_ms", "per_kv_token_ms")
_PREFILL_NAMES = ("scale", "fixed_ms", "per_token_ms", "per_token_position_ms")


@dataclass(frozen=True)
class CorrectionSummary:
    """State of the correction, for logs, metrics and diagnostics reports."""

    decode_active: bool
    prefill_active: bool
    samples_seen: dict[str, int]  # accepted samples per kind since construction
    samples_retained: int
    bins_occupied: int
    decode_coefficients: dict[str, float]  # ms units; scale is dimensionless
    prefill_coefficients: dict[str, float]
    residual_rms: float | None  # weighted RMS of the relative fit residual; None before a fit
    decode_factors: list[tuple[float, float, float]]  # (batch, context, corrected / base ITL)
    prefill_factors: list[tuple[float, float]]  # (input tokens, corrected / base TTFT)


class CorrectedPerfModel:
    """A :class:`PerfModel` whose latencies are corrected online from measured iterations.

    Has the same public methods and attributes as ``PerfModel`` (scalar and array inputs), so it
    can be passed wherever sizing expects one.
    """

    def __init__(
        self,
        base: PerfModel,
        *,
        min_samples: int = 20,
        max_samples: int = 32,
        bins: int = 8,
        half_life: float = 8.0,
        prior_weight: float = 0.05,
        factor_range: tuple[float, float] = (0.5, 3.0),
    ):
        """``max_samples`` is per bin; ``bins`` per axis; ``half_life`` in samples within a bin."""
        if min_samples < 1 or max_samples < 1 or bins < 1:
            raise ValueError("min_samples, max_samples and bins must be >= 1")
        if not (half_life > 0 and prior_weight > 0):
            raise ValueError("half_life and prior_weight must be > 0")
        lo, hi = factor_range
        if not (0 < lo <= 1 <= hi < math.inf):
            raise ValueError("factor_range must satisfy 0 < low <= 1 <= high < inf")
        self.base = base
        self.min_samples = min_samples
        self.max_samples = max_samples
        self.bins = bins
        self.factor_range = (float(lo), float(hi))
        self._decay = 0.5 ** (1.0 / half_life)
        self._prior_weight = prior_weight
        p = base.profile
        self._batch_top = float(np.max(p.decode_batch))
        self._context_top = float(max(np.max(p.decode_context), np.max(p.prefill_isl)))
        self._tokens_top = float(np.max(p.prefill_isl))
        self._scale = self._feature_scales()
        self._bins: dict[tuple[str, int, int, int], deque[np.ndarray]] = {}
        self._seen: dict[str, int] = dict.fromkeys(KINDS, 0)
        self._coef = _PRIOR.copy()
        self._decode_active = False
        self._prefill_active = False
        self._residual: float | None = None
        self._dirty = False

    def __repr__(self) -> str:
        return f"CorrectedPerfModel({self.base!r}, samples={sum(self._seen.values())})"

    # ----------------------------------------------------------------- PerfModel attributes

    @property
    def profile(self) -> EngineProfile:
        return self.base.profile

    @property
    def max_kv_tokens(self) -> int:
        return self.base.max_kv_tokens

    @property
    def gpus_per_engine(self) -> int:
        return self.base.gpus_per_engine

    @property
    def max_context(self) -> int | None:
        return self.base.max_context

    @property
    def warnings(self) -> list[str]:
        return self.base.warnings

    # ----------------------------------------------------------------- learning

    def observe_iteration(
        self,
        kind: Kind,
        iteration_ms: float,
        batch: float,
        context: float,
        prefill_tokens: float = 0.0,
    ) -> None:
        """Record one measured (or window-averaged) engine iteration.

        * ``decode``: ``batch`` running sequences of mean context ``context``.
        * ``prefill``: ``prefill_tokens`` new tokens split over ``batch`` (>= 1) sequences that
          had ``context`` tokens already prefilled (0 for whole prompts); includes the overhead.
        * ``mixed``: a decode iteration of ``batch`` x ``context`` that also prefilled
          ``prefill_tokens`` tokens of one fresh prompt (chunked prefill in an aggregated engine).

        Raises ``ValueError`` (leaving the state unchanged) for non-finite or impossible values.
        """
        row = self._sample_row(kind, iteration_ms, batch, context, prefill_tokens)
        key = (
            kind,
            self._bin(batch if kind != "prefill" else 0.0, self._batch_top),
            self._bin(context, self._context_top),
            self._bin(prefill_tokens, self._tokens_top),
        )
        reservoir = self._bins.get(key)
        if reservoir is None:
            reservoir = self._bins[key] = deque(maxlen=self.max_samples)
        reservoir.append(row)
        self._seen[kind] += 1
        self._dirty = True

    def _sample_row(
        self, kind: str, iteration_ms: float, batch: float, context: float, prefill_tokens: float
    ) -> np.ndarray:
        """Validate one sample; return [measured ms, 8 features in ms units]."""
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        raw = (iteration_ms, batch, context, prefill_tokens)
        if not all(isinstance(v, Real) and math.isfinite(v) for v in raw):
            raise ValueError(f"iteration sample must be finite numbers, got {raw}")
        iteration_ms, batch, context, prefill_tokens = (float(v) for v in raw)
        if iteration_ms <= 0 or context < 0 or prefill_tokens < 0:
            raise ValueError("iteration_ms must be > 0; context and prefill_tokens >= 0")
        if kind == "prefill":
            if batch < 1 or prefill_tokens <= 0:
                raise ValueError("a prefill sample needs batch >= 1 and prefill_tokens > 0")
        elif batch <= 0:
            raise ValueError(f"a {kind} sample needs batch > 0")
        if kind == "decode" and prefill_tokens != 0:
            raise ValueError("a decode sample has no prefill_tokens; use kind='mixed'")
        if kind == "mixed" and prefill_tokens <= 0:
            raise ValueError("a mixed sample needs prefill_tokens > 0")
        b, c, t = batch, context, prefill_tokens
        row = np.zeros(1 + _N_COEF)
        row[0] = iteration_ms
        if kind == "prefill":
            per_seq = t / b
            row[5:9] = (
                self.base.prefill_overhead_ms + b * self.base.prefill_chunk_ms(c, per_seq),
                1.0,
                t,
                b * (per_seq * c + per_seq * per_seq / 2.0),
            )
            return row
        row[1:5] = (self.base.itl_ms(b, c), 1.0, b, b * c)
        if kind == "mixed":
            # The decode iteration already carries the overhead: no p0 term.
            row[5:9] = (self.base.prefill_chunk_ms(0.0, t), 0.0, t, t * t / 2.0)
        return row

    def _bin(self, x: float, top: float) -> int:
        """Log-spaced bin index of ``x`` on [0, top]; values above top share the last bin."""
        return min(int(self.bins * math.log1p(x) / math.log1p(top)), self.bins - 1)

    def _feature_scales(self) -> np.ndarray:
        """Per-coefficient unit: one unit adds at most the base latency at any profiled point."""
        p = self.profile
        b = np.asarray(p.decode_batch, dtype=np.float64)
        c = np.asarray(p.decode_context, dtype=np.float64)
        itl = np.asarray(self.base.itl_ms(b, c))
        x = np.asarray(p.prefill_isl, dtype=np.float64)
        x = x[x > 0]
        ttft = np.asarray(self.base.ttft_ms(x))
        tiny = 1e-12
        return np.array(
            [
                1.0,
                max(float(itl.min()), tiny),
                max(float(np.min(itl / b)), tiny),
                max(float(np.min(itl / (b * c))), tiny),
                1.0,
                max(float(ttft.min()), tiny),
                max(float(np.min(ttft / x)), tiny),
                max(float(np.min(ttft / (x * x / 2.0))), tiny),
            ]
        )

    def _ensure_fit(self) -> None:
        """Refit lazily: many samples may arrive between two queries."""
        if not self._dirty:
            return
        self._dirty = False
        seen = self._seen
        self._decode_active = seen["decode"] + seen["mixed"] >= self.min_samples
        self._prefill_active = seen["prefill"] + seen["mixed"] >= self.min_samples
        active = np.zeros(_N_COEF, dtype=bool)
        active[_DECODE] = self._decode_active
        active[_PREFILL] = self._prefill_active
        if not active.any():
            return
        rows, weights = self._weighted_rows()
        y, x = rows[:, 0], rows[:, 1:]
        base = x @ _PRIOR
        lo, hi = self.factor_range
        ratio = np.clip(y / base, lo, hi)
        fixed = ~active
        target = ratio - (x[:, fixed] @ _PRIOR[fixed]) / base
        design = x[:, active] * self._scale[active] / base[:, None]
        keep = design.any(axis=1)
        design, target, w = design[keep], target[keep], weights[keep]
        sw = np.sqrt(w)
        n_active = int(active.sum())
        ridge = math.sqrt(self._prior_weight)
        theta, _ = nnls(
            np.vstack((design * sw[:, None], ridge * np.eye(n_active))),
            np.concatenate((target * sw, ridge * _PRIOR[active])),
        )
        self._coef = _PRIOR.copy()
        self._coef[active] = theta * self._scale[active]
        residual = design @ theta - target
        self._residual = float(np.sqrt(np.sum(w * residual**2) / np.sum(w)))

    def _weighted_rows(self) -> tuple[np.ndarray, np.ndarray]:
        """All retained samples and their weights (recency within a bin, saturating per bin)."""
        rows: list[np.ndarray] = []
        weights: list[np.ndarray] = []
        for reservoir in self._bins.values():
            n = len(reservoir)
            w = self._decay ** np.arange(n - 1, -1, -1, dtype=np.float64)
            weights.append(w * (n / (n + _BIN_SATURATION)) / w.sum())
            rows.append(np.array(reservoir))
        return np.vstack(rows), np.concatenate(weights)

    # ----------------------------------------------------------------- prefill

    def _clamp(self, raw: Any, base: Any) -> Any:
        """Keep corrected/base within ``factor_range`` (scalar or array)."""
        lo, hi = self.factor_range
        if isinstance(raw, np.ndarray):
            return np.clip(raw, lo * base, hi * base)
        return min(max(raw, lo * base), hi * base)

    @overload
    def ttft_ms(self, isl: float) -> float: ...
    @overload
    def ttft_ms(self, isl: ArrayLike) -> np.ndarray: ...

    def ttft_ms(self, isl: Any) -> Any:
        """Corrected time to first token of one request alone with ``isl`` input tokens."""
        base = self.base.ttft_ms(isl)
        self._ensure_fit()
        if not self._prefill_active:
            return base
        s, p0, p1, p2 = self._coef[_PREFILL].tolist()
        x = np.asarray(isl, dtype=np.float64) if isinstance(base, np.ndarray) else float(isl)
        return self._clamp(s * base + p0 + p1 * x + p2 * x * x / 2.0, base)

    @property
    def prefill_overhead_ms(self) -> float:
        """Corrected per-iteration prefill overhead (the corrected TTFT at zero tokens)."""
        base = self.base.prefill_overhead_ms
        self._ensure_fit()
        if not self._prefill_active:
            return base
        s, p0 = self._coef[4], self._coef[5]
        return float(self._clamp(float(s * base + p0), base))

    @overload
    def prefill_chunk_ms(self, done: float, chunk: float) -> float: ...
    @overload
    def prefill_chunk_ms(self, done: ArrayLike | float, chunk: ArrayLike | float) -> np.ndarray: ...

    def prefill_chunk_ms(self, done: Any, chunk: Any) -> Any:
        """Corrected variable cost of tokens [done, done+chunk); chunks still add up exactly."""
        self._ensure_fit()
        if not self._prefill_active:
            return self.base.prefill_chunk_ms(done, chunk)
        if _is_array(done) or _is_array(chunk):
            start = np.asarray(done, dtype=np.float64)
            end = start + np.asarray(chunk, dtype=np.float64)
            return self.ttft_ms(end) - self.ttft_ms(start)
        first = float(done)
        return self.ttft_ms(first + float(chunk)) - self.ttft_ms(first)

    # ----------------------------------------------------------------- decode

    @overload
    def itl_ms(self, batch: float, context: float) -> float: ...
    @overload
    def itl_ms(self, batch: ArrayLike | float, context: ArrayLike | float) -> np.ndarray: ...

    def itl_ms(self, batch: Any, context: Any) -> Any:
        """Corrected decode iteration for ``batch`` sequences of mean context ``context``."""
        base = self.base.itl_ms(batch, context)
        self._ensure_fit()
        if not self._decode_active:
            return base
        s, a0, a1, a2 = self._coef[_DECODE].tolist()
        b: np.ndarray | float
        c: np.ndarray | float
        if isinstance(base, np.ndarray):
            b = np.asarray(batch, dtype=np.float64)
            c = np.asarray(context, dtype=np.float64)
        else:
            b, c = float(batch), float(context)
        return self._clamp(s * base + a0 + a1 * b + a2 * b * c, base)

    @overload
    def decode_tokens_per_s(self, batch: float, context: float) -> float: ...
    @overload
    def decode_tokens_per_s(self, batch: ArrayLike | float, context: ArrayLike | float) -> np.ndarray: ...

    def decode_tokens_per_s(self, batch: Any, context: Any) -> Any:
        """Output tokens/s of one engine at the corrected ITL."""
        if _is_array(batch) or _is_array(context):
            b = np.asarray(batch, dtype=np.float64)
            return b * 1000.0 / self.itl_ms(b, np.asarray(context, dtype=np.float64))
        b1 = float(batch)
        return b1 * 1000.0 / self.itl_ms(b1, float(context))

    @overload
    def max_batch(self, context: float) -> float: ...
    @overload
    def max_batch(self, context: ArrayLike) -> np.ndarray: ...

    def max_batch(self, context: Any) -> Any:
        """KV capacity is a property of the engine, not of its speed: unchanged."""
        return self.base.max_batch(context)

    # ----------------------------------------------------------------- reporting

    def correction_summary(self) -> CorrectionSummary:
        """Coefficients, sample counts, fit error and the correction factor at profiled points."""
        self._ensure_fit()
        p = self.profile
        decode_factors: list[tuple[float, float, float]] = []
        contexts = np.unique(p.decode_context)
        for c in np.unique(contexts[[0, len(contexts) // 2, -1]]):
            batches = np.unique(p.decode_batch[p.decode_context == c])
            for b in np.unique(batches[[0, len(batches) // 2, -1]]):
                factor = self.itl_ms(float(b), float(c)) / self.base.itl_ms(float(b), float(c))
                decode_factors.append((float(b), float(c), float(factor)))
        isl = np.unique(p.prefill_isl)
        prefill_factors = [
            (float(x), float(self.ttft_ms(float(x)) / self.base.ttft_ms(float(x))))
            for x in np.unique(isl[[0, len(isl) // 2, -1]])
        ]
        return CorrectionSummary(
            decode_active=self._decode_active,
            prefill_active=self._prefill_active,
            samples_seen=dict(self._seen),
            samples_retained=sum(len(r) for r in self._bins.values()),
            bins_occupied=len(self._bins),
            decode_coefficients=dict(zip(_DECODE_NAMES, self._coef[_DECODE].tolist())),
            prefill_coefficients=dict(zip(_PREFILL_NAMES, self._coef[_PREFILL].tolist())),
            residual_rms=self._residual,
            decode_factors=decode_factors,
            prefill_factors=prefill_factors,
        )


def _is_array(x: Any) -> bool:
    """Sequences take the vectorised path, as in ``PerfModel``."""
    return isinstance(x, (np.ndarray, list, tuple))


class TtftCorrection:
    """How much slower (or faster) TTFT is than the capacity model predicts, learned online.

    Each steady window (enough requests, no replica starting or draining) gives the ratio of the
    p90 TTFT the entry pool showed to the p90 the model predicts at that window's rate, lengths
    and ready replicas. Its exponentially weighted mean in log space (``half_life`` windows),
    clamped to ``factor_range``, is the factor: sizing then asks the model for TTFT within
    ``SLA / factor``. This covers what the profile and the queueing approximation both miss
    (burstier arrivals, slower prefill, interference), without pretending to know which it is.
    Until ``min_windows`` windows were seen the factor is 1 (the profile is trusted).
    """

    def __init__(
        self, *, half_life: float = 10.0, min_windows: int = 5, factor_range: tuple[float, float] = (0.7, 3.0)
    ):
        lo, hi = factor_range
        if not (0 < lo <= 1 <= hi < math.inf) or half_life <= 0 or min_windows < 1:
            raise ValueError("need 0 < low <= 1 <= high, half_life > 0 and min_windows >= 1")
        self.factor_range = (float(lo), float(hi))
        self._keep = 0.5 ** (1.0 / half_life)
        self._min_windows = min_windows
        self._log_ratio = 0.0
        self._weight = 0.0
        self.windows = 0

    def observe(self, observed_p90_ms: float, predicted_p90_ms: float) -> None:
        """One steady window's observed and predicted p90 TTFT (both > 0)."""
        if not (observed_p90_ms > 0 and predicted_p90_ms > 0):
            raise ValueError("observed and predicted p90 TTFT must be > 0")
        lo, hi = self.factor_range
        ratio = math.log(min(max(observed_p90_ms / predicted_p90_ms, lo), hi))
        self._weight = self._keep * self._weight + 1.0
        self._log_ratio += (ratio - self._log_ratio) / self._weight
        self.windows += 1

    @property
    def trusted(self) -> bool:
        """Whether enough windows were seen for the factor to be in force."""
        return self.windows >= self._min_windows

    @property
    def factor(self) -> float:
        if not self.trusted:
            return 1.0
        lo, hi = self.factor_range
        return min(max(math.exp(self._log_ratio), lo), hi)
