"""Exact fleet allocation with OR-Tools CP-SAT, falling back to the greedy when it cannot answer.

Formulation (one integer replica variable per pool, on its non-dominated counts only):

* Concave pools (the usual shape once demand sits on the saturating side) use their curve's
  hull directly: ``replicas`` ranges over the allowed counts and ``value <= segment_j(replicas)``
  for every segment. At an allowed count the tightest segment *is* the curve, so this is exact,
  costs one extra variable per pool and gives the LP its strongest relaxation.
* Non-concave pools (S-shaped curves: nothing until the pool can carry the load) select exactly
  one count with a boolean per count (``replicas = sum k*b_k``, ``value = sum v_k*b_k``); the LP
  relaxation of that is again the concave envelope. Dominance pruning keeps these lists short.
* A prefill/decode pair is worth ``min`` of its pools (``unit <= value_p``, maximised).
* Hard limits: GPUs per type (inventory minus GPUs held by draining replicas), tenant caps, tenant
  floors (trimmed beforehand to what the inventory can hold), replica bounds and ``max_step``.
* Objective: ``gpu_tiebreak * (sum weight*unit - churn) - GPUs``: value first, GPUs only break
  ties (see :mod:`global_planner.allocation.problem`).

Determinism: one worker and a fixed seed, so the same request (and a solve that finishes before
its time limit) gives the same answer. The previous allocation is passed as a full hint.
"""

from __future__ import annotations

import logging
from time import perf_counter

from ortools.sat.python import cp_model

from global_planner.allocation.greedy import greedy_replicas
from global_planner.allocation.models import Allocation, AllocationRequest
from global_planner.allocation.problem import PoolPlan, Problem, build_problem, finish, over_budget

log = logging.getLogger(__name__)


def _concave(plan: PoolPlan) -> bool:
    c, v = plan.counts, plan.values
    for j in range(1, len(c) - 1):
        # slope(j-1, j) >= slope(j, j+1), cross-multiplied to stay in integers
        if (v[j] - v[j - 1]) * (c[j + 1] - c[j]) < (v[j + 1] - v[j]) * (c[j] - c[j - 1]):
            return False
    return True


def _nearest(plan: PoolPlan, replicas: int) -> int:
    return min(plan.counts, key=lambda k: (abs(k - replicas), k))


