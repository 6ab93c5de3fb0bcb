"""Request-level traces synthesised from an aggregate rate series (e.g. ServeGen's 10-minute
windows), so a real multi-day load shape can be replayed with real request lengths."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from fleet_planner.errors import InputError
from fleet_planner.traces.readers import _columns, _float_column, _read_csv
from fleet_planner.traces.trace import Trace

ArrivalModel = Literal["auto", "poisson", "gamma"]
ARRIVAL_MODELS: tuple[str, ...] = ("auto", "poisson", "gamma")

# Bounds on a window's inter-arrival coefficient of variation. ServeGen's rate-weighted client CV
# reaches 30-55 in a few windows (one client's burst); beyond ~4 a 10-minute window degenerates
# into a handful of giant bursts, so it is capped. The floor keeps the Gamma shape (1/cv^2) finite.
MAX_CV = 4.0
MIN_CV = 0.1

_START, _RATE, _CV = "window_start_s", "total_rate_rps", "rate_weighted_client_cv"


@dataclass(frozen=True)
class RateSeries:
    """Aggregate request rate per window; ``cv`` is each window's arrival CV when the file has it."""

    window_start_s: np.ndarray
    window_s: np.ndarray
    rate_rps: np.ndarray
    cv: np.ndarray | None
    source: str

    @property
    def end_s(self) -> float:
        return float(self.window_start_s[-1] + self.window_s[-1])


def read_rate_series(path: str | Path) -> RateSeries:
    """Read ``window_start_s,total_rate_rps[,rate_weighted_client_cv]`` (extra columns ignored).

    A window lasts until the next one starts; the last lasts as long as the one before it.
    """
    path = Path(path)
    header, rows = _read_csv(path)
    cols = _columns(path, header, rows, (_START, _RATE))
    lines = rows.line_numbers
    starts = _float_column(path, _START, cols[_START], lines)
    rates = _float_column(path, _RATE, cols[_RATE], lines)
    if starts.size < 2:
        raise InputError("need at least two windows to know the window length", file=path)
    _check(path, _RATE, rates < 0, rates, lines, "must be >= 0")
    _check(
        path, _START, np.r_[False, np.diff(starts) <= 0], starts, lines, "must be greater than the previous window's"
    )
    cv = None
    if _CV in header:
        cv = _float_column(path, _CV, _columns(path, header, rows, (_CV,))[_CV], lines)
        _check(path, _CV, cv < 0, cv, lines, "must be >= 0")
    window = np.diff(starts, append=2 * starts[-1] - starts[-2])
    return RateSeries(window_start_s=starts, window_s=window, rate_rps=rates, cv=cv, source=str(path))


