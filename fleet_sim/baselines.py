"""Baseline policies every real planner is measured against.

- ``static``: the scenario's ``initial`` counts, forever.
- ``static-peak``: the fewest fixed replicas per pool that meet the SLA target on the whole trace.
- ``oracle``: clairvoyant — knows every future window's load, starts replicas ``startup_s`` early,
  and holds, window by window, about the fewest replicas that meet the target. Labelled as such.

Both are *searched by simulation* in the same simulator with the same arrivals
(:func:`search_static_peak`, :func:`search_oracle`): the analytical capacity model of the local
agent (``local_agent.sizing``, fed with each window's actual load) only gives the starting point,
because its Poisson and exact-latency assumptions break on bursty traffic. Where the target cannot
be met even with a pool at its maximum, the search says so (``SearchReport.unreachable``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fleet_planner.perf import PerfModel, load_profile
from fleet_planner.planning import Decision, DeploymentSpec, FleetObservation, Policy, PoolRole, ReplicaTarget
from fleet_sim.outputs.summary import slo_met
from fleet_sim.results import COMPLETED, SimulationResult
from fleet_sim.workload import Workload
from local_agent.sizing import LoadEstimate, size_deployment
from local_agent.sizing.shares import endpoint_shares

PoolKey = tuple[str, PoolRole]  # (deployment, role)
SIZING_WINDOW_S = 60.0  # load is measured over 1-minute windows, like a request-rate dashboard
MAX_LENGTH_SAMPLE = 1500  # requests per window kept as the length distribution


def fit_to_inventory(
    targets: dict[PoolKey, int], specs: list[DeploymentSpec], inventory: dict[str, int]
) -> dict[PoolKey, int]:
    """Shrink targets of any over-subscribed GPU type, largest pools first, never below their minimum."""
    fitted = dict(targets)
    pool_specs = {(spec.name, role): pool for spec in specs for role, pool in spec.pools.items()}
    for gpu_type, capacity in inventory.items():
        keys = [key for key in fitted if pool_specs[key].gpu_type == gpu_type]
        used = sum(fitted[key] * pool_specs[key].gpus_per_replica for key in keys)
        while used > capacity:
            shrinkable = [key for key in keys if fitted[key] > pool_specs[key].min_replicas]
            if not shrinkable:
                break
            key = max(shrinkable, key=lambda k: (fitted[k] * pool_specs[k].gpus_per_replica, k))
            fitted[key] -= 1
            used -= pool_specs[key].gpus_per_replica
    return fitted


class WindowedNeeds:
    """Replicas each pool needs in each future window, from the actual trace (clairvoyant input)."""

    def __init__(self, specs: list[DeploymentSpec], workload: Workload, duration_s: float, target: float, seed: int):
        self.specs = specs
        self.target = target
        self.window_s = SIZING_WINDOW_S
        self.windows = max(1, math.ceil(duration_s / self.window_s))
        models: dict[str, PerfModel] = {}
        for spec in specs:
            for pool in spec.pools.values():
                if pool.profile_path not in models:
                    models[pool.profile_path] = PerfModel(load_profile(pool.profile_path))
        shares = {name: 1.0 if share is None else share for name, share in endpoint_shares(specs, models).items()}
        rng = np.random.default_rng(seed)
        # needs[(deployment, role)] -> int array over windows
        self.needs: dict[PoolKey, np.ndarray] = {
            (spec.name, role): np.zeros(self.windows, dtype=np.int64) for spec in specs for role in spec.pools
        }
        for spec in specs:
            trace = workload.trace(spec.endpoint)
            pool_models = {role: models[pool.profile_path] for role, pool in spec.pools.items()}
            window_of = np.minimum((trace.arrival_s // self.window_s).astype(np.int64), self.windows - 1)
            bounds = np.searchsorted(window_of, np.arange(self.windows + 1))
            for w in range(self.windows):
                lo, hi = bounds[w], bounds[w + 1]
                if hi == lo:
                    continue
                idx = np.arange(lo, hi)
                if len(idx) > MAX_LENGTH_SAMPLE:
                    idx = np.sort(rng.choice(idx, MAX_LENGTH_SAMPLE, replace=False))
                rate = (hi - lo) / self.window_s * shares[spec.name]
                load = LoadEstimate.from_samples(trace.input_tokens[idx], trace.output_tokens[idx], rate)
                sized = size_deployment(spec, pool_models, load, target=target)
                for role, count in sized.items():
                    self.needs[(spec.name, role)][w] = count

    def peak(self, key: PoolKey) -> int:
        return int(self.needs[key].max()) if self.windows else 0

    def max_over(self, key: PoolKey, start_s: float, end_s: float) -> int:
        first = max(0, int(start_s // self.window_s))
        last = min(self.windows - 1, int(end_s // self.window_s))
        if first > last:
            return 0
        return int(self.needs[key][first : last + 1].max())


def _clamp(spec: DeploymentSpec, role: PoolRole, replicas: int) -> int:
    pool = spec.pools[role]
    return min(max(replicas, pool.min_replicas), pool.max_replicas)


class StaticPolicy(Policy):
    name = "static"

    def decide(self, now_s: float, observation: FleetObservation | None) -> Decision:
        return Decision(
            targets=[
                ReplicaTarget(deployment=spec.name, role=role, replicas=pool.initial_replicas, reason="static")
                for spec in self.deployments
                for role, pool in spec.pools.items()
            ]
        )


class StaticPeakPolicy(Policy):
    name = "static-peak"
    search: SearchReport | None = None  # set when the counts were searched by simulation

    def __init__(
        self, deployments: list[DeploymentSpec], tick_s: float, needs: WindowedNeeds, inventory: dict[str, int]
    ):
        super().__init__(deployments, tick_s)
        wanted = {
            (spec.name, role): _clamp(spec, role, needs.peak((spec.name, role)))
            for spec in deployments
            for role in spec.pools
        }
        self.targets = fit_to_inventory(wanted, deployments, inventory)

    def decide(self, now_s: float, observation: FleetObservation | None) -> Decision:
        return Decision(
            targets=[
                ReplicaTarget(deployment=name, role=role, replicas=count, reason="sized for trace peak")
                for (name, role), count in self.targets.items()
            ]
        )


class OraclePolicy(Policy):
    name = "oracle"
    clairvoyant = True
    search: SearchReport | None = None  # set when the schedule was searched by simulation

    def __init__(
        self, deployments: list[DeploymentSpec], tick_s: float, needs: WindowedNeeds, inventory: dict[str, int]
    ):
        super().__init__(deployments, tick_s)
        self.needs = needs
        self.inventory = inventory

    def decide(self, now_s: float, observation: FleetObservation | None) -> Decision:
        wanted = {}
        for spec in self.deployments:
            for role, pool in spec.pools.items():
                # Replicas asked for now are ready after startup_s and stay until the next tick's
                # replicas are ready: cover every window in between.
                horizon = now_s + pool.startup_s + self.tick_s
                wanted[(spec.name, role)] = _clamp(spec, role, self.needs.max_over((spec.name, role), now_s, horizon))
        fitted = fit_to_inventory(wanted, self.deployments, self.inventory)
        return Decision(
            targets=[
                ReplicaTarget(deployment=name, role=role, replicas=count, reason="oracle: future load")
                for (name, role), count in fitted.items()
            ]
        )


# --- search by simulation ---------------------------------------------------------------------

MAX_ORACLE_RUNS = 8  # simulations the oracle search may spend (repair and trim rounds)
MAX_TRIMS = 2  # trim rounds after the target is first met
MAX_REPAIR_RUNS = 6  # simulations static-peak may spend raising counts before bisecting down


@dataclass
class SearchReport:
    """How a baseline's replica counts were found, and whether they meet the target.

    ``attainment`` is each deployment's SLO attainment in the final verifying run, over the
    requests that arrive once replicas asked for at the start can be ready (the longest
    ``startup_s``; before that only the scenario's initial counts serve); ``unreachable``
    names deployments that miss the target although every pool they missed on was at its maximum
    (or the GPU inventory) where it missed; ``runs`` counts the simulations spent.
    """

    target: float
    runs: int = 0
    attainment: dict[str, float] = field(default_factory=dict)
    unreachable: list[str] = field(default_factory=list)

    @property
    def reached(self) -> bool:
        """Every deployment meets the target or is marked unreachable."""
        return all(a >= self.target or name in self.unreachable for name, a in self.attainment.items())


@dataclass
class _Misses:
    """One run's outcome per deployment: overall attainment and per-window misses by cause."""

    attainment: np.ndarray  # per deployment
    requests: np.ndarray  # [deployment, window] requests that arrived
    entry: np.ndarray  # [deployment, window] missed on TTFT (or never completed): prefill / agg
    exit: np.ndarray  # [deployment, window] missed on ITL only: decode / agg


def _misses(result: SimulationResult, window_s: float, windows: int) -> _Misses:
    """Requests that arrive before any replica asked for at time 0 can be ready are left out: their
    fate is the scenario's ``initial`` counts, which no baseline chooses."""
    req = result.requests
    warmup = max(pool.startup_s for spec in result.deployments for pool in spec.pools.values())
    met = slo_met(result)
    ttft_target = np.array([result.endpoint_sla[e][0] for e in result.endpoints])
    ttft_ok = (req.status == COMPLETED) & (req.ttft_ms <= ttft_target[req.endpoint])
    n = len(result.deployments)
    routed = (req.deployment >= 0) & (req.arrival_s >= warmup)
    window = np.minimum((req.arrival_s // window_s).astype(np.int64), windows - 1)
    flat = req.deployment.astype(np.int64) * windows + window

    def count(mask: np.ndarray) -> np.ndarray:
        return np.bincount(flat[mask & routed], minlength=n * windows).reshape(n, windows)

    requests = count(np.ones_like(met))
    with np.errstate(invalid="ignore", divide="ignore"):
        attainment = np.where(requests.sum(1) > 0, count(met).sum(1) / requests.sum(1), 1.0)
    return _Misses(attainment, requests, count(~met & ~ttft_ok), count(~met & ttft_ok))


def _run(scenario, workload: Workload, policy: Policy) -> SimulationResult:
    from fleet_sim.runner import FleetSimulation  # the runner imports nothing from here; keep it lazy

    return FleetSimulation(scenario, workload, policy).run()


def _pool_roles(spec: DeploymentSpec) -> tuple[PoolRole, PoolRole]:
    """(entry role, exit role): prefill and decode, or the agg pool twice."""
    return ("prefill", "decode") if spec.mode == "disagg" else ("agg", "agg")


def search_static_peak(scenario, workload: Workload, needs: WindowedNeeds, target: float) -> StaticPeakPolicy:
    """The fewest fixed counts meeting ``target`` per deployment, found by simulation.

    Start at the capacity model's peak; raise the pools a failing deployment missed on until it
    passes (or is stuck at its maximum, or the counts already want every GPU of its type:
    unreachable); then bisect each pool down, entry pools of
    every deployment at once, then exit pools, keeping the others at their passing counts.
    """
    specs, tick = scenario.deployment_specs(), float(scenario.planner.interval_s)
    inventory = dict(scenario.gpus)
    report = SearchReport(target=target)
    counts = StaticPeakPolicy(specs, tick, needs, inventory).targets
    windows = max(1, math.ceil(scenario.duration_s / SIZING_WINDOW_S))

    def probe(candidate: dict[PoolKey, int]) -> _Misses:
        policy = StaticPeakPolicy(specs, tick, needs, inventory)
        policy.targets = fit_to_inventory(candidate, specs, inventory)
        report.runs += 1
        return _misses(_run(scenario, workload, policy), SIZING_WINDOW_S, windows)

    outcome = probe(counts)
    stuck: set[str] = set()
    for _ in range(MAX_REPAIR_RUNS):
        raised = False
        for d, spec in enumerate(specs):
            if outcome.attainment[d] >= target:
                continue
            for role, missed in zip(_pool_roles(spec), (outcome.entry[d].sum(), outcome.exit[d].sum())):
                key, pool = (spec.name, role), spec.pools[role]
                if (
                    missed
                    and counts[key] < pool.max_replicas
                    and _gpus_by_type(counts, specs).get(pool.gpu_type, 0) < inventory.get(pool.gpu_type, 0)
                ):
                    counts[key] = min(pool.max_replicas, counts[key] + max(1, math.ceil(0.2 * counts[key])))
                    raised = True
            if not raised:
                stuck.add(spec.name)
        if not raised:
            break
        outcome = probe(counts)
    passing = {spec.name: bool(outcome.attainment[d] >= target) for d, spec in enumerate(specs)}
    for stage in (0, 1):  # entry pools, then exit pools
        keys = {
            (spec.name, _pool_roles(spec)[stage])
            for spec in specs
            if passing[spec.name] and (stage == 0 or spec.mode == "disagg")
        }
        low = {key: max(1, pool_min(specs, key)) - 1 for key in keys}  # known (or assumed) failing
        while True:
            trying = {key: (low[key] + counts[key]) // 2 for key in keys if counts[key] - low[key] > 1}
            if not trying:
                break
            trial = probe({**counts, **trying})
            for d, spec in enumerate(specs):
                for key in [k for k in trying if k[0] == spec.name]:
                    if trial.attainment[d] >= target:
                        counts[key] = trying[key]
                    else:
                        low[key] = trying[key]
    final = probe(counts)
    report.attainment = {spec.name: float(final.attainment[d]) for d, spec in enumerate(specs)}
    report.unreachable = sorted(name for name in stuck if report.attainment[name] < target)
    policy = StaticPeakPolicy(specs, tick, needs, inventory)
    policy.targets = fit_to_inventory(counts, specs, inventory)
    policy.search = report
    return policy


def pool_min(specs: list[DeploymentSpec], key: PoolKey) -> int:
    return next(spec.pools[key[1]].min_replicas for spec in specs if spec.name == key[0])


def search_oracle(
    scenario, workload: Workload, needs: WindowedNeeds, target: float, ceiling: dict[PoolKey, int] | None = None
) -> OraclePolicy:
    """The oracle's per-window counts, repaired by simulation until every deployment meets ``target``.

    Each round replays the whole trace with the current schedule. In every window where a failing
    deployment's requests met the SLA less often than ``target``, the pool they missed on (TTFT:
    prefill or agg; ITL: decode or agg; a disaggregated TTFT miss repeated in a window also raises
    decode, whose admission queue is part of TTFT) gets one more replica, in that window and the
    one before (whose backlog a burst inherits); a quarter more where most requests missed. Once
    the target is met, a trim round lowers by one replica every window served without a miss, and
    the repairs run again; the cheapest schedule that met the target is kept.

    ``ceiling`` (static-peak's verified counts) caps every window: a schedule at the ceiling
    everywhere is static-peak itself, so the oracle never costs more, and a deployment still short
    when the runs are spent falls back to it (one more run verifies). A deployment still short
    where the pools it missed on are at their maximum, or where the schedule already holds every
    GPU of their type (a shortage), is unreachable.
    """
    specs, tick = scenario.deployment_specs(), float(scenario.planner.interval_s)
    inventory = dict(scenario.gpus)
    report = SearchReport(target=target)
    top = {(spec.name, role): pool.max_replicas for spec in specs for role, pool in spec.pools.items()}
    cap = {key: min(top[key], (ceiling or top)[key]) for key in top}
    for key, series in needs.needs.items():
        np.minimum(series, cap[key], out=series)
    entry_repeats: dict[tuple[int, int], int] = {}
    trims = 0
    best: tuple[float, dict[PoolKey, np.ndarray], _Misses] | None = None
    outcome = None
    while report.runs < MAX_ORACLE_RUNS:
        result = _run(scenario, workload, OraclePolicy(specs, tick, needs, inventory))
        outcome = _misses(result, needs.window_s, needs.windows)
        report.runs += 1
        failing = [d for d in range(len(specs)) if outcome.attainment[d] < target]
        cost = sum(result.gpu_seconds.values())
        if not failing and (best is None or cost < best[0]):
            best = (cost, {key: value.copy() for key, value in needs.needs.items()}, outcome)
        if not failing:
            if trims == MAX_TRIMS:
                break
            trims += 1
            _trim(needs, specs, outcome)
        elif _repair(needs, specs, outcome, failing, target, entry_repeats, cap) == set(failing):
            break
    assert outcome is not None
    if best is not None:
        _, needs.needs, outcome = best
    short = [d for d in range(len(specs)) if outcome.attainment[d] < target]
    if short and ceiling is not None:  # out of runs: the ceiling (static-peak, verified) for those
        for d in short:
            for role in specs[d].pools:
                needs.needs[(specs[d].name, role)][:] = cap[(specs[d].name, role)]
        result = _run(scenario, workload, OraclePolicy(specs, tick, needs, inventory))
        outcome = _misses(result, needs.window_s, needs.windows)
        report.runs += 1
    report.attainment = {spec.name: float(outcome.attainment[d]) for d, spec in enumerate(specs)}
    at_max = _repair(needs, specs, outcome, list(range(len(specs))), target, {}, top, dry_run=True, inventory=inventory)
    report.unreachable = sorted(specs[d].name for d in at_max if outcome.attainment[d] < target)
    policy = OraclePolicy(specs, tick, needs, inventory)
    policy.search = report
    return policy


def oracle_below_peak(
    scenario, workload: Workload, target: float, peak: StaticPeakPolicy | None = None
) -> OraclePolicy:
    """The searched oracle capped by static-peak's searched counts (searched here unless given),
    so the oracle never costs more than the best fixed deployment."""

    def model_needs() -> WindowedNeeds:
        return WindowedNeeds(scenario.deployment_specs(), workload, scenario.duration_s, target, scenario.seed)

    if peak is None:
        peak = search_static_peak(scenario, workload, model_needs(), target)
    oracle = search_oracle(scenario, workload, model_needs(), target, ceiling=peak.targets)
    # What static-peak could not reach, the oracle capped by its counts cannot reach either.
    search, ceiling = oracle.search, peak.search
    if search is not None and ceiling is not None:
        beyond = {name for name in ceiling.unreachable if search.attainment.get(name, 1.0) < target}
        search.unreachable = sorted(set(search.unreachable) | beyond)
    return oracle


def _repair(
    needs: WindowedNeeds,
    specs: list[DeploymentSpec],
    outcome: _Misses,
    failing: list[int],
    target: float,
    entry_repeats: dict[tuple[int, int], int],
    cap: dict[PoolKey, int],
    dry_run: bool = False,
    inventory: dict[str, int] | None = None,
) -> set[int]:
    """Raise the pools failing deployments missed on, per window, up to ``cap``; return the
    deployments none of whose short windows could be raised. With ``inventory``, a window whose
    schedule already holds every GPU of a pool's type cannot raise that pool either (in a
    shortage one deployment gains only what another loses)."""
    full = _full_windows(needs, specs, inventory) if inventory is not None else {}
    stuck = set()
    for d in failing:
        spec = specs[d]
        entry_role, exit_role = _pool_roles(spec)
        requests = np.maximum(outcome.requests[d], 1)
        short = (outcome.requests[d] - outcome.entry[d] - outcome.exit[d]) / requests < target
        raised = False
        for w in np.flatnonzero(short).tolist():
            shortfall = (outcome.entry[d][w] + outcome.exit[d][w]) / requests[w]
            roles: set[PoolRole] = set()
            if outcome.entry[d][w]:
                roles.add(entry_role)
                entry_repeats[(d, w)] = entry_repeats.get((d, w), 0) + 1
                if spec.mode == "disagg" and entry_repeats[(d, w)] > 1:
                    roles.add(exit_role)
            if outcome.exit[d][w]:
                roles.add(exit_role)
            for role in roles:
                key = (spec.name, role)
                series = needs.needs[key]
                gpu_type = spec.pools[role].gpu_type
                for window in (w, w - 1) if w > 0 else (w,):
                    if series[window] >= cap[key] or (gpu_type in full and full[gpu_type][window]):
                        continue
                    raised = True
                    if not dry_run:
                        step = max(1, math.ceil(0.25 * series[window])) if shortfall > 0.5 else 1
                        series[window] = min(cap[key], series[window] + step)
        if not raised:
            stuck.add(d)
    return stuck


def _gpus_by_type(counts: Mapping[PoolKey, Any], specs: list[DeploymentSpec]) -> dict[str, Any]:
    """GPUs per type these replica counts want: fixed counts (ints) or schedules (arrays over
    windows, summed window by window)."""
    wanted: dict[str, Any] = {}
    for spec in specs:
        for role, pool in spec.pools.items():
            gpus = counts[(spec.name, role)] * pool.gpus_per_replica
            wanted[pool.gpu_type] = wanted.get(pool.gpu_type, 0) + gpus
    return wanted


def _full_windows(
    needs: WindowedNeeds, specs: list[DeploymentSpec], inventory: dict[str, int]
) -> dict[str, np.ndarray]:
    """Per GPU type, the windows where the schedule wants at least every GPU of the inventory."""
    wanted = _gpus_by_type(needs.needs, specs)
    return {gpu: series >= inventory[gpu] for gpu, series in wanted.items() if gpu in inventory}


def _trim(needs: WindowedNeeds, specs: list[DeploymentSpec], outcome: _Misses) -> None:
    """One replica fewer in every window a deployment served without a single miss."""
    for d, spec in enumerate(specs):
        clean = (outcome.entry[d] + outcome.exit[d]) == 0
        for role, pool in spec.pools.items():
            series = needs.needs[(spec.name, role)]
            lower = clean & (series > max(pool.min_replicas, 1))
            series[lower] -= 1
