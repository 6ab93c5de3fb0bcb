"""Marginal-gain-per-GPU allocation: the CP-SAT starting point, its fallback and its cross-check.

Moves are taken on each unit's **frontier hull** (:mod:`global_planner.allocation.frontier`):
the upper concave hull, in GPUs, of the unit's level rows. Hull segments of one unit have
strictly decreasing value per GPU, so sorting every segment of every unit once, best first, and
walking the list is the classic marginal-gain greedy — no heap, no re-evaluation — in
``O(S log S)`` for ``S`` segments. A segment that does not fit (type budget or tenant cap) blocks
its unit; budgets only shrink, so it would never fit later. A final *fill* pass spends what is
left on blocked units: each jumps to the best row of its frontier (hull or not) that still fits.

Order of business: pool minima (by priority when they cannot all be held), tenant floors
(highest priority first, each with its own best segments), then the global greedy, then fill.

For one GPU budget, no caps or floors and lone pools, this is the optimal greedy for separable
concave knapsacks up to the last, partly fitting segment; with several budgets, caps, floors and
pairs it is a heuristic whose distance to optimal the dual bound
(:mod:`global_planner.allocation.bound`) measures.
"""

from __future__ import annotations

import heapq
from time import perf_counter

from global_planner.allocation.frontier import Frontier, build_frontier
from global_planner.allocation.models import Allocation, AllocationRequest
from global_planner.allocation.problem import Problem, build_problem, finish

_INF = 1 << 62


