"""How deployments that share an endpoint divide its traffic when they plan."""

from __future__ import annotations

from collections.abc import Mapping

from fleet_planner.perf import PerfModel
from fleet_planner.perf.capacity import REFERENCE_INPUT_TOKENS, REFERENCE_OUTPUT_TOKENS, replica_rps
from fleet_planner.planning import DeploymentSpec


def endpoint_shares(deployments: list[DeploymentSpec], models: Mapping[str, PerfModel]) -> dict[str, float | None]:
    """The share of its endpoint's traffic each deployment plans for; None when it serves its
    endpoint alone. ``models`` maps profile paths to performance models.

    Deployments sharing an endpoint plan for a fixed share of the endpoint's rate — their request
    capacity at maximum scale over the endpoint's total (a bottleneck pool limits a disaggregated
    deployment) — not for the traffic the router happens to send them: that traffic follows the
    capacity they were given, so planning on it feeds back (a deployment scaled down gets less
    traffic, asks for less, and is scaled to zero)."""
    by_endpoint: dict[str, list[DeploymentSpec]] = {}
    for spec in deployments:
        by_endpoint.setdefault(spec.endpoint, []).append(spec)
    shares: dict[str, float | None] = {}
    for group in by_endpoint.values():
        if len(group) == 1:
            shares[group[0].name] = None
            continue
        capacity = {spec.name: max_scale_rps(spec, models) for spec in group}
        total = sum(capacity.values())
        for spec in group:
            shares[spec.name] = capacity[spec.name] / total if total > 0 else 1.0 / len(group)
    return shares


def max_scale_rps(spec: DeploymentSpec, models: Mapping[str, PerfModel]) -> float:
    """Requests/s the deployment serves at every pool's ``max_replicas`` (a reference request at
    its ITL target; the bottleneck pool limits a disaggregated deployment). ``models`` maps
    profile paths to performance models. What an agent registers with the planner, which divides
    an endpoint by it as :func:`endpoint_shares` does until it chooses the split by cost
    (``global_planner.allocation.split``)."""
    return min(
        pool.max_replicas
        * replica_rps(models[pool.profile_path], role, REFERENCE_INPUT_TOKENS, REFERENCE_OUTPUT_TOKENS, spec.sla.itl_ms)
        for role, pool in spec.pools.items()
    )
