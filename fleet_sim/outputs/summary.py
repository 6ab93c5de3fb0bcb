"""Run summary: SLA attainment, latency percentiles and GPU-hours per fleet, endpoint, deployment
and tenant, and the scaling stability of the fleet and each deployment (see ``stability``).

A day of fleet traffic is millions of requests, so every per-request step is a whole-array numpy
operation; Python loops run only over groups (endpoints, deployments, tenants).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from fleet_planner.planning import DeploymentSpec, PoolRole
from fleet_sim.results import COMPLETED, REJECTED, UNFINISHED, SimulationResult

from .stability import ScalingStability, scaling_stability

PERCENTILES = (50.0, 90.0, 99.0)


def number(value: float | None) -> float | None:
    """JSON has no NaN/Infinity: undefined numbers become null."""
    if value is None or not math.isfinite(value):
        return None
    return float(value)


def slo_met(result: SimulationResult) -> np.ndarray:
    """Per request: completed within both its endpoint's TTFT and ITL targets.

    Rejected and unfinished requests are misses. A one-token answer has no inter-token latency,
    so its ITL target counts as met.
    """
    req = result.requests
    ttft_target = np.array([result.endpoint_sla[e][0] for e in result.endpoints], dtype=float)
    itl_target = np.array([result.endpoint_sla[e][1] for e in result.endpoints], dtype=float)
    endpoint = np.asarray(req.endpoint, dtype=np.intp)
    ttft_ok = req.ttft_ms <= ttft_target[endpoint]
    itl_ok = (req.output_tokens <= 1) | (req.itl_ms <= itl_target[endpoint])
    return (req.status == COMPLETED) & ttft_ok & itl_ok


def _tally(group: np.ndarray, n_groups: int, status: np.ndarray, met: np.ndarray) -> dict[str, np.ndarray]:
    """Request counts per group; rows with group -1 (never routed) are left out."""
    keep = group >= 0
    g, s = group[keep], status[keep]
    return {
        "requests": np.bincount(g, minlength=n_groups),
        "completed": np.bincount(g[s == COMPLETED], minlength=n_groups),
        "rejected": np.bincount(g[s == REJECTED], minlength=n_groups),
        "unfinished": np.bincount(g[s == UNFINISHED], minlength=n_groups),
        "met": np.bincount(g[met[keep]], minlength=n_groups),
    }


def _group_percentiles(group: np.ndarray, values: np.ndarray, valid: np.ndarray, n_groups: int) -> np.ndarray:
    """``PERCENTILES`` of ``values[valid]`` per group, shape (n_groups, len(PERCENTILES)), NaN where a
    group is empty. One stable sort on the small group key (radix sort: linear) puts each group in
    a contiguous slice; each slice then costs one linear-time selection."""
    keep = valid & (group >= 0) & np.isfinite(values)
    g, v = group[keep], values[keep]
    key = g.astype(np.int16 if n_groups <= np.iinfo(np.int16).max else np.int32)
    v = v[np.argsort(key, kind="stable")]
    bounds = np.concatenate(([0], np.cumsum(np.bincount(g, minlength=n_groups))))
    out = np.full((n_groups, len(PERCENTILES)), np.nan)
    for i in np.flatnonzero(np.diff(bounds)):
        out[i] = np.percentile(v[bounds[i] : bounds[i + 1]], PERCENTILES)
    return out


def _percentile_dict(row: np.ndarray) -> dict[str, float | None]:
    return {f"p{int(p)}": number(x) for p, x in zip(PERCENTILES, row)}


def _attainment(met: int, requests: int) -> float | None:
    return met / requests if requests else None


@dataclass(frozen=True)
class _Outcomes:
    """The per-request arrays every breakdown is computed from."""

    status: np.ndarray
    met: np.ndarray  # completed within the endpoint's SLO
    completed: np.ndarray
    ttft_ms: np.ndarray
    itl_ms: np.ndarray

    @classmethod
    def of(cls, result: SimulationResult) -> _Outcomes:
        req = result.requests
        status = np.asarray(req.status)
        return cls(status, slo_met(result), status == COMPLETED, req.ttft_ms, req.itl_ms)


def _breakdown(outcomes: _Outcomes, group: np.ndarray, n_groups: int) -> tuple[list[dict[str, Any]], np.ndarray]:
    """Per group (endpoint or deployment): request counts, SLO attainment and the completed
    requests' TTFT and ITL percentiles; and how many requests of each group met their SLO."""
    tally = _tally(group, n_groups, outcomes.status, outcomes.met)
    ttft = _group_percentiles(group, outcomes.ttft_ms, outcomes.completed, n_groups)
    itl = _group_percentiles(group, outcomes.itl_ms, outcomes.completed, n_groups)
    rows = [
        {
            "requests": int(tally["requests"][i]),
            "completed": int(tally["completed"][i]),
            "rejected": int(tally["rejected"][i]),
            "unfinished": int(tally["unfinished"][i]),
            "slo_attainment": _attainment(int(tally["met"][i]), int(tally["requests"][i])),
            "ttft_ms": _percentile_dict(ttft[i]),
            "itl_ms": _percentile_dict(itl[i]),
        }
        for i in range(n_groups)
    ]
    return rows, tally["met"]


