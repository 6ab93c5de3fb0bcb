"""Marginal-gain-per-GPU allocation: the CP-SAT fallback and its cross-check.

For one GPU budget, concave curves, no floors and equal replica sizes this greedy is optimal
(the classic result for separable concave knapsacks), which the tests use to check CP-SAT. With
several budgets, caps, floors and S-shaped curves it is only a heuristic, but it respects every
hard limit that can be respected and never exceeds the inventory, which is what a fallback needs.

Moves are *level* moves on a unit (a lone pool or a prefill/decode pair): raise the unit's
attainment to the next value any member can reach, growing every member that is short of it.
Curves arrive reduced to their concave hull counts, so the foot of an S-shaped curve is one
jump (0 -> the count that carries the load), which a one-replica step would never find.
"""

from __future__ import annotations

import heapq
from bisect import bisect_left
from dataclasses import dataclass
from time import perf_counter

from global_planner.allocation.models import Allocation, AllocationRequest
from global_planner.allocation.problem import Problem, TenantType, build_problem, finish


@dataclass(frozen=True)
class _Move:
    ratio: float
    cost: int
    targets: tuple[tuple[int, int], ...]


class _State:
    """Replicas plus the GPUs still free per type and per capped tenant."""

    def __init__(self, problem: Problem):
        self.problem = problem
        self.replicas = [0] * len(problem.pools)
        self.free = dict(problem.budget)
        self.room = dict(problem.caps)
        self.used: dict[TenantType, int] = {}

    def fit(self, index: int, count: int) -> int:
        """Largest count <= ``count`` the free GPUs and the tenant cap allow for pool ``index``."""
        pool = self.problem.pools[index].pool
        key = (pool.tenant, pool.gpu_type)
        step = pool.gpus_per_replica
        spare = min(self.free.get(pool.gpu_type, 0), self.room.get(key, self.free.get(pool.gpu_type, 0)))
        return self.replicas[index] + max(0, min(count - self.replicas[index], spare // step))

    def set(self, index: int, count: int) -> None:
        pool = self.problem.pools[index].pool
        key = (pool.tenant, pool.gpu_type)
        delta = (count - self.replicas[index]) * pool.gpus_per_replica
        self.free[pool.gpu_type] = self.free.get(pool.gpu_type, 0) - delta
        if key in self.room:
            self.room[key] -= delta
        self.used[key] = self.used.get(key, 0) + delta
        self.replicas[index] = count

    def best_move(self, unit_index: int, gpu_filter: TenantType | None = None) -> _Move | None:
        """The unit's best value-per-GPU level move that fits; None when nothing is worth a GPU.

        A lone pool's hull-reduced value is concave, so its nearest paying level is its best and
        the scan stops there. A pair's ``min`` of two concave curves is not concave in their
        total GPUs (the first level pays both pools' fixed jump), so pairs scan every level.
        """
        plans = self.problem.pools
        unit = self.problem.units[unit_index]
        current = [plans[i].value_at(self.replicas[i]) for i in unit.members]
        level_now = min(current)
        levels = sorted({v for i in unit.members for v in plans[i].values if v > level_now})
        best: _Move | None = None
        for level in levels:
            targets: list[tuple[int, int]] = []
            cost: dict[TenantType, int] = {}
            reached = current.copy()
            churn = 0
            for slot, i in enumerate(unit.members):
                if current[slot] >= level:
                    continue
                plan = plans[i]
                j = bisect_left(plan.values, level)
                if j == len(plan.values):
                    return best
                count = plan.counts[j]
                targets.append((i, count))
                reached[slot] = plan.values[j]
                key = (plan.pool.tenant, plan.pool.gpu_type)
                cost[key] = cost.get(key, 0) + (count - self.replicas[i]) * plan.pool.gpus_per_replica
                now = plan.pool.current_replicas
                churn += plan.churn * (abs(count - now) - abs(self.replicas[i] - now))
            by_type: dict[str, int] = {}
            for (tenant, gpu), gpus in cost.items():
                by_type[gpu] = by_type.get(gpu, 0) + gpus
                if gpus > self.room.get((tenant, gpu), gpus):
                    return best
            if any(gpus > self.free.get(gpu, 0) for gpu, gpus in by_type.items()):
                return best
            if gpu_filter is not None and cost.get(gpu_filter, 0) <= 0:
                continue
            gain = unit.weight * (min(reached) - level_now) - churn
            total = sum(by_type.values())
            if gain <= 0 or total <= 0:
                continue
            move = _Move(gain / total, total, tuple(targets))
            if len(unit.members) == 1:
                return move
            if best is None or move.ratio > best.ratio:
                best = move
        return best

    def apply(self, move: _Move) -> None:
        for index, count in move.targets:
            self.set(index, count)


def _meet_minima(state: _State) -> None:
    """Start every pool at its lower bound, highest priority first, as far as GPUs allow."""
    problem = state.problem
    order = sorted(range(len(problem.pools)), key=lambda i: (-problem.pools[i].priority, problem.pools[i].pool.pool_id))
    for index in order:
        state.set(index, state.fit(index, problem.pools[index].lo))


def _meet_floors(state: _State) -> None:
    """Grow each guaranteed tenant to its floor with its own best moves, highest priority first."""
    problem = state.problem
    units_of: dict[TenantType, list[int]] = {}
    for u, unit in enumerate(problem.units):
        for i in unit.members:
            pool = problem.pools[i].pool
            units_of.setdefault((pool.tenant, pool.gpu_type), []).append(u)
    for key in sorted(problem.floors, key=lambda k: (-problem.tenant_priority[k[0]], k)):
        while state.used.get(key, 0) < problem.floors[key]:
            moves = [(m, u) for u in sorted(set(units_of.get(key, []))) if (m := state.best_move(u, key))]
            if not moves:
                break
            state.apply(max(moves, key=lambda pair: (pair[0].ratio, -pair[1]))[0])


def _spend(state: _State) -> None:
    """Lazy max-heap of each unit's best move; budgets only shrink, so stale ratios only overstate."""
    heap: list[tuple[float, int]] = []
    for u in range(len(state.problem.units)):
        move = state.best_move(u)
        if move is not None:
            heap.append((-move.ratio, u))
    heapq.heapify(heap)
    while heap:
        neg_ratio, u = heapq.heappop(heap)
        move = state.best_move(u)
        if move is None:
            continue
        if move.ratio < -neg_ratio:
            heapq.heappush(heap, (-move.ratio, u))
            continue
        state.apply(move)
        again = state.best_move(u)
        if again is not None:
            heapq.heappush(heap, (-again.ratio, u))


def greedy_replicas(problem: Problem) -> list[int]:
    """Replica vector from minima, then floors, then best value per GPU until nothing pays."""
    state = _State(problem)
    _meet_minima(state)
    _meet_floors(state)
    _spend(state)
    return state.replicas


def allocate_greedy(request: AllocationRequest) -> Allocation:
    """Greedy allocation on its own; status is always ``fallback`` (no bound, no gap)."""
    start = perf_counter()
    problem = build_problem(request)
    replicas = greedy_replicas(problem)
    return finish(
        problem, replicas, status="fallback", best_bound=None, gap=None, solve_ms=(perf_counter() - start) * 1e3
    )
