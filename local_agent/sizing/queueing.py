"""Closed-form queueing pieces shared by the pool models, vectorised over replica counts.

Everything here works on arrays shaped ``(replica counts,)`` or ``(replica counts, points)`` so
that one call evaluates a whole demand curve; nothing loops over N in Python.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

import numpy as np

_SQRT2 = np.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / np.sqrt(2.0 * np.pi)
# Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7): numpy has no erf and scipy is not a dependency.
_P = 0.3275911
_A = (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)


def norm_cdf(x: np.ndarray) -> np.ndarray:
    """Standard normal CDF, elementwise."""
    z = np.abs(x) / _SQRT2
    t = 1.0 / (1.0 + _P * z)
    poly = t * (_A[0] + t * (_A[1] + t * (_A[2] + t * (_A[3] + t * _A[4]))))
    upper = 0.5 * poly * np.exp(-z * z)  # P(Z > |x|)
    return np.where(x >= 0, 1.0 - upper, upper)


def norm_pdf(x: np.ndarray) -> np.ndarray:
    return _INV_SQRT_2PI * np.exp(-0.5 * x * x)


def halfin_whitt_wait_probability(slots: np.ndarray | float, offered: np.ndarray) -> np.ndarray:
    """P(an arrival must wait) in an M/M/c queue (Erlang C), Halfin–Whitt approximation.

    ``slots`` are the concurrent sequences the engine admits (KV cache or ``max_num_seqs``),
    ``offered`` the mean number that would run without a cap. 1 when the cap is not above it.
    """
    offered = np.maximum(offered, 1e-12)
    beta = (slots - offered) / np.sqrt(offered)
    safe = np.clip(beta, 1e-9, 30.0)
    prob = 1.0 / (1.0 + safe * norm_cdf(safe) / norm_pdf(safe))
    return np.where(beta <= 0, 1.0, np.where(beta >= 30.0, 0.0, prob))


def erlang_c(servers: np.ndarray, offered: np.ndarray) -> np.ndarray:
    """P(an arrival waits) in an M/M/c queue with ``servers`` c and ``offered`` load a = lambda
    E[S], exactly (Erlang B in log space, then Erlang C); 1 where a >= c.

    Both arrays are per row; the sum over k <= c is one masked (rows, max c + 1) log-sum-exp.
    """
    servers = np.asarray(servers, dtype=np.float64)
    top = int(servers.max()) if servers.size else 0
    k = np.arange(top + 1, dtype=np.float64)
    log_fact = np.concatenate(([0.0], np.cumsum(np.log(np.maximum(k[1:], 1.0)))))
    positive = offered > 0
    log_a = np.log(np.where(positive, offered, 1.0))
    terms = k[None, :] * log_a[:, None] - log_fact[None, :]
    terms = np.where(k[None, :] <= servers[:, None], terms, -np.inf)
    peak = terms.max(axis=1)
    log_sum = peak + np.log(np.exp(terms - peak[:, None]).sum(axis=1))
    own = servers * log_a - log_fact[servers.astype(np.int64)]
    blocking = np.exp(own - log_sum)
    rho = offered / np.maximum(servers, 1.0)
    waiting = blocking / np.maximum(1.0 - rho * (1.0 - blocking), 1e-300)
    return np.where(rho >= 1.0, 1.0, np.where(positive, np.clip(waiting, 0.0, 1.0), 0.0))


def first_root(grid: np.ndarray, gap: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Smallest root of each row of ``gap`` (sampled at ``grid``, negative at grid[0]).

    Returns ``(root, segment, found)``: the root by linear interpolation, the index ``j`` of the
    grid point just above it, and whether a sign change exists. The first crossing is the stable
    operating point of a Little's-law fixed point reached from an empty engine.
    """
    crossed = gap >= 0
    found = crossed.any(axis=1)
    j = np.where(found, np.argmax(crossed, axis=1), 1)
    j = np.maximum(j, 1)
    rows = np.arange(gap.shape[0])
    g0, g1 = gap[rows, j - 1], gap[rows, j]
    frac = np.clip(-g0 / np.where(g1 > g0, g1 - g0, 1.0), 0.0, 1.0)
    root = grid[j - 1] + frac * (grid[j] - grid[j - 1])
    return np.where(found, root, np.inf), j, np.asarray(found)


def exp_tail_met(lo: np.ndarray, hi: np.ndarray, rho: np.ndarray, decay: np.ndarray) -> np.ndarray:
    """P(W <= x) averaged over x uniform on ``[lo, hi]``, for a queueing wait W with an atom
    ``1 - rho`` at 0 and tail ``rho * exp(-decay t)``.

    Slacks of a sample are summarised by equal-count groups (see ``groups``) and integrated
    exactly within each, which keeps the sample's tail (the share with negative slack) sharp
    at a fraction of the cost of one term per request.
    """
    width = hi - lo
    start = np.maximum(lo, 0.0)
    length = np.maximum(hi - start, 0.0)
    positive = np.where(width > 0, length / np.where(width > 0, width, 1.0), lo >= 0)
    span = decay * length
    big = span > 1e-9
    average = np.where(big, -np.expm1(-span) / np.where(big, span, 1.0), 1.0 - 0.5 * span)
    return positive * (1.0 - rho * np.exp(-decay * start) * average)


@lru_cache(maxsize=64)
def groups(count: int, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Equal-count groups over ``size`` sorted items: (first index, last index, weight).
    Cached (arrays read-only): the sizing asks for the same few counts and sizes every call."""
    found = groups_at(np.linspace(0.0, 1.0, max(1, min(count, size)) + 1), size)
    for column in found:
        column.setflags(write=False)
    return found


def groups_at(edges: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Groups of ``size`` sorted items between quantile ``edges`` (0 ... 1), empty ones dropped:
    (first index, last index, weight)."""
    bounds = np.unique((np.asarray(edges) * size).round().astype(np.int64))
    return bounds[:-1], bounds[1:] - 1, np.diff(bounds) / size


def group_means(values: np.ndarray, count: int, keep_order: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Sorted values compressed to at most ``count`` equal-count group means and their weights,
    so per-request terms cost O(count) per replica count instead of O(sample). ``keep_order``:
    group the values in the order given, not sorted (the order of another array that is, so the
    groups are that array's)."""
    if values.size == 0:
        return values, values
    ordered = values if keep_order or np.all(values[1:] >= values[:-1]) else np.sort(values)
    first, last, weights = groups(count, ordered.size)
    return np.add.reduceat(ordered, first) / (last - first + 1), weights


def quantile_bisect(
    cdf: Callable[[np.ndarray], np.ndarray],
    lo: np.ndarray,
    hi: np.ndarray,
    q: float,
    iterations: int = 12,
) -> np.ndarray:
    """Per-row quantile of a monotone CDF known to cross ``q`` within ``[lo, hi]``, by
    vectorised bisection (to 1/4096 of the bracket: plenty for a reported p90).

    ``cdf`` maps a ``(rows,)`` array of candidate values to ``(rows,)`` probabilities.
    """
    lo, hi = lo.astype(np.float64), hi.astype(np.float64)
    for _ in range(iterations):
        mid = 0.5 * (lo + hi)
        below = cdf(mid) < q
        lo = np.where(below, mid, lo)
        hi = np.where(below, hi, mid)
    return 0.5 * (lo + hi)
