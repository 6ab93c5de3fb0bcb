"""Scaling stability: how often a run's pool targets changed, and how often they changed direction.

Every target change starts replicas (paying their start-up) or drains them; a *reversal* — a
pool's target moving up after its previous change moved it down, or down after up — is churn a
steadier policy would have avoided. The two figures are normalised so runs of different length
and fleets of different size compare:

- reversals per deployment-hour: a deployment's reversals (all its pools) per simulated hour; the
  fleet figure is all reversals over (hours x deployments).
- target changes per pool-hour: applied target changes (``decisions.jsonl`` rows: under the
  global planner a changed grant, elsewhere a changed target) per pool per simulated hour.

Both are ``None`` for a run with no duration (or no deployments): zero would claim stability.
"""

from __future__ import annotations

from dataclasses import dataclass

from fleet_sim.results import SimulationResult


@dataclass(frozen=True)
class DeploymentStability:
    reversals: int  # direction reversals, summed over the deployment's pools
    target_changes: int
    reversals_per_hour: float | None
    target_changes_per_pool_hour: float | None


@dataclass(frozen=True)
class ScalingStability:
    reversals_per_deployment_hour: float | None  # the fleet's
    target_changes_per_pool_hour: float | None  # the fleet's
    deployments: dict[str, DeploymentStability]


def _rate(count: int, units: float) -> float | None:
    return count / units if units > 0 else None


def scaling_stability(result: SimulationResult) -> ScalingStability:
    """Reversals and target changes of ``result.decisions`` (in recording order), per deployment and
    for the fleet. A record that does not change the target (``from == to``) is no change."""
    pools = {spec.name: len(spec.pools) for spec in result.deployments}
    reversals = dict.fromkeys(pools, 0)
    changes = dict.fromkeys(pools, 0)
    last_direction: dict[tuple[str, str], int] = {}
    for record in result.decisions:
        if record.deployment not in pools:
            raise ValueError(f"decision at {record.time_s} s for unknown deployment {record.deployment!r}")
        if record.to_replicas == record.from_replicas:
            continue
        direction = 1 if record.to_replicas > record.from_replicas else -1
        key = (record.deployment, record.role)
        if last_direction.get(key, direction) != direction:
            reversals[record.deployment] += 1
        last_direction[key] = direction
        changes[record.deployment] += 1
    hours = result.duration_s / 3600.0
    return ScalingStability(
        reversals_per_deployment_hour=_rate(sum(reversals.values()), hours * len(pools)),
        target_changes_per_pool_hour=_rate(sum(changes.values()), hours * sum(pools.values())),
        deployments={
            name: DeploymentStability(
                reversals=reversals[name],
                target_changes=changes[name],
                reversals_per_hour=_rate(reversals[name], hours),
                target_changes_per_pool_hour=_rate(changes[name], hours * pools[name]),
            )
            for name in pools
        },
    )
