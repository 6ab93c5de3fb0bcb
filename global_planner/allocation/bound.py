"""A proven upper bound on the allocation objective, from Lagrangian duality — no solver needed.

Price every GPU type's budget (``lambda_g >= 0``), every tenant cap (``mu_c >= 0``) and every
tenant floor (``nu_c >= 0``). A (tenant, type) group's GPUs then cost
``pi_c = lambda_g + mu_c - nu_c`` each, and for *any* such prices weak duality gives

    optimum <= sum_g lambda_g * B_g + sum_c (mu_c * cap_c - nu_c * floor_c)
               + sum_units max over the unit's choices of (value - sum_members pi * GPUs)

The inner maximum is exact, not relaxed: for each level row of a unit
(:mod:`global_planner.allocation.frontier`) each member takes the cheapest hull count at or above
the row's count under ``churn * |x - current| + cut * max(0, anchor - x) + pi * GPUs`` (a suffix
minimum), so every replica vector the model allows, costs of change and negative prices
included, is covered. The bound is therefore
valid whatever prices are used; good prices make it tight.

Prices come from the convex-hull relaxation of each unit, which is a concave separable problem
over nested constraints (type budget > tenant cap/floor > unit): for a type price ``lambda`` a
group's price is ``clamp(lambda, cap price, floor price)``, and ``lambda`` is the smallest price
at which the type's demand fits its budget — a binary search over the hull slopes. Those are the
optimal duals of that relaxation (for units whose pools share a tenant and type; others are
priced through their first pool, which only loosens the bound).
"""

from __future__ import annotations

import math
from bisect import bisect_left

import numpy as np

from global_planner.allocation.frontier import Frontier


class _Group:
    """One (tenant, type)'s demand curve: GPUs it wants as a function of the price per GPU."""

    def __init__(self, base: int, slopes: list[float], widths: list[int], cap: int | None, floor: int | None):
        order = sorted(range(len(slopes)), key=lambda s: -slopes[s])
        self.neg = [-slopes[s] for s in order]  # ascending
        self.cum = [0]
        for s in order:
            self.cum.append(self.cum[-1] + widths[s])
        self.base = base
        self.cap_price = -math.inf
        # A cap the group's minimum alone passes, with nothing above it to price: no price moves
        # its demand, so none is set (any price keeps the bound valid).
        if cap is not None and self.neg and base + self.cum[-1] > cap:
            n = bisect_left(self.cum, cap - base + 1) - 1  # most segments that fit under the cap
            self.cap_price = -self.neg[max(n, 0)]
        self.floor_price = math.inf
        if floor is not None and floor > base and base + self.cum[-1] >= floor:
            n = bisect_left(self.cum, floor - base)  # fewest segments reaching the floor
            self.floor_price = -self.neg[n - 1]

    def price(self, type_price: float) -> float:
        return min(max(type_price, self.cap_price), self.floor_price)

    def demand(self, price: float) -> int:
        """GPUs wanted at ``price``: every segment paying strictly more than it."""
        return self.base + self.cum[bisect_left(self.neg, -price)]


def dual_prices(frontier: Frontier) -> tuple[dict[str, float], list[float]]:
    """Type prices and group prices (per ``frontier.groups`` index)."""
    problem = frontier.problem
    n_groups = len(frontier.groups)
    gpus, value = frontier.row_gpus.tolist(), frontier.row_value.tolist()
    base = [0] * n_groups
    slopes: list[list[float]] = [[] for _ in range(n_groups)]
    widths: list[list[int]] = [[] for _ in range(n_groups)]
    pool_group = frontier.pool_group.tolist()
    starts = frontier.row_start.tolist()
    for k, unit in enumerate(problem.units):
        c = pool_group[unit.members[0]]
        hull = frontier.hull_rows[k]
        base[c] += gpus[starts[k]]
        for a, b in zip(hull, hull[1:]):
            slopes[c].append((value[b] - value[a]) / (gpus[b] - gpus[a]))
            widths[c].append(gpus[b] - gpus[a])
    groups = [
        _Group(base[c], slopes[c], widths[c], problem.caps.get(key), problem.floors.get(key))
        for c, key in enumerate(frontier.groups)
    ]
    type_price: dict[str, float] = {}
    group_price = [0.0] * n_groups
    by_type: dict[str, list[int]] = {}
    for c, (_, gpu) in enumerate(frontier.groups):
        by_type.setdefault(gpu, []).append(c)
    for gpu, members in sorted(by_type.items()):
        budget = problem.budget.get(gpu, 0)
        candidates = sorted({0.0, *(s for c in members for s in slopes[c] if s > 0)})

        def demand(price: float, members: list[int] = members) -> int:
            return sum(groups[c].demand(groups[c].price(price)) for c in members)

        low, high = 0, len(candidates) - 1
        while low < high:  # smallest candidate price at which the type's demand fits
            mid = (low + high) // 2
            if demand(candidates[mid]) <= budget:
                high = mid
            else:
                low = mid + 1
        type_price[gpu] = candidates[low]
        for c in members:
            group_price[c] = groups[c].price(candidates[low])
    return type_price, group_price


def dual_bound(frontier: Frontier, type_price: dict[str, float], group_price: list[float]) -> float:
    """Weak-duality upper bound on the scaled value (value minus churn) for the given prices."""
    problem = frontier.problem
    plans = problem.pools
    n_pools = len(plans)
    if n_pools == 0:
        return 0.0
    price = np.asarray(group_price, dtype=float)[frontier.pool_group]
    gpr = np.fromiter((p.pool.gpus_per_replica for p in plans), dtype=float, count=n_pools)
    churn = np.fromiter((p.churn for p in plans), dtype=float, count=n_pools)
    current = np.fromiter((p.pool.current_replicas for p in plans), dtype=float, count=n_pools)
    counts = frontier.counts_pad.astype(float)
    cut = np.fromiter((p.cut for p in plans), dtype=float, count=n_pools)
    anchor = np.fromiter((p.anchor for p in plans), dtype=float, count=n_pools)
    cost = (
        churn[:, None] * np.abs(counts - current[:, None])
        + cut[:, None] * np.maximum(anchor[:, None] - counts, 0.0)
        + (price * gpr)[:, None] * counts
    )
    suffix = np.minimum.accumulate(cost[:, ::-1], axis=1)[:, ::-1]
    suffix = np.vstack([suffix, np.zeros((1, suffix.shape[1]))])  # row n_pools: empty slot, free
    slot_pool = np.where(frontier.slot_pool >= 0, frontier.slot_pool, n_pools)
    weight = np.fromiter((u.weight for u in problem.units), dtype=float, count=len(problem.units))
    inner = weight[frontier.row_unit] * frontier.row_reached - suffix[slot_pool, frontier.slot_j].sum(axis=1)
    total = float(np.maximum.reduceat(inner, frontier.row_start[:-1]).sum())
    total += sum(type_price.get(gpu, 0.0) * budget for gpu, budget in problem.budget.items())
    for c, key in enumerate(frontier.groups):
        gpu_price = type_price.get(key[1], 0.0)
        if group_price[c] > gpu_price and key in problem.caps:
            total += (group_price[c] - gpu_price) * problem.caps[key]
        elif group_price[c] < gpu_price and key in problem.floors:
            total -= (gpu_price - group_price[c]) * problem.floors[key]
    return total


def upper_bound(frontier: Frontier) -> float:
    """A proven upper bound on ``Problem.value`` over every allocation the model allows."""
    type_price, group_price = dual_prices(frontier)
    bound = dual_bound(frontier, type_price, group_price)
    return math.ceil(bound + 1e-9 * abs(bound))
