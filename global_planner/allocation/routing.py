"""Routing and admission: how an endpoint's traffic follows the allocation.

Each deployment of an endpoint receives the load its agent planned for as far as its allocated
capacity carries it; what one cannot carry goes to those with spare capacity; what nobody can
carry, on an endpoint the allocation left short, is shed at the gateway (``admission_rps``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection
from dataclasses import dataclass

from global_planner.allocation.models import PoolDemand
from global_planner.allocation.stability import OVERLOAD_UTILISATION, SHORT_UTILISATION, contested_endpoints


@dataclass(frozen=True)
class EndpointPlan:
    """How an endpoint's traffic is served: each deployment's share, and the admission limit
    (requests/s) when the capacity allocated cannot carry the planned load (None otherwise)."""

    weights: dict[str, float]
    admission_rps: float | None


# A pool carries its planned load at the first count worth this share of its curve's best; it
# saturates (the queue stops draining) around the curve's knee, half of its best.
_REACH = 0.99
_KNEE = 0.5


def _sla_capacity(pool: PoolDemand, replicas: int, reach: float = _REACH) -> float:
    """Requests/s ``replicas`` of ``pool`` carry, read from its own curve: the planned load
    (``demand_weight``) scaled by ``replicas`` over the count whose value reaches ``reach`` of the
    curve's best. Where that count is one, the curve only says one replica carries at least the
    planned load, so the agent's own per-replica capacity (``replica_capacity_rps``) counts when it
    is more: a deployment planned for 0.8 rps whose replica carries 26 was credited with 0.8 rps a
    replica, and its endpoint shed half its traffic while a sibling deployment had no GPUs. Without
    a usable curve, the nominal ``replicas * replica_capacity_rps`` (1 rps per replica when unknown)."""
    curve = pool.curve
    best = max(curve)
    if pool.demand_weight > 0 and best > 0:
        needed = next(k for k, value in enumerate(curve) if value >= reach * best)
        if needed > 1:
            return pool.demand_weight * replicas / needed
        if needed == 1:
            return replicas * max(pool.demand_weight, pool.replica_capacity_rps or 0.0)
    return replicas * (pool.replica_capacity_rps or 1.0)


def endpoint_plans(
    pools: list[PoolDemand], replicas: dict[str, int], shedding: Collection[str] = ()
) -> dict[str, EndpointPlan]:
    """Per endpoint, each deployment's traffic share and whether excess traffic must be shed.

    Each deployment receives the load it planned for (its ``demand_weight``) as far as its
    allocated capacity carries it; what some cannot carry goes to those with spare capacity, and
    what nobody can carry is *shed* (``admission_rps``) rather than queued: a queue fed faster
    than it drains delays every request past its SLO, so an overloaded deployment would serve
    almost nobody in time, while admitting only what fits serves that share fully — the value
    the allocation credited a partly served pool with. Routing by planned load rather than raw
    capacity keeps a deployment granted more than its plan from drawing traffic it was not sized
    for. Capacity is a deployment's bottleneck pool's (see :func:`_sla_capacity`). Only endpoints
    the allocation left short of what their agents want (``wanted_replicas``) *and* observed
    overloaded (a pool serving more than ``OVERLOAD_UTILISATION`` of its running replicas'
    capacity, see :mod:`~global_planner.allocation.stability`) shed: the curves' capacity is a
    forecast's, and shedding on it alone turned away requests the replicas served. An endpoint
    already ``shedding`` keeps shedding down to the bar of a shortage (``SHORT_UTILISATION``): its
    queue was drained by the shedding, so starting and stopping at one bar turned the limit on and
    off every few rounds while the queue refilled in between (a dead band, as for scaling).
    """
    by_endpoint: dict[str, list[PoolDemand]] = defaultdict(list)
    cut: set[str] = set()  # endpoints with a pool granted less than its agent wants
    overloaded = contested_endpoints(pools, OVERLOAD_UTILISATION, count_late=False)
    overloaded |= contested_endpoints(pools, SHORT_UTILISATION, count_late=False) & set(shedding)
    for pool in pools:
        by_endpoint[pool.endpoint].append(pool)
        if (
            pool.wanted_replicas is not None
            and replicas[pool.pool_id] < pool.wanted_replicas
            and pool.endpoint in overloaded
        ):
            cut.add(pool.endpoint)
    capacity: dict[str, dict[str, float]] = defaultdict(dict)
    saturation: dict[str, dict[str, float]] = defaultdict(dict)
    planned: dict[str, dict[str, float]] = defaultdict(dict)
    plans: dict[str, EndpointPlan] = {}
    for endpoint, members in by_endpoint.items():
        if endpoint not in cut and len({pool.deployment for pool in members}) == 1:
            plans[endpoint] = EndpointPlan({members[0].deployment: 1.0}, None)  # nothing to split or shed
            continue
        for pool in members:
            count = replicas[pool.pool_id]
            for table, value in (
                (capacity, _sla_capacity(pool, count)),
                (saturation, _sla_capacity(pool, count, _KNEE)),
            ):
                table[endpoint][pool.deployment] = min(table[endpoint].get(pool.deployment, value), value)
            planned[endpoint][pool.deployment] = max(planned[endpoint].get(pool.deployment, 0.0), pool.demand_weight)
    for endpoint, caps in capacity.items():
        names = sorted(caps)
        load = sum(planned[endpoint].values())
        total_capacity = sum(caps.values())
        if load <= 0 or total_capacity <= 0:
            # No plan: split by capacity (evenly without any), admit everything.
            share = caps if total_capacity > 0 else dict.fromkeys(names, 1.0)
            total = sum(share.values())
            plans[endpoint] = EndpointPlan({name: share[name] / total for name in names}, None)
            continue
        share = {name: min(planned[endpoint][name], caps[name]) for name in names}
        spill = load - sum(share.values())
        spare = {name: caps[name] - share[name] for name in names}
        room = sum(spare.values())
        if spill > 0 and room > 0:
            moved = min(spill, room)
            share = {name: share[name] + moved * spare[name] / room for name in names}
            spill -= moved
        total = sum(share.values())
        weights = {name: share[name] / total for name in names} if total > 0 else dict.fromkeys(names, 1.0 / len(names))
        # Shed only where the allocation left a pool short of what its agent wants (an endpoint
        # that got everything asked for keeps every request: its agent's sizing is trusted over
        # this coarser estimate), and only past the replicas' saturation (the curve's knee, not
        # its 99% point): shedding is there to stop a queue that cannot drain, not to turn away
        # requests that would merely be slower.
        limit = max(total, sum(saturation[endpoint].values()))
        short = endpoint in cut and spill > 1e-9 * load and limit < load
        plans[endpoint] = EndpointPlan(weights, limit if short else None)
    return plans
