"""Fleet allocation with OR-Tools CP-SAT, falling back to the greedy when it cannot answer.

Formulation — one integer per pool, one per unit, linear constraints only:

* Each pool's curve is pre-reduced to its upper concave hull over the pool's whole range, and
  ``replicas`` ranges over this round's window of it
  (:func:`global_planner.allocation.problem._hull_counts`: an interval, cut at the hull's top).
* A unit (a lone pool, or a prefill/decode pair worth the ``min`` of its pools) gets one
  attainment variable bounded by every hull segment of every member:
  ``dx * unit <= v_j * dx + dy * (replicas - k_j)``. At a hull count the tightest segment is the
  curve itself, so the value is exact; the LP relaxation is the concave envelope, the strongest
  possible, and there are no per-count booleans. (A per-count boolean encoding of the raw
  S-shaped curves was measured first: ~11k booleans for 1,000 pools, over 2 s in presolve alone.)
* Hard limits: GPUs per type (inventory minus GPUs held by draining replicas), tenant caps,
  replica bounds and ``max_step``, and tenant floors, trimmed beforehand to what the inventory
  can hold and to what the starting point reaches (see :func:`_starting_point`).
* Objective: ``gpu_tiebreak * (sum weight*unit - churn - cut) - GPUs``: value first, GPUs only break
  ties (see :mod:`global_planner.allocation.problem`).

Pipeline, all inside ``time_limit_s``:

1. :func:`~global_planner.allocation.problem.build_problem` (overrides, hulls, floors);
2. :mod:`~global_planner.allocation.frontier`: each unit's level rows and their concave hull;
3. :mod:`~global_planner.allocation.greedy`: marginal gain per GPU over those hulls; the previous
   allocation replaces it when still valid and at least as good (warm start, stable answers);
4. :mod:`~global_planner.allocation.bound`: a Lagrangian dual bound, so every answer carries a
   proven ``gap`` without waiting for CP-SAT;
5. CP-SAT, hinted with that answer, when the gap is still open and the time budget leaves it
   enough search to matter (small and medium fleets; see :func:`_search_budget`). Its answer is
   kept only if better, its bound only if tighter.

On the 1,000-pool benchmark steps 1-4 take ~50 ms and CP-SAT is skipped: measured, 0.5
deterministic seconds (~3 s) of CP-SAT never improved that greedy, and its bound after 60 s on two
workers (gap 1.2%) is close to the dual bound (1.5%) — the remaining gap is mostly the bound's.
``optimal`` means proven within ``relative_gap_limit`` (by either bound).

Determinism: one worker, a fixed seed and a deterministic-time budget computed from the request
alone, so the same request gives the same answer; the wall-clock guard only fires on an
overloaded machine.
"""

from __future__ import annotations

import logging
from time import perf_counter

from ortools.sat.python import cp_model

from global_planner.allocation.bound import upper_bound
from global_planner.allocation.frontier import Frontier, build_frontier
from global_planner.allocation.greedy import greedy_replicas, greedy_state
from global_planner.allocation.models import Allocation, AllocationRequest, AllocationStatus
from global_planner.allocation.problem import PoolPlan, Problem, build_problem, finish, over_budget, settle_floors

log = logging.getLogger(__name__)


def _nearest(plan: PoolPlan, replicas: int) -> int:
    """The candidate count nearest ``replicas`` (candidates are an interval)."""
    return max(plan.counts[0], min(plan.counts[-1], replicas))


