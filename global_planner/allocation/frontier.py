"""Per-unit value frontiers: the structure the greedy and the dual bound share.

A *unit* (a lone pool or a prefill/decode pair worth ``weight * min`` of its pools) is reduced to
its **level rows**: for each attainment level any member can reach, every member at the smallest
hull count reaching it. Without churn these rows are exactly the unit's Pareto frontier of
(GPUs, value) — any other choice of counts reaches the same ``min`` with more GPUs — and their
upper concave hull in GPUs is the convex hull of everything the unit can do. A pair's ``min`` is
not concave in its total GPUs, so the hull is taken over the rows, not over each pool: this
makes the greedy a true marginal-gain greedy on units and the dual bound as tight as the
convex-hull (Lagrangian) relaxation of each unit.

Everything is computed with numpy over flattened arrays, once per problem; the only Python loop
is the hull walk over the (few) rows of each unit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from global_planner.allocation.problem import Problem, TenantType

_KEY = 1 << 16  # > ATT_SCALE: pool index * _KEY + value sorts pool by pool, value by value


@dataclass
class Frontier:
    """Flattened level rows and unit hulls of one problem.

    Rows are grouped by unit (``row_start[k]:row_start[k + 1]``) in increasing level; only rows
    that raise the unit's reached level are kept, so GPUs strictly increase along a unit's rows.
    ``slot_pool``/``slot_j`` give, for each row and member slot, the pool and its hull index
    (``-1``/``0`` for empty slots of units with fewer members).
    """

    problem: Problem
    groups: list[TenantType]  # (tenant, gpu type) of each group index
    pool_group: np.ndarray  # group index of each pool
    slot_pool: np.ndarray  # (rows, slots)
    slot_j: np.ndarray  # (rows, slots)
    row_unit: np.ndarray
    row_start: np.ndarray  # (units + 1,)
    row_reached: np.ndarray  # scaled attainment reached (min over members)
    row_gpus: np.ndarray  # GPUs of all members, all types together
    row_value: np.ndarray  # weight * reached - cost of change (churn and cut)
    hull_rows: list[list[int]]  # per unit: row indices of the upper concave hull, ascending GPUs
    counts_pad: np.ndarray  # (pools, kmax) hull counts, padded with the last count
    width: np.ndarray  # (pools,) number of hull counts


@dataclass(frozen=True)
class _Flat:
    """Every pool's hull window, flattened: pool ``i`` owns ``offsets[i]:offsets[i + 1]``."""

    offsets: np.ndarray
    values: np.ndarray
    counts: np.ndarray
    keys: np.ndarray  # pool * _KEY + value: sorted pool by pool, value by value
    lengths: np.ndarray