class _Model:
    """CP-SAT model of a :class:`Problem`, keeping the variables needed to hint and read back."""

    def __init__(self, problem: Problem):
        self.problem = problem
        self.model = cp_model.CpModel()
        self.replicas: list[cp_model.LinearExprT] = []
        self.values: list[cp_model.LinearExprT] = []
        self.choices: list[dict[int, cp_model.IntVar]] = []
        self.churn: list[cp_model.IntVar | None] = []
        self.units: list[cp_model.IntVar | None] = []
        for plan in problem.pools:
            self._add_pool(plan)
        objective: list[cp_model.LinearExprT] = []
        for unit in problem.units:
            if len(unit.members) == 1:
                self.units.append(None)
                value = self.values[unit.members[0]]
            else:
                top = min(problem.pools[i].values[-1] for i in unit.members)
                bottom = min(problem.pools[i].values[0] for i in unit.members)
                var = self.model.new_int_var(bottom, top, "")
                for i in unit.members:
                    self.model.add(var <= self.values[i])
                self.units.append(var)
                value = var
            if unit.weight:
                objective.append(unit.weight * value)
        for plan, churn in zip(problem.pools, self.churn, strict=True):
            if churn is not None:
                objective.append(-plan.churn * churn)
        self._add_budgets()
        gpus = sum(plan.pool.gpus_per_replica * r for plan, r in zip(problem.pools, self.replicas, strict=True))
        self.model.maximize(problem.gpu_tiebreak * sum(objective) - gpus)

    def _add_pool(self, plan: PoolPlan) -> None:
        model = self.model
        counts, values = plan.counts, plan.values
        choice: dict[int, cp_model.IntVar] = {}
        if len(counts) == 1:
            replicas: cp_model.LinearExprT = counts[0]
            value: cp_model.LinearExprT = values[0]
        elif _concave(plan):
            replicas = model.new_int_var_from_domain(cp_model.Domain.from_values(counts), "")
            value = model.new_int_var(values[0], values[-1], "")
            for j in range(len(counts) - 1):
                dx, dy = counts[j + 1] - counts[j], values[j + 1] - values[j]
                model.add(dx * value - dy * replicas <= values[j] * dx - dy * counts[j])
        else:
            choice = {k: model.new_bool_var("") for k in counts}
            model.add_exactly_one(choice.values())
            replicas = model.new_int_var(counts[0], counts[-1], "")
            value = model.new_int_var(values[0], values[-1], "")
            model.add(replicas == sum(k * b for k, b in choice.items()))
            model.add(value == sum(v * choice[k] for k, v in zip(counts, values, strict=True)))
        churn = None
        current = plan.pool.current_replicas
        if plan.churn > 0 and len(counts) > 1:
            churn = model.new_int_var(0, max(abs(counts[0] - current), abs(counts[-1] - current)), "")
            model.add(churn >= replicas - current)
            model.add(churn >= current - replicas)
        self.replicas.append(replicas)
        self.values.append(value)
        self.choices.append(choice)
        self.churn.append(churn)

    def _add_budgets(self) -> None:
        problem = self.problem
        by_type: dict[str, list[cp_model.LinearExprT]] = {}
        by_tenant: dict[tuple[str, str], list[cp_model.LinearExprT]] = {}
        for plan, replicas in zip(problem.pools, self.replicas, strict=True):
            term = plan.pool.gpus_per_replica * replicas
            by_type.setdefault(plan.pool.gpu_type, []).append(term)
            by_tenant.setdefault((plan.pool.tenant, plan.pool.gpu_type), []).append(term)
        for gpu, terms in by_type.items():
            self.model.add(sum(terms) <= problem.budget.get(gpu, 0))
        for key, terms in by_tenant.items():
            if key in problem.caps:
                self.model.add(sum(terms) <= problem.caps[key])
            if key in problem.floors:
                self.model.add(sum(terms) >= problem.floors[key])

    def hint(self, replicas: list[int]) -> None:
        """Hint every variable from a replica vector (CP-SAT prefers complete hints)."""
        model, problem = self.model, self.problem
        chosen = [_nearest(plan, r) for plan, r in zip(problem.pools, replicas, strict=True)]
        for i, plan in enumerate(problem.pools):
            count = chosen[i]
            if isinstance(self.replicas[i], cp_model.IntVar):
                model.add_hint(self.replicas[i], count)
                model.add_hint(self.values[i], plan.values[plan.counts.index(count)])
            for k, var in self.choices[i].items():
                model.add_hint(var, k == count)
            if self.churn[i] is not None:
                model.add_hint(self.churn[i], abs(count - plan.pool.current_replicas))
        for unit, var in zip(problem.units, self.units, strict=True):
            if var is not None:
                model.add_hint(
                    var, min(problem.pools[i].values[problem.pools[i].counts.index(chosen[i])] for i in unit.members)
                )

    def read(self, solver: cp_model.CpSolver) -> list[int]:
        return [int(solver.value(r)) for r in self.replicas]


def _fallback(problem: Problem, start: float, why: str) -> Allocation:
    log.warning("allocation falls back to greedy: %s", why)
    replicas = greedy_replicas(problem)
    return finish(
        problem, replicas, status="fallback", best_bound=None, gap=None, solve_ms=(perf_counter() - start) * 1e3
    )


def allocate(request: AllocationRequest) -> Allocation:
    """Solve one fleet allocation; never exceeds the inventory, whatever happens inside."""
    start = perf_counter()
    problem = build_problem(request)
    if not problem.minima_fit:
        return _fallback(problem, start, "replica minima exceed the inventory or a tenant cap")
    try:
        built = _Model(problem)
        if request.previous is not None:
            built.hint([request.previous.get(p.pool.pool_id, p.pool.current_replicas) for p in problem.pools])
        solver = cp_model.CpSolver()
        solver.parameters.num_workers = 1
        solver.parameters.random_seed = request.seed
        solver.parameters.max_time_in_seconds = request.time_limit_s
        solver.parameters.relative_gap_limit = request.relative_gap_limit
        status = solver.solve(built.model)
    except Exception as error:  # noqa: BLE001 - any solver failure must still yield a safe answer
        return _fallback(problem, start, f"CP-SAT raised {error!r}")
    if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        return _fallback(problem, start, f"CP-SAT status {solver.status_name(status)}")
    replicas = built.read(solver)
    broken = over_budget(problem, replicas)
    if broken is not None:
        return _fallback(problem, start, f"CP-SAT answer {broken}")
    objective, bound = solver.objective_value, solver.best_objective_bound
    tiebreak = problem.gpu_tiebreak
    return finish(
        problem,
        replicas,
        status="optimal" if status == cp_model.OPTIMAL else "feasible",
        best_bound=((bound + tiebreak - 1) // tiebreak) * problem.value_scale,
        gap=max(0.0, bound - objective) / max(1.0, abs(bound)),
        solve_ms=(perf_counter() - start) * 1e3,
    )