class _State:
    """Replicas, the unit positions on their hulls, and GPUs left per type and capped tenant."""

    def __init__(self, frontier: Frontier, start: list[int]):
        problem = frontier.problem
        self.frontier = frontier
        self.problem = problem
        self.replicas = list(start)
        types = sorted(problem.budget)
        type_index = {gpu: t for t, gpu in enumerate(types)}
        self.pool_type = [type_index[p.pool.gpu_type] for p in problem.pools]
        self.pool_group = frontier.pool_group.tolist()
        self.gpr = [p.pool.gpus_per_replica for p in problem.pools]
        self.free = [problem.budget[gpu] for gpu in types]
        self.room = [problem.caps.get(key, _INF) for key in frontier.groups]
        self.used = [0] * len(frontier.groups)
        for i, count in enumerate(start):
            gpus = count * self.gpr[i]
            self.free[self.pool_type[i]] -= gpus
            self.room[self.pool_group[i]] -= gpus
            self.used[self.pool_group[i]] += gpus
        starts = frontier.row_start.tolist()
        self.row_start = starts
        self.slot_pool = frontier.slot_pool.tolist()
        self.slot_j = frontier.slot_j.tolist()
        self.row_value = frontier.row_value.tolist()
        self.counts = [p.counts for p in problem.pools]
        # a unit is "on" its hull at position pos when its pools sit at that hull row
        self.pos: list[int | None] = []
        self.row: list[int | None] = []  # the frontier row the unit sits at (None: off the rows)
        for k, hull in enumerate(frontier.hull_rows):
            first = starts[k]
            on = all(self.replicas[p] == self.counts[p][j] for p, j in self._members(first)) if hull else False
            self.pos.append(0 if on else None)
            self.row.append(first if on else None)
        self.blocked = [False] * len(frontier.hull_rows)

    def _members(self, row: int) -> list[tuple[int, int]]:
        return [(p, j) for p, j in zip(self.slot_pool[row], self.slot_j[row], strict=True) if p >= 0]

    def deltas(self, row: int) -> list[tuple[int, int]] | None:
        """``(pool, new count)`` to move a unit to ``row``; None if some pool would shrink."""
        out = []
        for p, j in self._members(row):
            count = self.counts[p][j]
            if count < self.replicas[p]:
                return None
            if count > self.replicas[p]:
                out.append((p, count))
        return out

    def fits(self, moves: list[tuple[int, int]]) -> bool:
        by_type: dict[int, int] = {}
        by_group: dict[int, int] = {}
        for p, count in moves:
            gpus = (count - self.replicas[p]) * self.gpr[p]
            by_type[self.pool_type[p]] = by_type.get(self.pool_type[p], 0) + gpus
            by_group[self.pool_group[p]] = by_group.get(self.pool_group[p], 0) + gpus
        return all(g <= self.free[t] for t, g in by_type.items()) and all(
            g <= self.room[c] for c, g in by_group.items()
        )

    def apply(self, moves: list[tuple[int, int]]) -> None:
        for p, count in moves:
            gpus = (count - self.replicas[p]) * self.gpr[p]
            self.free[self.pool_type[p]] -= gpus
            self.room[self.pool_group[p]] -= gpus
            self.used[self.pool_group[p]] += gpus
            self.replicas[p] = count

    def unit_value(self, k: int) -> int:
        """Scaled value of unit ``k`` at the current replicas (churn included)."""
        if self.row[k] is not None:
            return self.row_value[self.row[k]]
        problem = self.problem
        unit = problem.units[k]
        value = unit.weight * min(problem.pools[i].value_at(self.replicas[i]) for i in unit.members)
        for i in unit.members:
            value -= problem.pools[i].change_cost(self.replicas[i])
        return value

    def step(self, k: int) -> bool:
        """Take unit ``k``'s next hull segment if it fits; block the unit otherwise."""
        hull = self.frontier.hull_rows[k]
        pos = self.pos[k]
        if self.blocked[k] or pos is None or pos + 1 >= len(hull):
            return False
        moves = self.deltas(hull[pos + 1])
        if moves is None or not self.fits(moves):
            self.blocked[k] = True
            return False
        self.apply(moves)
        self.pos[k] = pos + 1
        self.row[k] = hull[pos + 1]
        return True

    def best_ratio(self, k: int) -> tuple[float, int, list[tuple[int, int]]] | None:
        """Unit ``k``'s best value-per-GPU row move that still fits: (ratio, row, moves)."""
        base = self.unit_value(k)
        row = self.row[k]
        first = row if row is not None else self.row_start[k]
        best = None
        for r in range(first, self.row_start[k + 1]):
            gain = self.row_value[r] - base
            if gain <= 0:
                continue
            moves = self.deltas(r)
            if not moves:
                continue
            if not self.fits(moves):
                break  # counts only grow along the rows: nothing further fits either
            ratio = gain / sum((c - self.replicas[p]) * self.gpr[p] for p, c in moves)
            if best is None or ratio > best[0]:
                best = (ratio, r, moves)
        return best

    def run(
        self,
        segments: list[tuple[int, int]],
        ratios: list[float],
        allowed: set[int] | None = None,
        until: tuple[int, int] | None = None,
    ) -> None:
        """Walk hull segments best first; blocked units compete through their best fitting move.

        A unit whose next hull segment does not fit gets a *deferred* move: its best
        value-per-GPU row that still fits, kept in a lazy max-heap and merged with the sorted
        segments by ratio (budgets only shrink, so a stale ratio only overstates; it is
        recomputed when popped). Only ``allowed`` units move (all when None); ``until=(group,
        level)`` stops once that group holds ``level`` GPUs.
        """
        heap: list[tuple[float, int]] = []
        for k in sorted(allowed) if allowed is not None else range(len(self.blocked)):
            if self.blocked[k] or self.pos[k] is None:
                self._defer(heap, k)
        index = 0
        while True:
            if until is not None and self.used[until[0]] >= until[1]:
                return
            take_heap = heap and (index >= len(segments) or -heap[0][0] > ratios[index])
            if take_heap:
                neg, k = heapq.heappop(heap)
                found = self.best_ratio(k)
                if found is None:
                    continue
                if found[0] < -neg * (1 - 1e-12):
                    heapq.heappush(heap, (-found[0], k))
                    continue
                _, row, moves = found
                self.apply(moves)
                self.row[k] = row
                self.pos[k] = None  # off the hull: only row moves from here
                self._defer(heap, k)
                continue
            if index >= len(segments):
                return
            k, pos = segments[index]
            index += 1
            movable = self.pos[k] == pos and not self.blocked[k] and (allowed is None or k in allowed)
            if movable and not self.step(k):
                self._defer(heap, k)

    def _defer(self, heap: list[tuple[float, int]], k: int) -> None:
        found = self.best_ratio(k)
        if found is not None:
            heapq.heappush(heap, (-found[0], k))