class _Model:
    """CP-SAT model of a :class:`Problem`, keeping the variables needed to hint and read back.

    Every variable and constraint is named after what it is (``replicas[deployment/role]``,
    ``attainment[unit k]``, ``budget[h100]``...), so a dumped model
    (``model.export_to_file("m.pb.txt")``) can be read without this code."""

    def __init__(self, problem: Problem):
        self.problem = problem
        self.model = cp_model.CpModel()
        self.replicas: list[cp_model.LinearExprT] = []
        self.churn: list[cp_model.IntVar | None] = []
        self.cut: list[cp_model.IntVar | None] = []
        for plan in problem.pools:
            self._add_pool(plan)
        self.units: list[cp_model.IntVar] = []
        objective: list[cp_model.LinearExprT] = []
        for k, unit in enumerate(problem.units):
            var = self._add_unit(k, unit.members)
            self.units.append(var)
            if unit.weight:
                objective.append(unit.weight * var)
        for plan, churn, cut in zip(problem.pools, self.churn, self.cut, strict=True):
            if churn is not None:
                objective.append(-plan.churn * churn)
            if cut is not None:
                objective.append(-plan.cut * cut)
        self._add_budgets()
        gpus = sum(plan.pool.gpus_per_replica * r for plan, r in zip(problem.pools, self.replicas, strict=True))
        self.model.maximize(problem.gpu_tiebreak * sum(objective) - gpus)

    def _add_pool(self, plan: PoolPlan) -> None:
        """The pool's replicas (a constant when only one count is possible) and its change terms:
        ``churn >= |replicas - current|`` and ``cut >= anchor - replicas``."""
        model, counts, name = self.model, plan.counts, plan.pool.pool_id
        current = plan.pool.current_replicas
        replicas = counts[0] if len(counts) == 1 else model.new_int_var(counts[0], counts[-1], f"replicas[{name}]")
        self.replicas.append(replicas)
        churn = cut = None
        if plan.churn > 0 and len(counts) > 1:
            churn = model.new_int_var(
                0, max(abs(counts[0] - current), abs(counts[-1] - current)), f"replicas_changed[{name}]"
            )
            model.add(churn >= replicas - current).with_name(f"churn_up[{name}]")
            model.add(churn >= current - replicas).with_name(f"churn_down[{name}]")
        if plan.cut > 0 and len(counts) > 1 and plan.anchor > counts[0]:
            cut = model.new_int_var(0, plan.anchor - counts[0], f"replicas_cut[{name}]")
            model.add(cut >= plan.anchor - replicas).with_name(f"cut_below_anchor[{name}]")
        self.churn.append(churn)
        self.cut.append(cut)

    def _add_unit(self, k: int, members: tuple[int, ...]) -> cp_model.IntVar:
        """A unit's attainment, bounded by every member's hull: the ``min`` of its pools."""
        plans = [self.problem.pools[i] for i in members]
        label = "+".join(p.pool.pool_id for p in plans)
        var = self.model.new_int_var(
            min(p.values[0] for p in plans), min(p.values[-1] for p in plans), f"attainment[{label}]"
        )
        for i in members:
            self._bound(var, self.problem.pools[i], self.replicas[i])
        return var

    def _bound(self, unit: cp_model.IntVar, plan: PoolPlan, replicas: cp_model.LinearExprT) -> None:
        """``unit <= hull(replicas)``: one cut per distinct hull segment (a single point caps it)."""
        counts, values, name = plan.counts, plan.values, plan.pool.pool_id
        if len(counts) == 1:
            self.model.add(unit <= values[0]).with_name(f"hull[{name}]")
            return
        previous: tuple[int, int] | None = None
        for j in range(len(counts) - 1):
            dx, dy = counts[j + 1] - counts[j], values[j + 1] - values[j]
            if previous is not None and previous[0] * dy == previous[1] * dx:
                continue  # collinear with the last segment: same cut
            previous = (dx, dy)
            self.model.add(dx * unit - dy * replicas <= values[j] * dx - dy * counts[j]).with_name(
                f"hull[{name}][{counts[j]}..{counts[j + 1]}]"
            )

    def _add_budgets(self) -> None:
        problem = self.problem
        by_type: dict[str, list[cp_model.LinearExprT]] = {}
        by_tenant: dict[tuple[str, str], list[cp_model.LinearExprT]] = {}
        for plan, replicas in zip(problem.pools, self.replicas, strict=True):
            term = plan.pool.gpus_per_replica * replicas
            by_type.setdefault(plan.pool.gpu_type, []).append(term)
            by_tenant.setdefault((plan.pool.tenant, plan.pool.gpu_type), []).append(term)
        for gpu, terms in by_type.items():
            self.model.add(sum(terms) <= problem.budget.get(gpu, 0)).with_name(f"budget[{gpu}]")
        for (tenant, gpu), terms in by_tenant.items():
            if (tenant, gpu) in problem.caps:
                self.model.add(sum(terms) <= problem.caps[(tenant, gpu)]).with_name(f"tenant_cap[{tenant},{gpu}]")
            if (tenant, gpu) in problem.floors:
                floor = problem.floors[(tenant, gpu)]
                self.model.add(sum(terms) >= floor).with_name(f"tenant_floor[{tenant},{gpu}]")

    def hint(self, replicas: list[int]) -> None:
        """Hint every variable from a replica vector (CP-SAT prefers complete hints)."""
        model, problem = self.model, self.problem
        chosen = [_nearest(plan, r) for plan, r in zip(problem.pools, replicas, strict=True)]
        for i, plan in enumerate(problem.pools):
            replicas_var, churn, cut = self.replicas[i], self.churn[i], self.cut[i]
            if isinstance(replicas_var, cp_model.IntVar):
                model.add_hint(replicas_var, chosen[i])
            if churn is not None:
                model.add_hint(churn, abs(chosen[i] - plan.pool.current_replicas))
            if cut is not None:
                model.add_hint(cut, max(0, plan.anchor - chosen[i]))
        for unit, var in zip(problem.units, self.units, strict=True):
            model.add_hint(var, min(problem.pools[i].value_at(chosen[i]) for i in unit.members))

    def read(self, solver: cp_model.CpSolver) -> list[int]:
        return [int(solver.value(r)) for r in self.replicas]


