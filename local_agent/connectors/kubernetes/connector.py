"""The Kubernetes connector: scale a DynamoGraphDeployment's services, count what its pods hold.

- **Read**: the DGD, its scaling adapters and its pods come from watch-fed caches
  (:class:`Informer`: list, watch, relist every ``resync_s`` and on ``410 Gone``).
- **Counts from pods**, not only from the spec: per pool, running (Ready) pods are ``ready``;
  starting pods (not ready, or not yet looked at by the scheduler) are ``starting``; pods the
  scheduler marked unschedulable (``PodScheduled=False``) are ``pending``: they hold no GPU, and
  the agent asks for no more replicas of that pool while any wait (its UNSCHEDULABLE rule);
  terminating pods are ``draining`` (they hold their GPUs until gone). Replicas the spec asks for
  but no pod shows yet also count as ``starting``, ready pods beyond the spec's target as
  ``draining``: the agent never asks twice
  for a replica the operator is still creating, and never counts a doomed one as serving.
- **GPUs per replica** are read from the DGD's resource requests and must equal the agent
  config's ``gpus_per_replica``. When they cannot be read, or differ, the connector *fails
  closed*: ``observe_replicas`` raises :class:`GpuCountUnreadable` (the tick makes no decision) and
  ``fleet_agent_kubernetes_errors_total{reason="gpu_count"}`` counts it.
- **Scale** through the service's scaling adapter (``DynamoGraphDeploymentScalingAdapter`` whose
  ``spec.dgdRef`` names the DGD and service) via its ``scale`` subresource when one exists; else a
  JSON patch of ``spec.services.<name>.replicas`` that carries the DGD's ``resourceVersion``; a
  409 Conflict re-reads the object and retries (``conflict_retries``).
- **Engine knobs** (``apply_knobs``) go into the service's engine arguments
  (``extraPodSpec.mainContainer.args``: ``--max-num-batched-tokens``, ``--max-num-seqs`` replaced
  or appended, inside the command line when the args are one ``sh -c`` string) by a JSON patch
  guarded like the replica patch; the operator applies them in its next rollout of the service's
  pods, which ``rollout()`` follows.
- **Rollout** (``rollout()``) from the Ready condition and the observed generation.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

from kubernetes_asyncio import client
from prometheus_client import CollectorRegistry, Counter, Gauge

from fleet_planner.knobs import EngineKnobs
from fleet_planner.kube import JSON_PATCH, MERGE_PATCH, api_client, default_namespace, patch_as, status_of
from local_agent.connectors.base import Connector, ReplicaCounts
from local_agent.connectors.kubernetes import dgd as d
from local_agent.connectors.kubernetes.config import KubernetesConnectorConfig
from local_agent.connectors.kubernetes.gateway import EndpointWriter
from local_agent.connectors.kubernetes.informer import Informer

log = logging.getLogger(__name__)

Obj = dict[str, Any]


class KubernetesConnector(Connector):
    """One DGD's pools; started lazily on first use (the API client wants a running loop)."""

    def __init__(
        self,
        config: KubernetesConnectorConfig,
        deployment: str,
        gpus_per_replica: dict[str, int],
        *,
        api: client.ApiClient | None = None,
    ):
        self.config = config
        self.deployment = deployment
        self.expected_gpus = dict(gpus_per_replica)
        self.namespace = default_namespace(config.namespace)
        self._api = api
        self._own_api = api is None
        self._dgds: Informer | None = None
        self._adapters: Informer | None = None
        self._pods: Informer | None = None
        self._writer: EndpointWriter | None = None
        self._started = asyncio.Lock()
        self.registry = CollectorRegistry()
        self._metrics(self.registry)

    def _metrics(self, registry: CollectorRegistry) -> None:
        self.errors = Counter(
            "fleet_agent_kubernetes_errors",
            "Kubernetes connector failures by reason (gpu_count: GPUs per replica unreadable; the tick failed closed).",
            ["deployment", "reason"],
            registry=registry,
        )
        self.pod_gpus = Gauge(
            "fleet_agent_pod_gpus",
            "GPUs held by the DGD's pods, by pool and pod state (pending, starting, running, terminating).",
            ["deployment", "role", "state"],
            registry=registry,
        )

    def export_metrics(self, registry: CollectorRegistry) -> None:
        """Publish the connector's metrics in the agent's registry (its /metrics)."""
        self.registry = registry
        self._metrics(registry)

    async def _start(self) -> None:
        async with self._started:
            if self._dgds is not None:
                return
            if self._api is None:
                self._api = await api_client(self.config.kubeconfig, self.config.context)
            custom, core = client.CustomObjectsApi(self._api), client.CoreV1Api(self._api)
            resync = self.config.resync_s

            def dynamo_informer(plural: str) -> Informer:
                return Informer(
                    custom.list_namespaced_custom_object,
                    resync_s=resync,
                    group=d.GROUP,
                    version=d.VERSION,
                    namespace=self.namespace,
                    plural=plural,
                )

            self._dgds = dynamo_informer(d.DGD_PLURAL)
            informers = [self._dgds]
            if self.config.use_scaling_adapters:
                self._adapters = dynamo_informer(d.ADAPTER_PLURAL)
                informers.append(self._adapters)
            self._pods = Informer(
                core.list_namespaced_pod,
                resync_s=resync,
                namespace=self.namespace,
                label_selector=f"{d.DGD_LABEL}={self.config.dgd}",
            )
            informers.append(self._pods)
            try:
                for informer in informers:
                    await informer.start()
            except BaseException:
                for informer in informers:
                    await informer.stop()
                self._dgds = None
                raise
            self._writer = EndpointWriter(
                custom,
                self.namespace,
                self.config.httproute,
                self.config.rate_limit_policy,
                conflict_retries=self.config.conflict_retries,
            )

    def _dgd(self) -> Obj:
        """The DGD from the cache; refuses when a cache cannot be refreshed (no decision on stale data)."""
        assert self._dgds is not None
        for informer in (self._dgds, self._adapters, self._pods):
            if informer is not None and informer.last_error is not None:
                self.errors.labels(self.deployment, "api").inc()
                raise d.DgdError(f"Kubernetes API unreadable, cached view may be stale: {informer.last_error}")
        obj = self._dgds.objects.get(self.config.dgd)
        if obj is None:
            self.errors.labels(self.deployment, "dgd_missing").inc()
            raise d.DgdError(f"DynamoGraphDeployment {self.namespace}/{self.config.dgd} not found")
        return obj

    def _services(self, dgd: Obj) -> dict[str, str]:
        mapping = d.services_by_role(dgd, {str(role): name for role, name in self.config.services.items()})
        missing = sorted(set(self.expected_gpus) - set(mapping))
        if missing:
            raise d.DgdError(
                f"DGD {self.config.dgd}: no service for pool(s) {', '.join(missing)}; set connector.services"
            )
        return {role: mapping[role] for role in self.expected_gpus}

    def _checked_gpus(self, dgd: Obj, role: str, service: str) -> int:
        try:
            gpus = d.gpus_per_replica(dgd, service)
        except d.GpuCountUnreadable:
            self.errors.labels(self.deployment, "gpu_count").inc()
            raise
        if gpus != self.expected_gpus[role]:
            self.errors.labels(self.deployment, "gpu_count").inc()
            raise d.GpuCountUnreadable(
                f"DGD {self.config.dgd} service {service}: {gpus} GPUs per replica, the agent config says"
                f" {self.expected_gpus[role]} (deployment.pools.{role}.gpus_per_replica)"
            )
        return gpus

    def _adapter(self, service: str) -> Obj | None:
        if self._adapters is None:
            return None
        for obj in self._adapters.objects.values():
            ref = (obj.get("spec") or {}).get("dgdRef") or {}
            if ref.get("name") == self.config.dgd and ref.get("service") == service:
                return obj
        return None

    def _desired(self, dgd: Obj, service: str) -> int | None:
        adapter = self._adapter(service)
        if adapter is not None:
            return int(adapter["spec"]["replicas"])
        return d.spec_replicas(dgd, service)

    async def observe_replicas(self) -> dict[str, ReplicaCounts]:
        await self._start()
        assert self._pods is not None
        dgd = self._dgd()
        pods = list(self._pods.objects.values())
        counts: dict[str, ReplicaCounts] = {}
        for role, service in self._services(dgd).items():
            self._checked_gpus(dgd, role, service)
            nodes = d.nodes_per_replica(dgd, service)
            by_state = d.pods_by_state(pods, service)
            for state, members in by_state.items():
                self.pod_gpus.labels(self.deployment, role, state).set(sum(d.pod_gpus(p) for p in members))
            ready = d.replicas(len(by_state["running"]), nodes)
            pending = d.replicas(len(by_state["pending"]), nodes)
            starting = d.replicas(len(by_state["starting"]), nodes)
            draining = d.replicas(len(by_state["terminating"]), nodes)
            desired = self._desired(dgd, service)
            if desired is not None:
                draining += max(0, ready - desired)
                ready = min(ready, desired)
                starting = max(starting, desired - ready - pending)
            counts[role] = ReplicaCounts(ready=ready, starting=starting, draining=draining, pending=pending)
        return counts

    def rollout(self) -> d.Rollout:
        """Whether the operator has acted on the DGD's latest spec (call after a first observe)."""
        return d.rollout(self._dgd())

    async def apply(self, targets: dict[str, int]) -> None:
        await self._start()
        dgd = self._dgd()
        services = self._services(dgd)
        for role, target in targets.items():
            if role not in services:
                raise ValueError(f"unknown role {role!r}; configured: {sorted(services)}")
            if target < 0:
                raise ValueError(f"role {role!r}: negative target {target}")
        for role, target in sorted(targets.items()):
            service = services[role]
            self._checked_gpus(dgd, role, service)
            if self._desired(dgd, service) == target:
                continue
            adapter = self._adapter(service)
            if adapter is not None:
                await self._scale_adapter(adapter, target)
            else:
                await self._patch_dgd(partial(_replicas_op, service=service, replicas=target))
            log.info("DGD %s service %s -> %d replicas", self.config.dgd, service, target)

    async def _scale_adapter(self, adapter: Obj, target: int) -> None:
        custom = client.CustomObjectsApi(self._api)
        name = adapter["metadata"]["name"]
        for attempt in range(self.config.conflict_retries + 1):
            # the adapter itself, not its scale: the agent's RBAC allows get on adapters, patch on their scale
            current = await custom.get_namespaced_custom_object(
                d.GROUP, d.VERSION, self.namespace, d.ADAPTER_PLURAL, name
            )
            version = current["metadata"]["resourceVersion"]
            body = {"metadata": {"resourceVersion": version}, "spec": {"replicas": target}}
            try:
                await custom.patch_namespaced_custom_object_scale(
                    d.GROUP, d.VERSION, self.namespace, d.ADAPTER_PLURAL, name, body, **patch_as(MERGE_PATCH)
                )
                return
            except Exception as exc:
                if status_of(exc) == 409 and attempt < self.config.conflict_retries:
                    self.errors.labels(self.deployment, "conflict").inc()
                    continue
                raise

    async def apply_knobs(self, knobs: Mapping[str, EngineKnobs]) -> None:
        """Write each role's knobs into its service's engine arguments (for the next rollout)."""
        await self._start()
        cached = self._dgd()
        services = self._services(cached)
        for role in knobs:
            if role not in services:
                raise ValueError(f"unknown role {role!r}; configured: {sorted(services)}")
        for role, wanted in sorted(knobs.items()):
            service = services[role]
            if _args_op(cached, service=service, knobs=wanted) is None:
                continue  # already in the spec (the agent hands its knobs over every tick)
            patched = await self._patch_dgd(partial(_args_op, service=service, knobs=wanted))
            if patched:
                log.info("DGD %s service %s engine knobs -> %s (next rollout)", self.config.dgd, service, wanted)

    async def _patch_dgd(self, op_of: Callable[[Obj], Obj | None]) -> bool:
        """One JSON-patch operation on the DGD, made from its fresh copy by ``op_of`` (None: nothing
        to change) and guarded by its resourceVersion (409: re-read, retry). True when written."""
        custom = client.CustomObjectsApi(self._api)
        for attempt in range(self.config.conflict_retries + 1):
            dgd = await custom.get_namespaced_custom_object(
                d.GROUP, d.VERSION, self.namespace, d.DGD_PLURAL, self.config.dgd
            )
            op = op_of(dgd)
            if op is None:
                return False
            ops = [
                {"op": "replace", "path": "/metadata/resourceVersion", "value": dgd["metadata"]["resourceVersion"]},
                op,
            ]
            try:
                await custom.patch_namespaced_custom_object(
                    d.GROUP, d.VERSION, self.namespace, d.DGD_PLURAL, self.config.dgd, ops, **patch_as(JSON_PATCH)
                )
                return True
            except Exception as exc:
                if status_of(exc) == 409 and attempt < self.config.conflict_retries:
                    self.errors.labels(self.deployment, "conflict").inc()
                    await asyncio.sleep(0.05 * (attempt + 1))
                    continue
                raise
        return False

    async def apply_routing(self, routing: dict[str, float], admission_rps: float | None) -> None:
        """Write the planner's routing shares to the HTTPRoute and its admission limit to the policy
        (the agent's own metrics export the limit: ``fleet_agent_admission_limit_rps``)."""
        await self._start()
        assert self._writer is not None
        await self._writer.apply(routing, admission_rps)

    async def close(self) -> None:
        for informer in (self._dgds, self._adapters, self._pods):
            if informer is not None:
                await informer.stop()
        self._dgds = self._adapters = self._pods = None
        if self._own_api and self._api is not None:
            await self._api.close()
            self._api = None


def _pointer(service: str) -> str:
    """A service name as a JSON-pointer segment."""
    return service.replace("~", "~0").replace("/", "~1")


def _replicas_op(_dgd: Obj, *, service: str, replicas: int) -> Obj:
    return {"op": "add", "path": "/spec/services/" + _pointer(service) + "/replicas", "value": replicas}


def _args_op(dgd: Obj, *, service: str, knobs: EngineKnobs) -> Obj | None:
    """The JSON-patch operation setting ``knobs`` in a service's engine args (None: already set)."""
    args = d.engine_args(dgd, service)
    wanted = knobs.with_engine_args(args)
    if wanted == args:
        return None
    path = "/spec/services/" + _pointer(service) + "/" + "/".join(d.ENGINE_ARGS_PATH)
    return {"op": "replace", "path": path, "value": wanted}
