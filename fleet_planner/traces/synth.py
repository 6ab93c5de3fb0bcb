"""Request-level traces synthesised from an aggregate rate series (e.g. ServeGen's 10-minute
windows), so a real multi-day load shape can be replayed with real request lengths."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from fleet_planner.errors import InputError
from fleet_planner.traces.readers import _cell_float, _columns, _read_csv, _Rows
from fleet_planner.traces.trace import MAX_TRACE_REQUESTS, Trace

ArrivalModel = Literal["auto", "clients", "poisson", "gamma"]
ARRIVAL_MODELS: tuple[str, ...] = ("auto", "clients", "poisson", "gamma")

# Bounds on a client's (or, for ``gamma``, the aggregate's) inter-arrival coefficient of variation.
# ServeGen's rate-weighted client CV reaches 30-55 in a few windows (one client's burst); beyond ~4
# a 10-minute window degenerates into a handful of giant bursts, so it is capped. The floor keeps
# the Gamma shape (1/cv^2) finite.
MAX_CV = 4.0
MIN_CV = 0.1
# The client model's two constants, fitted once to the real Azure 2023 conversation trace (see
# docs/simulator.md, "Arrivals", and benchmarks/bench_dispersion.py): a client's bursts (ON
# periods) last 30 s on average, and the clients other than the largest share the rest of the
# traffic with Zipf(1) weights (the 2nd client sends half what the 1st of the rest sends, ...).
CLIENT_ON_S = 30.0
CLIENT_ZIPF = 1.0

_START, _RATE, _CV = "window_start_s", "total_rate_rps", "rate_weighted_client_cv"
_CLIENTS, _TOP, _GAP = "n_active_clients", "top_client_share", "zero_rate_window"


@dataclass(frozen=True)
class RateSeries:
    """Aggregate request rate per window and, when the file has them, ServeGen's client columns.

    ``cv`` (each client's inter-arrival CV, rate-weighted), ``clients`` (active clients) and
    ``top_share`` (the largest client's share of the requests) are NaN where a collection gap
    left them blank; ``gap`` flags the windows the file marks ``zero_rate_window=1``.
    """

    window_start_s: np.ndarray
    window_s: np.ndarray
    rate_rps: np.ndarray
    cv: np.ndarray | None
    clients: np.ndarray | None
    top_share: np.ndarray | None
    gap: np.ndarray
    source: str

    @property
    def end_s(self) -> float:
        return float(self.window_start_s[-1] + self.window_s[-1])

    @property
    def has_clients(self) -> bool:
        return self.cv is not None and self.clients is not None and self.top_share is not None


def read_rate_series(path: str | Path) -> RateSeries:
    """Read ``window_start_s,total_rate_rps`` plus the optional ServeGen columns (others ignored).

    A window lasts until the next one starts; the last lasts as long as the one before it. In a
    window flagged ``zero_rate_window=1`` (a collection gap) blank cells are missing data: a blank
    rate counts as 0, a blank client cell as unknown. A blank cell anywhere else is an error.
    """
    path = Path(path)
    header, rows = _read_csv(path, None)
    _columns(path, header, rows, (_START, _RATE))  # both present, before any other check
    lines = rows.line_numbers
    gap = np.zeros(len(lines), dtype=bool)
    if _GAP in header:
        flags = _optional_column(path, rows, header, _GAP, gap)
        _check(path, _GAP, ~np.isin(flags, (0.0, 1.0)), flags, lines, "must be 0 or 1")
        gap = flags == 1.0
    starts = _optional_column(path, rows, header, _START, np.zeros_like(gap))
    rates = np.nan_to_num(_optional_column(path, rows, header, _RATE, gap), nan=0.0)
    if starts.size < 2:
        raise InputError("need at least two windows to know the window length", file=path)
    _check(path, _RATE, rates < 0, rates, lines, "must be >= 0")
    _check(
        path, _START, np.r_[False, np.diff(starts) <= 0], starts, lines, "must be greater than the previous window's"
    )
    optional: dict[str, np.ndarray | None] = {}
    for name, problem, bad in (
        (_CV, "must be >= 0", lambda v: v < 0),
        (_CLIENTS, "must be a whole number >= 0", lambda v: (v < 0) | (v != np.floor(v))),
        (_TOP, "must be within [0, 1]", lambda v: (v < 0) | (v > 1)),
    ):
        optional[name] = None
        if name in header:
            values = _optional_column(path, rows, header, name, gap)
            with np.errstate(invalid="ignore"):
                _check(path, name, bad(values) & ~np.isnan(values), values, lines, problem)
            optional[name] = values
    window = np.diff(starts, append=2 * starts[-1] - starts[-2])
    return RateSeries(
        window_start_s=starts,
        window_s=window,
        rate_rps=rates,
        cv=optional[_CV],
        clients=optional[_CLIENTS],
        top_share=optional[_TOP],
        gap=gap,
        source=str(path),
    )


def _optional_column(path: Path, rows: _Rows, header: list[str], name: str, blank_ok: np.ndarray) -> np.ndarray:
    """Finite floats; blank cells become NaN where ``blank_ok``, and are an error elsewhere."""
    raw = _columns(path, header, rows, (name,))[name]
    values = np.empty(len(raw), dtype=np.float64)
    for i, (cell, line) in enumerate(zip(raw, rows.line_numbers)):
        if not cell.strip():
            if not blank_ok[i]:
                where = "outside a zero_rate_window gap" if _GAP in header else "without a zero_rate_window column"
                raise InputError(f"blank cell {where}", file=path, field=f"line {line}: {name}")
            values[i] = math.nan
            continue
        values[i] = _cell_float(path, name, cell, line)
        if not math.isfinite(values[i]):
            raise InputError(f"must be finite (got {cell.strip()!r})", file=path, field=f"line {line}: {name}")
    return values


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
    """:func:`synthesize` from the rate series CSV at ``rate_path``."""
    return synthesize(
        read_rate_series(rate_path),
        lengths=lengths,
        peak_rps=peak_rps,
        rate_scale=rate_scale,
        start_s=start_s,
        duration_s=duration_s,
        seed=seed,
        arrival=arrival,
    )


def synthesize(
    series: RateSeries,
    *,
    lengths: Trace,
    peak_rps: float | None = None,
    rate_scale: float = 1.0,
    start_s: float = 0.0,
    duration_s: float | None = None,
    seed: int = 0,
    arrival: ArrivalModel = "auto",
) -> Trace:
    """A request trace following ``series`` over ``[start_s, start_s + duration_s)``.

    Arrival 0 of the result is series time ``start_s``; ``duration_s`` defaults to the rest of the
    series. ``peak_rps`` rescales the series so its maximum over that span equals it (absolute
    ServeGen rates are only a shape); ``rate_scale`` multiplies on top. Within each window:

    - ``clients`` (what ``auto`` picks when the file has ServeGen's client columns): the
      superposition of ``n_active_clients`` client streams, the largest sending ``top_client_share``
      of the window's requests, each a bursty ON/OFF Poisson stream whose inter-arrival CV is the
      window's per-client CV (see :func:`_client_arrivals`);
    - ``gamma`` (``auto`` with a CV column only): one Gamma renewal stream with the client CV
      applied to the aggregate, far burstier than real traffic: a deliberate stress;
    - ``poisson``: Poisson at the window's rate.

    A window whose client cells are missing (a collection gap) or that counts no client is Poisson
    at its rate. (input,
    output) lengths are drawn as pairs, with replacement, from ``lengths`` to keep their
    correlation; prefix ``hash_ids`` are dropped because resampled copies would invent cache hits.
    """
    if arrival not in ARRIVAL_MODELS:
        raise ValueError(f"arrival must be one of {', '.join(ARRIVAL_MODELS)}, got {arrival!r}")
    if peak_rps is not None and not (math.isfinite(peak_rps) and peak_rps > 0):
        raise ValueError(f"peak_rps must be finite and > 0, got {peak_rps!r}")
    if not (math.isfinite(rate_scale) and rate_scale > 0):
        raise ValueError(f"rate_scale must be finite and > 0, got {rate_scale!r}")
    if len(lengths) == 0:
        raise ValueError("lengths trace has no requests to sample from")

    path = Path(series.source)
    model = _arrival_model(series, arrival, path)
    inside, offsets, spans = _span(series, start_s, duration_s, path)
    rates = series.rate_rps[inside]
    if peak_rps is not None:
        if rates.max() <= 0:
            raise InputError("every rate in the selected span is 0; cannot rescale to a peak", file=path, field=_RATE)
        rates = rates * (peak_rps / rates.max())
    rates = rates * rate_scale
    with np.errstate(over="ignore"):  # a slipped peak (1e308) overflows to inf, refused just below
        expected = float(np.sum(rates * spans))
    if expected > MAX_TRACE_REQUESTS:
        raise InputError(
            f"the span would hold about {expected:.3g} requests at these rates, more than {MAX_TRACE_REQUESTS}",
            field="peak_rps / rate_scale",
        )

    rng = np.random.default_rng(seed)
    if model == "clients":
        assert series.cv is not None and series.clients is not None and series.top_share is not None
        with np.errstate(invalid="ignore"):
            known = ~(np.isnan(series.cv) | np.isnan(series.top_share) | ~(series.clients >= 1))[inside]
        arrivals = np.concatenate(
            [
                _client_arrivals(
                    rng,
                    offsets[known],
                    spans[known],
                    rates[known],
                    series.clients[inside][known].astype(np.int64),
                    series.top_share[inside][known],
                    np.clip(series.cv[inside][known], MIN_CV, MAX_CV),
                ),
                _poisson_arrivals(rng, offsets[~known], spans[~known], rates[~known]),
            ]
        )
    elif model == "gamma":
        assert series.cv is not None
        cv = series.cv[inside]
        known = ~np.isnan(cv)
        arrivals = np.concatenate(
            [
                _gamma_arrivals(rng, offsets[known], spans[known], rates[known], np.clip(cv[known], MIN_CV, MAX_CV)),
                _poisson_arrivals(rng, offsets[~known], spans[~known], rates[~known]),
            ]
        )
    else:
        arrivals = _poisson_arrivals(rng, offsets, spans, rates)
    arrivals.sort()
    pick = rng.integers(0, len(lengths), size=arrivals.size)
    return Trace(
        arrival_s=arrivals,
        input_tokens=lengths.input_tokens[pick],
        output_tokens=lengths.output_tokens[pick],
        source=f"synth({path.name}, {model}, lengths={lengths.source})",
    )


def _arrival_model(series: RateSeries, arrival: str, path: Path) -> str:
    """``auto`` resolved to what the file supports; an explicit model the file cannot feed is an error."""
    if arrival == "auto":
        return "clients" if series.has_clients else "gamma" if series.cv is not None else "poisson"
    if arrival == "gamma" and series.cv is None:
        raise InputError(f"gamma arrivals need a {_CV} column", file=path, field="header")
    if arrival == "clients" and not series.has_clients:
        raise InputError(f"client arrivals need the columns {_CLIENTS}, {_TOP} and {_CV}", file=path, field="header")
    return arrival


def _span(
    series: RateSeries, start_s: float, duration_s: float | None, path: Path
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Windows overlapping the span, and each one's offset from ``start_s`` and length inside it."""
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
    seg_start = np.maximum(series.window_start_s, start_s)
    seg_end = np.minimum(series.window_start_s + series.window_s, end_s)
    inside = seg_end > seg_start
    return inside, seg_start[inside] - start_s, seg_end[inside] - seg_start[inside]


def _check(path: Path, name: str, bad: np.ndarray, values: np.ndarray, lines: list[int], problem: str) -> None:
    """InputError at the first row flagged in ``bad``."""
    hits = np.flatnonzero(bad)
    if hits.size:
        i = int(hits[0])
        raise InputError(f"{problem} (got {values[i]:g})", file=path, field=f"line {lines[i]}: {name}")


def client_rates(rate: float, clients: int, top_share: float) -> np.ndarray:
    """Each client's rate in a window: the largest sends ``top_share`` (at least an equal share:
    it is the largest), the others share the rest with Zipf(:data:`CLIENT_ZIPF`) weights, never
    above the largest. A top share of 1 leaves the others nothing."""
    if clients <= 1:
        return np.array([rate])
    top_share = max(top_share, 1.0 / clients)
    weights = np.arange(1, clients, dtype=np.float64) ** -CLIENT_ZIPF
    rest = np.minimum(weights / weights.sum() * (1.0 - top_share), top_share)
    if rest.sum() > 0:
        rest *= (1.0 - top_share) / rest.sum()  # the cap moved share to smaller clients, not off the total
    return rate * np.r_[top_share, rest]


def _client_arrivals(
    rng: np.random.Generator,
    offsets: np.ndarray,
    spans: np.ndarray,
    rates: np.ndarray,
    clients: np.ndarray,
    top_share: np.ndarray,
    cv: np.ndarray,
) -> np.ndarray:
    """The superposition of every window's client streams.

    A client is an interrupted Poisson process: ON periods (mean :data:`CLIENT_ON_S`) at a high
    rate, OFF periods silent. Its inter-arrival times are hyperexponential with squared CV
    ``1 + 2 * rate * on * (1 - p)^2 / p`` for ON fraction ``p``; ``p`` is solved so that the CV is
    the window's client CV (a CV <= 1 gives a Poisson client). Unlike a Gamma renewal stream with a
    large CV, it is Poisson-like at second scale and bursty at minute scale, as real traffic is.
    """
    active = rates > 0
    offsets, spans, rates, top_share, cv = (a[active] for a in (offsets, spans, rates, top_share, cv))
    counts = np.maximum(clients[active], 1)
    if not rates.size:
        return np.empty(0)
    stream_rate = np.concatenate([client_rates(r, int(n), s) for r, n, s in zip(rates, counts, top_share)])
    window = np.repeat(np.arange(rates.size), counts)
    sending = stream_rate > 0  # clients a top share of 1 left silent send nothing
    stream_rate, window = stream_rate[sending], window[sending]
    x = np.maximum(cv[window] ** 2 - 1.0, 0.0) / (2.0 * stream_rate * CLIENT_ON_S)
    on_fraction = 2.0 / ((2.0 + x) + np.sqrt(x * (4.0 + x)))  # the root in (0, 1] of p^2 - (2 + x) p + 1
    return _ipp_arrivals(rng, offsets[window], spans[window], stream_rate, on_fraction)


def _ipp_arrivals(
    rng: np.random.Generator, offsets: np.ndarray, spans: np.ndarray, rates: np.ndarray, on_fraction: np.ndarray
) -> np.ndarray:
    """Interrupted Poisson streams, all at once, each started in its stationary state.

    Each stream draws a generous number of (ON, OFF) period pairs; the rare stream whose periods
    do not cover its span is redrawn with twice as many. Then each ON period clipped to the span
    gets a Poisson count of uniformly placed arrivals at ``rate / on_fraction``.
    """
    off_mean = CLIENT_ON_S * (1.0 - on_fraction) / on_fraction
    cycles = spans * on_fraction / CLIENT_ON_S
    budget = np.ceil(cycles + 5.0 * np.sqrt(cycles) + 3.0).astype(np.int64)
    starts: list[np.ndarray] = []
    lengths: list[np.ndarray] = []
    owners: list[np.ndarray] = []
    pending = np.arange(rates.size)
    while pending.size:
        n = budget[pending]
        first = np.cumsum(n) - n
        owner = np.repeat(pending, n)
        on = rng.exponential(CLIENT_ON_S, owner.size)
        off = rng.exponential(1.0, owner.size) * off_mean[owner]
        # Stationary start: ON with probability on_fraction, else a (memoryless) OFF residual first.
        lead = np.where(rng.random(pending.size) < on_fraction[pending], 0.0, rng.exponential(1.0, pending.size))
        lead *= off_mean[pending]
        end = np.cumsum(on + off)
        base = np.repeat(end[first] - (on + off)[first] - lead, n)
        begin = end - (on + off) - base
        covered = (end - base)[first + n - 1] >= spans[pending]
        take = np.repeat(covered, n) & (begin < spans[owner])
        starts.append(begin[take])
        lengths.append(np.minimum(begin[take] + on[take], spans[owner[take]]) - begin[take])
        owners.append(owner[take])
        pending = pending[~covered]
        budget[pending] *= 2
    begin, length, owner = np.concatenate(starts), np.concatenate(lengths), np.concatenate(owners)
    counts = rng.poisson(rates[owner] / on_fraction[owner] * length)
    return np.repeat(offsets[owner] + begin, counts) + rng.random(int(counts.sum())) * np.repeat(length, counts)


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