_last_fallback = ""  # the last fallback's reason: a standing one is logged once, not every round


def _fallback(problem: Problem, start: float, why: str, replicas: list[int] | None = None) -> Allocation:
    global _last_fallback
    if why != _last_fallback:
        log.warning("allocation falls back to greedy: %s", why)
        _last_fallback = why
    return finish(
        problem,
        greedy_replicas(problem) if replicas is None else replicas,
        status="fallback",
        best_bound=None,
        gap=None,
        solve_ms=(perf_counter() - start) * 1e3,
    )


def _score(problem: Problem, replicas: list[int]) -> int:
    """The model's lexicographic objective: value first, then fewer GPUs."""
    gpus = sum(count * plan.pool.gpus_per_replica for plan, count in zip(problem.pools, replicas, strict=True))
    return problem.gpu_tiebreak * problem.value(replicas) - gpus


def _starting_point(problem: Problem, frontier: Frontier, previous: dict[str, int] | None) -> list[int]:
    """The better of the greedy and the previous allocation (kept on ties, for stability).

    Floors the greedy cannot reach (replica granularity, caps) are first lowered to what it
    reaches, so the model always has a feasible complete hint and never goes infeasible on a
    guarantee that only looked reachable in GPU counts. The previous allocation, snapped to this
    round's candidate counts, competes only when it is within every budget and floor.
    """
    replicas = greedy_state(frontier).replicas
    settle_floors(problem, replicas)
    if previous is not None:
        hinted = [_nearest(p, previous.get(p.pool.pool_id, p.pool.current_replicas)) for p in problem.pools]
        used = problem.gpus(hinted)[1]
        if (
            over_budget(problem, hinted) is None
            and all(used.get(k, 0) >= f for k, f in problem.floors.items())
            and _score(problem, hinted) >= _score(problem, replicas)
        ):
            return hinted
    return replicas


def _search_budget(request: AllocationRequest) -> float:
    """CP-SAT's deterministic-time budget: what the time limit leaves after predicted preparation.

    Predicted, not measured, so the same request always gets the same budget and the same answer
    (a wall-clock guard still stops CP-SAT at the deadline on an overloaded machine). Constants
    were measured on the reference machine; a budget below ``_MIN_SEARCH_DET`` is not worth a model
    build (a 1,000-pool model spends 0.5 deterministic seconds without improving the greedy).
    """
    predicted = len(request.pools) * (_PREP_S_PER_POOL + _MODEL_S_PER_POOL)
    return max(0.0, request.time_limit_s - predicted) * _DET_PER_S