def _flatten(problem: Problem) -> _Flat:
    plans = problem.pools
    n_pools = len(plans)
    lengths = np.fromiter((len(p.counts) for p in plans), dtype=np.int64, count=n_pools)
    offsets = np.zeros(n_pools + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    values = np.fromiter((v for p in plans for v in p.values), dtype=np.int64, count=int(offsets[-1]))
    counts = np.fromiter((c for p in plans for c in p.counts), dtype=np.int64, count=int(offsets[-1]))
    flat_pool = np.repeat(np.arange(n_pools, dtype=np.int64), lengths)
    return _Flat(offsets, values, counts, flat_pool * _KEY + values, lengths)


def _padded_counts(flat: _Flat) -> np.ndarray:
    """(pools, widest window) hull counts, each row padded with its last count."""
    n_pools = flat.lengths.size
    kmax = int(flat.lengths.max()) if n_pools else 1
    flat_pool = np.repeat(np.arange(n_pools, dtype=np.int64), flat.lengths)
    column = np.arange(flat.counts.size) - flat.offsets[flat_pool]
    padded = np.empty((n_pools, kmax), dtype=np.int64)
    padded[:] = (flat.counts[flat.offsets[1:] - 1] if n_pools else flat.counts)[:, None]
    padded[flat_pool, column] = flat.counts
    return padded


def _unit_members(problem: Problem) -> np.ndarray:
    """(units, widest unit) pool indices, ``-1`` in empty slots."""
    units = problem.units
    slots = max((len(u.members) for u in units), default=1)
    members = np.full((len(units), slots), -1, dtype=np.int64)
    for k, unit in enumerate(units):
        members[k, : len(unit.members)] = unit.members
    return members


@dataclass(frozen=True)
class _Rows:
    unit: np.ndarray  # unit of each row
    pools: np.ndarray  # (rows, slots) member pools, -1 in empty slots
    found: np.ndarray  # (rows, slots) flat index of each member's hull count
    reached: np.ndarray  # level reached (min over members)


def _level_rows(flat: _Flat, members: np.ndarray) -> _Rows:
    """For every level any member of a unit reaches, each member at its smallest hull count
    reaching it; rows some member cannot reach, and rows not raising the reached level, go."""
    n_pools = flat.lengths.size
    flat_pool = np.repeat(np.arange(n_pools, dtype=np.int64), flat.lengths)
    unit_of_pool = np.empty(n_pools, dtype=np.int64)
    valid = members >= 0
    unit_of_pool[members[valid]] = np.nonzero(valid)[0]
    level_unit = unit_of_pool[flat_pool]
    order = np.lexsort((flat.values, level_unit))
    level_unit, level = level_unit[order], flat.values[order]
    fresh = np.ones(level.size, dtype=bool)
    fresh[1:] = (level_unit[1:] != level_unit[:-1]) | (level[1:] != level[:-1])
    level_unit, level = level_unit[fresh], level[fresh]

    pools_of_row = members[level_unit]
    present = pools_of_row >= 0
    safe_pool = np.where(present, pools_of_row, 0)
    found = np.searchsorted(flat.keys, safe_pool * _KEY + level[:, None], side="left")
    reachable = np.all((found < flat.offsets[safe_pool + 1]) | ~present, axis=1)
    level_unit, pools_of_row, present, found = (
        level_unit[reachable],
        pools_of_row[reachable],
        present[reachable],
        found[reachable],
    )
    top = np.iinfo(np.int64).max
    reached = np.where(present, flat.values[np.minimum(found, flat.values.size - 1)], top).min(axis=1)
    keep = np.ones(reached.size, dtype=bool)
    keep[1:] = (level_unit[1:] != level_unit[:-1]) | (reached[1:] > reached[:-1])
    return _Rows(level_unit[keep], pools_of_row[keep], found[keep], reached[keep])


def build_frontier(problem: Problem) -> Frontier:
    """Level rows of every unit, their GPUs and value (change costs included), and their hulls."""
    plans = problem.pools
    n_pools = len(plans)
    flat = _flatten(problem)
    rows = _level_rows(flat, _unit_members(problem))
    present = rows.pools >= 0
    safe_pool = np.where(present, rows.pools, 0)

    def per_pool(attribute: str) -> np.ndarray:
        return np.fromiter((getattr(p, attribute) for p in plans), dtype=np.int64, count=n_pools)[safe_pool]

    gpr = np.fromiter((p.pool.gpus_per_replica for p in plans), dtype=np.int64, count=n_pools)[safe_pool]
    current = np.fromiter((p.pool.current_replicas for p in plans), dtype=np.int64, count=n_pools)[safe_pool]
    count = np.where(present, flat.counts[np.minimum(rows.found, flat.counts.size - 1)], 0)
    row_gpus = np.where(present, count * gpr, 0).sum(axis=1)
    change = per_pool("churn") * np.abs(count - current) + per_pool("cut") * np.maximum(per_pool("anchor") - count, 0)
    row_value = np.fromiter((u.weight for u in problem.units), dtype=np.int64, count=len(problem.units))[
        rows.unit
    ] * rows.reached - np.where(present, change, 0).sum(axis=1)
    row_start = np.searchsorted(rows.unit, np.arange(len(problem.units) + 1), side="left")
    group_index: dict[TenantType, int] = {}
    pool_group = np.empty(n_pools, dtype=np.int64)
    for i, plan in enumerate(plans):
        pool_group[i] = group_index.setdefault((plan.pool.tenant, plan.pool.gpu_type), len(group_index))
    return Frontier(
        problem=problem,
        groups=list(group_index),
        pool_group=pool_group,
        slot_pool=rows.pools,
        slot_j=np.where(present, rows.found - flat.offsets[safe_pool], 0),
        row_unit=rows.unit,
        row_start=row_start,
        row_reached=rows.reached,
        row_gpus=row_gpus,
        row_value=row_value,
        hull_rows=_hulls(row_start.tolist(), row_gpus.tolist(), row_value.tolist()),
        counts_pad=_padded_counts(flat),
        width=flat.lengths,
    )


def _hulls(starts: list[int], gpus: list[int], value: list[int]) -> list[list[int]]:
    """Upper concave hull of each unit's rows from its first row, cut where value stops rising."""
    hulls: list[list[int]] = []
    for k in range(len(starts) - 1):
        hull: list[int] = []
        for r in range(starts[k], starts[k + 1]):
            x, y = gpus[r], value[r]
            while len(hull) >= 2:
                a, b = hull[-2], hull[-1]
                # drop b when it lies on or below the chord a -> r
                if (value[b] - value[a]) * (x - gpus[a]) <= (y - value[a]) * (gpus[b] - gpus[a]):
                    hull.pop()
                else:
                    break
            hull.append(r)
        while len(hull) >= 2 and value[hull[-1]] <= value[hull[-2]]:
            hull.pop()
        hulls.append(hull)
    return hulls