def _endpoints(result: SimulationResult, outcomes: _Outcomes) -> dict[str, dict[str, Any]]:
    endpoint = np.asarray(result.requests.endpoint, dtype=np.intp)
    rows, _ = _breakdown(outcomes, endpoint, len(result.endpoints))
    endpoints = {}
    for name, row in zip(result.endpoints, rows, strict=True):
        latency = {"ttft_ms": row.pop("ttft_ms"), "itl_ms": row.pop("itl_ms")}
        sla = {"ttft_ms": result.endpoint_sla[name][0], "itl_ms": result.endpoint_sla[name][1]}
        endpoints[name] = {**row, "sla": sla, **latency}
    return endpoints


def _pool_gpu_hours(result: SimulationResult, spec: DeploymentSpec) -> dict[PoolRole, float]:
    return {role: result.gpu_seconds.get((spec.name, role), 0.0) / 3600.0 for role in spec.pools}


def _deployments(
    result: SimulationResult, rows: list[dict[str, Any]], stability: ScalingStability
) -> dict[str, dict[str, Any]]:
    deployments = {}
    for spec, row in zip(result.deployments, rows, strict=True):
        by_pool = _pool_gpu_hours(result, spec)
        deployments[spec.name] = {
            "tenant": spec.tenant,
            "endpoint": spec.endpoint,
            "mode": spec.mode,
            **row,
            "gpu_hours": sum(by_pool.values()),
            "gpu_hours_by_pool": by_pool,
            "scale_events": int(result.scale_events.get(spec.name, 0)),
            "reversals_per_hour": stability.deployments[spec.name].reversals_per_hour,
            "target_changes_per_pool_hour": stability.deployments[spec.name].target_changes_per_pool_hour,
        }
    return deployments


def _tenants(result: SimulationResult, rows: list[dict[str, Any]], met: np.ndarray) -> dict[str, dict[str, Any]]:
    """Requests, SLO attainment and GPU-hours summed over each tenant's deployments (``rows`` and
    ``met``: per deployment)."""
    tenants: dict[str, dict[str, Any]] = {}
    for i, spec in enumerate(result.deployments):
        tenant = tenants.setdefault(spec.tenant, {"requests": 0, "met": 0, "gpu_hours": 0.0, "deployments": []})
        tenant["requests"] += rows[i]["requests"]
        tenant["met"] += int(met[i])
        tenant["gpu_hours"] += sum(_pool_gpu_hours(result, spec).values())
        tenant["deployments"].append(spec.name)
    for tenant in tenants.values():
        tenant["slo_attainment"] = _attainment(tenant.pop("met"), tenant["requests"])
    return tenants


def _fleet(result: SimulationResult, outcomes: _Outcomes, stability: ScalingStability) -> dict[str, Any]:
    gpu_hours_by_type: dict[str, float] = {}
    for spec in result.deployments:
        for role, hours in _pool_gpu_hours(result, spec).items():
            gpu_type = spec.pools[role].gpu_type
            gpu_hours_by_type[gpu_type] = gpu_hours_by_type.get(gpu_type, 0.0) + hours
    status = outcomes.status
    n = int(status.size)
    return {
        "gpu_hours": sum(result.gpu_seconds.values()) / 3600.0,
        "gpu_hours_by_type": gpu_hours_by_type,
        "max_gpus_in_use": dict(result.max_gpus_in_use),
        "gpu_inventory": dict(result.gpu_inventory),
        "budget_violations": int(result.budget_violations),
        "requests": n,
        "completed": int(outcomes.completed.sum()),
        "rejected": int((status == REJECTED).sum()),
        "unfinished": int((status == UNFINISHED).sum()),
        "unrouted": int((np.asarray(result.requests.deployment) < 0).sum()),
        "slo_attainment": _attainment(int(outcomes.met.sum()), n),
        "reversals_per_deployment_hour": stability.reversals_per_deployment_hour,
        "target_changes_per_pool_hour": stability.target_changes_per_pool_hour,
    }


def summarize(result: SimulationResult) -> dict[str, Any]:
    """The run's headline numbers as a JSON-ready dict (no NaN: undefined values are None)."""
    outcomes = _Outcomes.of(result)
    n = int(outcomes.status.size)
    deployment = np.asarray(result.requests.deployment, dtype=np.intp)
    deployment_rows, deployment_met = _breakdown(outcomes, deployment, len(result.deployments))
    stability = scaling_stability(result)
    return {
        "name": result.name,
        "policy": result.policy,
        "clairvoyant": bool(result.clairvoyant),
        "seed": int(result.seed),
        "duration_s": number(result.duration_s),
        "simulated_seconds": number(result.simulated_seconds),
        "wall_seconds": number(result.wall_seconds),
        "requests_per_wall_second": number(n / result.wall_seconds) if result.wall_seconds > 0 else None,
        "fleet": _fleet(result, outcomes, stability),
        "endpoints": _endpoints(result, outcomes),
        "deployments": _deployments(result, deployment_rows, stability),
        "tenants": _tenants(result, deployment_rows, deployment_met),
        "notes": list(result.notes),
    }


def priority_weighted_attainment(summary: dict[str, Any], priorities: dict[str, float]) -> float:
    """SLO attainment with each tenant's requests weighted by its priority (1 when unlisted, as
    in a tenant policy file): the share of priority-weighted requests served within their SLO.
    A tenant without requests weighs nothing (its attainment is null, not 0)."""
    weighted = total = 0.0
    for name, tenant in summary["tenants"].items():
        if not tenant["requests"]:
            continue
        weight = priorities.get(name, 1.0) * tenant["requests"]
        weighted += weight * tenant["slo_attainment"]
        total += weight
    return weighted / total if total else float("nan")