_PREP_S_PER_POOL = 60e-6  # problem, frontier, greedy, bound and answer, per pool
_MODEL_S_PER_POOL = 100e-6  # CP-SAT model build and hint, per pool
_DET_PER_S = 0.15  # CP-SAT deterministic time per wall second, one worker
_MIN_SEARCH_DET = 0.02
_FINISH_RESERVE_S = 20e-6  # per pool, kept from the wall-clock guard for packaging the answer


def allocate(request: AllocationRequest) -> Allocation:
    """Solve one fleet allocation; never exceeds the inventory, whatever happens inside.

    ``time_limit_s`` covers the whole call: preparation, greedy, bound and CP-SAT. The greedy
    answer and its dual bound come first; CP-SAT then polishes and re-bounds it when the gap is
    open and the budget leaves it enough time to matter (see :func:`_search_budget`). The answer
    is the better of the two, and ``gap`` is measured against the tighter of the two bounds.
    """
    start = perf_counter()
    deadline = start + request.time_limit_s
    problem = build_problem(request)
    if not problem.minima_fit:
        why = "the pools' lower bounds cannot all be held: " + "; ".join(problem.minima_conflicts.values())
        return _fallback(problem, start, why)
    frontier = build_frontier(problem)
    replicas = _starting_point(problem, frontier, request.previous)
    bound = upper_bound(frontier)
    value = problem.value(replicas)
    status: AllocationStatus = "feasible"
    det_budget = _search_budget(request)
    if _relative_gap(bound, value) <= request.relative_gap_limit:
        status = "optimal"
    elif det_budget >= _MIN_SEARCH_DET or len(request.pools) <= _ALWAYS_SEARCH_POOLS:
        try:
            built = _Model(problem)
            built.hint(replicas)
            solver = cp_model.CpSolver()
            params = solver.parameters
            params.num_workers = 1
            params.random_seed = request.seed
            params.max_deterministic_time = max(det_budget, 0.01)
            guard = deadline - perf_counter() - _FINISH_RESERVE_S * len(request.pools)
            params.max_time_in_seconds = max(guard, 0.005)
            params.relative_gap_limit = request.relative_gap_limit
            # The model is already tight (concave hulls, no booleans): heavy presolve only costs time.
            params.symmetry_level = 0
            params.cp_model_probing_level = 0
            params.max_presolve_iterations = 1
            result = solver.solve(built.model)
        except Exception as error:
            return _fallback(problem, start, f"CP-SAT raised {error!r}", replicas)
        if result in (cp_model.MODEL_INVALID, cp_model.INFEASIBLE):
            return _fallback(problem, start, f"CP-SAT status {solver.status_name(result)}", replicas)
        if result in (cp_model.OPTIMAL, cp_model.FEASIBLE):
            found = built.read(solver)
            broken = over_budget(problem, found)
            if broken is not None:
                return _fallback(problem, start, f"CP-SAT answer {broken}", replicas)
            if _score(problem, found) > _score(problem, replicas):
                replicas, value = found, problem.value(found)
            tiebreak = problem.gpu_tiebreak
            bound = min(bound, (solver.best_objective_bound + tiebreak - 1) // tiebreak)
            if result == cp_model.OPTIMAL:
                status = "optimal"
        if _relative_gap(bound, value) <= request.relative_gap_limit:
            status = "optimal"
    return finish(
        problem,
        replicas,
        status=status,
        best_bound=bound * problem.value_scale,
        gap=_relative_gap(bound, value),
        solve_ms=(perf_counter() - start) * 1e3,
    )


_ALWAYS_SEARCH_POOLS = 64  # small models: CP-SAT proves optimality in milliseconds


def _relative_gap(bound: float, value: float) -> float:
    return max(0.0, bound - value) / max(1.0, abs(bound))