def _segments(frontier: Frontier) -> tuple[list[tuple[int, int]], list[float]]:
    """Every hull segment as ``(unit, position)``, best value per GPU first (ties: unit, position)."""
    gpus, value = frontier.row_gpus.tolist(), frontier.row_value.tolist()
    keyed = []
    for k, hull in enumerate(frontier.hull_rows):
        for pos in range(len(hull) - 1):
            a, b = hull[pos], hull[pos + 1]
            keyed.append((-(value[b] - value[a]) / (gpus[b] - gpus[a]), k, pos))
    keyed.sort()
    return [(k, pos) for _, k, pos in keyed], [-ratio for ratio, _, _ in keyed]


def _start(problem: Problem) -> list[int]:
    """Every pool at its lower bound; when they cannot all be held, deployment by deployment,
    highest priority first, and within a deployment one replica for each of its pools before any
    pool's next: a pair with one side empty serves nothing (a random fleet whose policy raised a
    decode pool's minimum past what the inventory left its prefill partner served 54 of 1,639
    requests, sweep seed 107 `s04`)."""
    if problem.minima_fit:
        return [plan.lo for plan in problem.pools]
    free = dict(problem.budget)
    room = dict(problem.caps)
    replicas = [0] * len(problem.pools)
    deployments: dict[str, list[int]] = {}
    for i in sorted(range(len(problem.pools)), key=lambda i: problem.pools[i].pool.pool_id):
        deployments.setdefault(problem.pools[i].pool.deployment, []).append(i)
    order = sorted(deployments.values(), key=lambda members: -max(problem.pools[i].priority for i in members))
    for members in order:
        for first in (True, False):
            for i in members:
                pool = problem.pools[i].pool
                key = (pool.tenant, pool.gpu_type)
                spare = min(free.get(pool.gpu_type, 0), room.get(key, _INF))
                wanted = min(problem.pools[i].lo, 1) if first else problem.pools[i].lo - replicas[i]
                count = min(wanted, max(0, spare) // pool.gpus_per_replica)
                replicas[i] += count
                free[pool.gpu_type] = free.get(pool.gpu_type, 0) - count * pool.gpus_per_replica
                if key in room:
                    room[key] -= count * pool.gpus_per_replica
    return replicas


def greedy_state(frontier: Frontier) -> _State:
    problem = frontier.problem
    state = _State(frontier, _start(problem))
    segments, ratios = _segments(frontier)
    group_index = {key: c for c, key in enumerate(frontier.groups)}
    units_of: dict[int, set[int]] = {}
    for k, unit in enumerate(problem.units):
        for i in unit.members:
            units_of.setdefault(int(frontier.pool_group[i]), set()).add(k)
    for key in sorted(problem.floors, key=lambda k: (-problem.tenant_priority[k[0]], k)):
        c = group_index.get(key)
        if c is not None and state.used[c] < problem.floors[key]:
            mine = units_of.get(c, set())
            picked = [s for s, (k, _) in enumerate(segments) if k in mine]
            state.run(
                [segments[s] for s in picked], [ratios[s] for s in picked], allowed=mine, until=(c, problem.floors[key])
            )
    state.run(segments, ratios)
    return state


def greedy_replicas(problem: Problem, frontier: Frontier | None = None) -> list[int]:
    """Replica vector from minima, then floors, then best value per GPU, then a fill pass."""
    return greedy_state(frontier or build_frontier(problem)).replicas


def allocate_greedy(request: AllocationRequest) -> Allocation:
    """Greedy allocation on its own; status is always ``fallback`` (no bound, no gap)."""
    start = perf_counter()
    problem = build_problem(request)
    replicas = greedy_replicas(problem)
    return finish(
        problem, replicas, status="fallback", best_bound=None, gap=None, solve_ms=(perf_counter() - start) * 1e3
    )
