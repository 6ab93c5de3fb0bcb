"""One endpoint, many pools: the planner's routing shares and admission limit, written to the cluster.

- Routing: a Gateway API ``HTTPRoute`` (``gateway.networking.k8s.io/v1``) names one ``backendRef``
  per deployment (its frontend Service or InferencePool). The planner's share of each deployment
  becomes that backendRef's ``weight`` (share x ``weight_scale``). Only the configured backends'
  weights are touched, with a JSON patch carrying the route's ``resourceVersion`` (a concurrent
  writer makes it a 409 Conflict: re-read and retry). Every agent of the endpoint gets the same
  shares from the planner, so they all write the same weights; unchanged weights are not written.
- Admission: the limit (requests/s the endpoint admits, or none) is optionally written to an
  Envoy Gateway ``BackendTrafficPolicy`` as a local rate limit of ``round(rps * 60)`` requests
  per minute (a merge patch of ``spec.rateLimit``; no limit removes it). See docs/kubernetes.md.
"""

from __future__ import annotations

import logging
from typing import Any

from kubernetes_asyncio import client

from fleet_planner.kube import JSON_PATCH, MERGE_PATCH, patch_as, status_of
from local_agent.connectors.kubernetes.config import HTTPRouteConfig, RateLimitPolicyConfig

log = logging.getLogger(__name__)

ROUTE_GROUP, ROUTE_VERSION, ROUTE_PLURAL = "gateway.networking.k8s.io", "v1", "httproutes"


class RouteError(RuntimeError):
    """The HTTPRoute does not carry the backends the config names, or cannot be written."""


def route_weights(routing: dict[str, float], route: HTTPRouteConfig) -> dict[str, int]:
    """backendRef name -> weight, for the configured deployments the planner routed."""
    unknown = sorted(set(routing) - set(route.backends))
    if unknown:
        raise RouteError(f"HTTPRoute {route.name}: no backend configured for deployment(s) {', '.join(unknown)}")
    return {route.backends[dep]: max(0, round(share * route.weight_scale)) for dep, share in routing.items()}


def weight_patch(obj: dict[str, Any], weights: dict[str, int]) -> list[dict[str, Any]]:
    """JSON patch ops setting the weights (empty when nothing changes); RouteError on a missing backend."""
    ops: list[dict[str, Any]] = []
    seen: set[str] = set()
    for i, rule in enumerate((obj.get("spec") or {}).get("rules") or []):
        for j, ref in enumerate(rule.get("backendRefs") or []):
            name = ref.get("name")
            if name in weights:
                seen.add(name)
                if ref.get("weight", 1) != weights[name]:
                    ops.append({"op": "add", "path": f"/spec/rules/{i}/backendRefs/{j}/weight", "value": weights[name]})
    missing = sorted(set(weights) - seen)
    if missing:
        raise RouteError(f"HTTPRoute {obj['metadata']['name']} has no backendRef {', '.join(missing)}")
    if ops:
        rv = obj["metadata"]["resourceVersion"]
        ops.insert(0, {"op": "replace", "path": "/metadata/resourceVersion", "value": rv})
    return ops


def rate_limit_patch(admission_rps: float | None) -> dict[str, Any]:
    """Merge patch of a BackendTrafficPolicy's ``spec.rateLimit`` for an admission limit (None: none)."""
    if admission_rps is None:
        return {"spec": {"rateLimit": None}}
    per_minute = max(1, round(admission_rps * 60))
    rule = {"limit": {"requests": per_minute, "unit": "Minute"}}
    return {"spec": {"rateLimit": {"type": "Local", "local": {"rules": [rule]}}}}


class EndpointWriter:
    """Writes routing weights and the admission limit of one endpoint."""

    def __init__(
        self,
        api: client.CustomObjectsApi,
        namespace: str,
        route: HTTPRouteConfig | None,
        policy: RateLimitPolicyConfig | None,
        *,
        conflict_retries: int = 5,
    ):
        self.api = api
        self.namespace = namespace
        self.route = route
        self.policy = policy
        self.conflict_retries = conflict_retries
        self._last_limit: tuple[float | None] | None = None

    async def apply(self, routing: dict[str, float], admission_rps: float | None) -> None:
        if self.route is not None and routing:
            await self._weights(route_weights(routing, self.route))
        if self.policy is not None and self._last_limit != (admission_rps,):
            await self._rate_limit(admission_rps)
            self._last_limit = (admission_rps,)

    async def _weights(self, weights: dict[str, int]) -> None:
        assert self.route is not None
        namespace = self.route.namespace or self.namespace
        for attempt in range(self.conflict_retries + 1):
            obj = await self.api.get_namespaced_custom_object(
                ROUTE_GROUP, ROUTE_VERSION, namespace, ROUTE_PLURAL, self.route.name
            )
            ops = weight_patch(obj, weights)
            if not ops:
                return
            try:
                await self.api.patch_namespaced_custom_object(
                    ROUTE_GROUP, ROUTE_VERSION, namespace, ROUTE_PLURAL, self.route.name, ops, **patch_as(JSON_PATCH)
                )
            except Exception as exc:
                if status_of(exc) == 409 and attempt < self.conflict_retries:
                    continue
                raise
            log.info("HTTPRoute %s/%s weights: %s", namespace, self.route.name, weights)
            return

    async def _rate_limit(self, admission_rps: float | None) -> None:
        assert self.policy is not None
        p = self.policy
        await self.api.patch_namespaced_custom_object(
            p.group,
            p.version,
            p.namespace or self.namespace,
            p.plural,
            p.name,
            rate_limit_patch(admission_rps),
            **patch_as(MERGE_PATCH),
        )
        log.info("rate-limit policy %s: admission %s", p.name, "unlimited" if admission_rps is None else admission_rps)
