"""Baseline policies every real planner is measured against.

- ``static``: the scenario's ``initial`` counts, forever.
- ``static-peak``: the smallest fixed counts that meet the SLA at the trace's busiest window.
- ``oracle``: clairvoyant — knows every future window's load, starts replicas ``startup_s`` early,
  and holds the fewest replicas that meet the SLA. It is the physical limit, labelled as such.

Static-peak and oracle size pools with the same analytical capacity model as the local agent
(``local_agent.sizing``), fed with the trace's *actual* per-window load; only their access to the
future differs from a real planner.
"""

from __future__ import annotations

import math

import numpy as np

from fleet_planner.perf import PerfModel, load_profile
from fleet_planner.planning import Decision, DeploymentSpec, FleetObservation, Policy, ReplicaTarget
from fleet_sim.workload import Workload
from local_agent.sizing import LoadEstimate, size_deployment
from local_agent.sizing.shares import endpoint_shares

SIZING_WINDOW_S = 60.0  # load is measured over 1-minute windows, like a request-rate dashboard
MAX_LENGTH_SAMPLE = 1500  # requests per window kept as the length distribution


def fit_to_inventory(
    targets: dict[tuple[str, str], int], specs: list[DeploymentSpec], inventory: dict[str, int]
) -> dict[tuple[str, str], int]:
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
        self.needs: dict[tuple[str, str], np.ndarray] = {
            (spec.name, role): np.zeros(self.windows, dtype=np.int64) for spec in specs for role in spec.pools
        }
        for spec in specs:
            trace = workload.traces[spec.endpoint]
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

    def peak(self, key: tuple[str, str]) -> int:
        return int(self.needs[key].max()) if self.windows else 0

    def max_over(self, key: tuple[str, str], start_s: float, end_s: float) -> int:
        first = max(0, int(start_s // self.window_s))
        last = min(self.windows - 1, int(end_s // self.window_s))
        if first > last:
            return 0
        return int(self.needs[key][first : last + 1].max())


def _clamp(spec: DeploymentSpec, role: str, replicas: int) -> int:
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