def synthesize_from_rates(
    rate_path: str | Path,
    *,
    lengths: Trace,
    peak_rps: float | None = None,
    rate_scale: float = 1.0,
    start_s: float = 0.0,
    duration_s: float | None = None,
    seed: int = 0,
    arrival: ArrivalModel = "auto",
) -> Trace:
    """A request trace following the rate series in ``rate_path`` over ``[start_s, start_s + duration_s)``.

    Arrival 0 of the result is series time ``start_s``; ``duration_s`` defaults to the rest of the
    series. ``peak_rps`` rescales the series so its maximum over that span equals it (absolute
    ServeGen rates are only a shape); ``rate_scale`` multiplies on top. Within each window arrivals
    are Poisson at the window's rate, or, when the file has a CV column and ``arrival`` is
    ``"gamma"`` or ``"auto"``, a stationary Gamma renewal process with that CV (clipped to
    [MIN_CV, MAX_CV]); a per-client CV applied to the aggregate overstates its burstiness, which
    makes it a conservative stress. (input, output) lengths are drawn as pairs, with replacement,
    from ``lengths`` to keep their correlation; prefix ``hash_ids`` are dropped because resampled
    copies would invent cache hits.
    """
    if arrival not in ARRIVAL_MODELS:
        raise ValueError(f"arrival must be one of {', '.join(ARRIVAL_MODELS)}, got {arrival!r}")
    if peak_rps is not None and not (math.isfinite(peak_rps) and peak_rps > 0):
        raise ValueError(f"peak_rps must be finite and > 0, got {peak_rps!r}")
    if not (math.isfinite(rate_scale) and rate_scale > 0):
        raise ValueError(f"rate_scale must be finite and > 0, got {rate_scale!r}")
    if len(lengths) == 0:
        raise ValueError("lengths trace has no requests to sample from")

    series = read_rate_series(rate_path)
    path = Path(rate_path)
    first = float(series.window_start_s[0])
    if not (math.isfinite(start_s) and first <= start_s < series.end_s):
        raise InputError(
            f"start {start_s!r} s is outside the series [{first:.0f}, {series.end_s:.0f}) s", file=path, field="start_s"
        )
    end_s = series.end_s if duration_s is None else start_s + duration_s
    if not (math.isfinite(end_s) and start_s < end_s <= series.end_s):
        raise InputError(
            f"span must be > 0 and end by the series end {series.end_s:.0f} s (got end {end_s!r} s)",
            file=path,
            field="duration_s",
        )
    cv = None if arrival == "poisson" else series.cv
    if arrival == "gamma" and cv is None:
        raise InputError(f"gamma arrivals need a {_CV} column", file=path, field="header")

    seg_start = np.maximum(series.window_start_s, start_s)
    seg_end = np.minimum(series.window_start_s + series.window_s, end_s)
    inside = seg_end > seg_start
    rates = series.rate_rps[inside]
    if peak_rps is not None:
        if rates.max() <= 0:
            raise InputError("every rate in the selected span is 0; cannot rescale to a peak", file=path, field=_RATE)
        rates = rates * (peak_rps / rates.max())
    rates = rates * rate_scale
    offsets = seg_start[inside] - start_s
    spans = seg_end[inside] - seg_start[inside]

    rng = np.random.default_rng(seed)
    if cv is not None:
        arrivals = _gamma_arrivals(rng, offsets, spans, rates, np.clip(cv[inside], MIN_CV, MAX_CV))
    else:
        arrivals = _poisson_arrivals(rng, offsets, spans, rates)
    arrivals.sort()
    pick = rng.integers(0, len(lengths), size=arrivals.size)
    return Trace(
        arrival_s=arrivals,
        input_tokens=lengths.input_tokens[pick],
        output_tokens=lengths.output_tokens[pick],
        source=f"synth({path.name}, lengths={lengths.source})",
    )


def _check(path: Path, name: str, bad: np.ndarray, values: np.ndarray, lines: list[int], problem: str) -> None:
    """InputError at the first row flagged in ``bad``."""
    hits = np.flatnonzero(bad)
    if hits.size:
        i = int(hits[0])
        raise InputError(f"{problem} (got {values[i]:g})", file=path, field=f"line {lines[i]}: {name}")


def _poisson_arrivals(
    rng: np.random.Generator, offsets: np.ndarray, spans: np.ndarray, rates: np.ndarray
) -> np.ndarray:
    """Poisson count per window, then uniform instants within it (exactly a Poisson process)."""
    counts = rng.poisson(rates * spans)
    return np.repeat(offsets, counts) + rng.random(int(counts.sum())) * np.repeat(spans, counts)


def _gamma_arrivals(
    rng: np.random.Generator, offsets: np.ndarray, spans: np.ndarray, rates: np.ndarray, cv: np.ndarray
) -> np.ndarray:
    """Stationary Gamma renewal process per window, all windows at once.

    The first arrival is the forward recurrence time ``U * Gamma(k + 1, theta)`` (a length-biased
    gap cut uniformly), so each window's expected count is exactly ``rate * span``. Each window
    draws a generous number of gaps; the rare window whose gaps do not reach its end is redrawn
    with twice as many.
    """
    active = np.flatnonzero(rates > 0)
    shape = 1.0 / cv[active] ** 2
    scale = 1.0 / (rates[active] * shape)
    spans = spans[active]
    expected = rates[active] * spans
    budget = np.ceil(expected + 6.0 * cv[active] * np.sqrt(expected) + 10.0).astype(np.int64)
    pieces: list[np.ndarray] = []
    pending = np.arange(active.size)
    while pending.size:
        n = budget[pending]
        first = np.cumsum(n) - n
        gaps = rng.gamma(np.repeat(shape[pending], n), np.repeat(scale[pending], n))
        gaps[first] = rng.random(pending.size) * rng.gamma(shape[pending] + 1.0, scale[pending])
        elapsed = np.cumsum(gaps)
        elapsed -= np.repeat(elapsed[first] - gaps[first], n)
        covered = elapsed[first + n - 1] >= spans[pending]
        keep = np.repeat(covered, n) & (elapsed < np.repeat(spans[pending], n))
        pieces.append(elapsed[keep] + np.repeat(offsets[active[pending]], n)[keep])
        pending = pending[~covered]
        budget[pending] *= 2
    return np.concatenate(pieces) if pieces else np.empty(0)
