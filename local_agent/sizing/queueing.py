"""Closed-form queueing pieces shared by the pool models, vectorised over replica counts.

Everything here works on arrays shaped ``(replica counts,)`` or ``(replica counts, points)`` so
that one call evaluates a whole demand curve; nothing loops over N in Python.
"""

from __future__ import annotations

from collections.abc import Callable

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


def window_variance_ratio(x: np.ndarray) -> np.ndarray:
    """Var(time average over a window) / Var(instantaneous) for an exponentially correlated
    process, with the window ``x`` times the correlation time: 2 (x - 1 + e^-x) / x^2.

    A request's ITL is its mean iteration time, so batch-size noise partly averages out over
    long decodes; short ones see the full instantaneous spread (ratio -> 1 as x -> 0).
    """
    x = np.maximum(x, 1e-9)
    small = x < 1e-3
    ratio = 2.0 * (x - 1.0 + np.exp(-x)) / np.where(small, 1.0, x * x)
    return np.where(small, 1.0 - x / 3.0, ratio)


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
    return np.where(found, root, np.inf), j, found


def exp_tail_cdf(y: np.ndarray, rho: np.ndarray, decay: np.ndarray) -> np.ndarray:
    """P(W <= y) for a queueing wait with an atom 1 - rho at 0 and tail rho * exp(-decay * y)."""
    return np.where(y >= 0, 1.0 - rho * np.exp(-decay * np.maximum(y, 0.0)), 0.0)


def exp_tail_decay(rho: np.ndarray, mean_wait: np.ndarray) -> np.ndarray:
    """Decay rate whose tail ``rho * exp(-decay t)`` has mean ``mean_wait``; inf when no wait."""
    return np.where(mean_wait > 0, rho / np.where(mean_wait > 0, mean_wait, 1.0), np.inf)


def group_means(values: np.ndarray, groups: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted values compressed to at most ``groups`` equal-count group means and their weights,
    so per-request terms cost O(groups) per replica count instead of O(sample)."""
    ordered = np.sort(values)
    if ordered.size <= groups:
        return ordered, np.full(ordered.size, 1.0 / max(ordered.size, 1))
    edges = np.linspace(0, ordered.size, groups + 1).round().astype(np.int64)
    sums = np.add.reduceat(ordered, edges[:-1])
    counts = np.diff(edges)
    return sums / counts, counts / ordered.size


def quantile_bisect(
    cdf: Callable[[np.ndarray], np.ndarray],
    lo: np.ndarray,
    hi: np.ndarray,
    q: float,
    iterations: int = 40,
) -> np.ndarray:
    """Per-row quantile of a monotone CDF by vectorised bisection between ``lo`` and ``hi``.

    ``cdf`` maps a ``(rows,)`` array of candidate values to ``(rows,)`` probabilities.
    """
    lo, hi = lo.astype(np.float64).copy(), hi.astype(np.float64).copy()
    for _ in range(iterations):
        mid = 0.5 * (lo + hi)
        below = cdf(mid) < q
        lo = np.where(below, mid, lo)
        hi = np.where(below, hi, mid)
    return hi
