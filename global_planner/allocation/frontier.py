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
    row_value: np.ndarray  # weight * reached - churn
    hull_rows: list[list[int]]  # per unit: row indices of the upper concave hull, ascending GPUs
    counts_pad: np.ndarray  # (pools, kmax) hull counts, padded with the last count
    width: np.ndarray  # (pools,) number of hull counts


def build_frontier(problem: Problem) -> Frontier:
    plans = problem.pools
    n_pools = len(plans)
    lengths = np.fromiter((len(p.counts) for p in plans), dtype=np.int64, count=n_pools)
    offsets = np.zeros(n_pools + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    flat_values = np.fromiter((v for p in plans for v in p.values), dtype=np.int64, count=int(offsets[-1]))
    flat_counts = np.fromiter((c for p in plans for c in p.counts), dtype=np.int64, count=int(offsets[-1]))
    flat_pool = np.repeat(np.arange(n_pools, dtype=np.int64), lengths)
    keys = flat_pool * _KEY + flat_values

    kmax = int(lengths.max()) if n_pools else 1
    column = np.arange(flat_counts.size) - offsets[flat_pool]
    counts_pad = np.empty((n_pools, kmax), dtype=np.int64)
    last = flat_counts[offsets[1:] - 1] if n_pools else flat_counts
    counts_pad[:] = last[:, None]
    counts_pad[flat_pool, column] = flat_counts

    group_index: dict[TenantType, int] = {}
    pool_group = np.empty(n_pools, dtype=np.int64)
    for i, plan in enumerate(plans):
        pool_group[i] = group_index.setdefault((plan.pool.tenant, plan.pool.gpu_type), len(group_index))
    gpr = np.fromiter((p.pool.gpus_per_replica for p in plans), dtype=np.int64, count=n_pools)
    churn = np.fromiter((p.churn for p in plans), dtype=np.int64, count=n_pools)
    current = np.fromiter((p.pool.current_replicas for p in plans), dtype=np.int64, count=n_pools)

    units = problem.units
    n_units = len(units)
    slots = max((len(u.members) for u in units), default=1)
    members = np.full((n_units, slots), -1, dtype=np.int64)
    for k, unit in enumerate(units):
        members[k, : len(unit.members)] = unit.members
    weight = np.fromiter((u.weight for u in units), dtype=np.int64, count=n_units)

    # candidate levels: every hull value of every member, unique per unit
    unit_of_pool = np.empty(n_pools, dtype=np.int64)
    valid = members >= 0
    unit_of_pool[members[valid]] = np.nonzero(valid)[0]
    level_unit = unit_of_pool[flat_pool]
    order = np.lexsort((flat_values, level_unit))
    level_unit, level = level_unit[order], flat_values[order]
    fresh = np.ones(level.size, dtype=bool)
    fresh[1:] = (level_unit[1:] != level_unit[:-1]) | (level[1:] != level[:-1])
    level_unit, level = level_unit[fresh], level[fresh]

    # each member's smallest hull index reaching the level; rows some member cannot reach go
    pools_of_row = members[level_unit]  # (rows, slots)
    present = pools_of_row >= 0
    safe_pool = np.where(present, pools_of_row, 0)
    found = np.searchsorted(keys, safe_pool * _KEY + level[:, None], side="left")
    inside = found < offsets[safe_pool + 1]
    reachable = np.all(inside | ~present, axis=1)
    level_unit, pools_of_row, present, safe_pool = (
        level_unit[reachable],
        pools_of_row[reachable],
        present[reachable],
        safe_pool[reachable],
    )
    found = found[reachable]
    member_value = np.where(present, flat_values[np.minimum(found, flat_values.size - 1)], np.iinfo(np.int64).max)
    reached = member_value.min(axis=1)
    # keep rows that raise the reached level (the first row of each unit always)
    keep = np.ones(reached.size, dtype=bool)
    keep[1:] = (level_unit[1:] != level_unit[:-1]) | (reached[1:] > reached[:-1])
    level_unit, pools_of_row, present, safe_pool, found, reached = (
        level_unit[keep],
        pools_of_row[keep],
        present[keep],
        safe_pool[keep],
        found[keep],
        reached[keep],
    )
    slot_j = np.where(present, found - offsets[safe_pool], 0)
    member_count = np.where(present, flat_counts[np.minimum(found, flat_counts.size - 1)], 0)
    row_gpus = (member_count * np.where(present, gpr[safe_pool], 0)).sum(axis=1)
    row_churn = (np.abs(member_count - current[safe_pool]) * np.where(present, churn[safe_pool], 0)).sum(axis=1)
    row_value = weight[level_unit] * reached - row_churn
    row_start = np.searchsorted(level_unit, np.arange(n_units + 1), side="left")

    hull_rows = _hulls(row_start.tolist(), row_gpus.tolist(), row_value.tolist())
    return Frontier(
        problem=problem,
        groups=list(group_index),
        pool_group=pool_group,
        slot_pool=pools_of_row,
        slot_j=slot_j,
        row_unit=level_unit,
        row_start=row_start,
        row_reached=reached,
        row_gpus=row_gpus,
        row_value=row_value,
        hull_rows=hull_rows,
        counts_pad=counts_pad,
        width=lengths,
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


def row_counts(frontier: Frontier, row: int) -> list[tuple[int, int]]:
    """``(pool, count)`` of every member at ``row``."""
    out = []
    for pool, j in zip(frontier.slot_pool[row].tolist(), frontier.slot_j[row].tolist(), strict=True):
        if pool >= 0:
            out.append((pool, frontier.problem.pools[pool].counts[j]))
    return out
