"""Reading DynamoGraphDeployments and their pods: pure functions over the API's JSON objects.

Field paths as real clusters have them (``nvidia.com/v1alpha1``; the vendored CRD is in
``kube_testserver/crds``): services are a map ``spec.services.<name>``; a service's role is its
``subComponentType`` (``prefill``/``decode``; newer operators) or, when that is absent, a
``componentType`` of ``prefill``/``decode``/``worker``; GPUs per replica come from
``resources.requests.gpu`` (else ``resources.limits.gpu``, else the main container's
``nvidia.com/gpu`` request) times ``multinode.nodeCount``. Pods carry the labels
``nvidia.com/dynamo-graph-deployment-name`` and ``nvidia.com/dynamo-component``.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

GROUP, VERSION = "nvidia.com", "v1alpha1"
DGD_PLURAL = "dynamographdeployments"
ADAPTER_PLURAL = "dynamographdeploymentscalingadapters"
DGD_LABEL = "nvidia.com/dynamo-graph-deployment-name"
COMPONENT_LABEL = "nvidia.com/dynamo-component"
GPU_RESOURCE = "nvidia.com/gpu"
ROLE_NAMES = {"prefill": "prefill", "decode": "decode", "worker": "agg"}  # DGD role -> pool role

Obj = dict[str, Any]
PodState = Literal["pending", "starting", "running", "terminating"]
POD_STATES: tuple[PodState, ...] = ("pending", "starting", "running", "terminating")


class GpuCountUnreadable(RuntimeError):
    """A service's GPUs per replica cannot be read: the connector fails closed (no decision)."""


class DgdError(RuntimeError):
    """The DGD does not have what the agent's config names (service, role)."""


class Rollout(BaseModel):
    """Whether the operator has caught up with the DGD's latest spec."""

    model_config = ConfigDict(frozen=True)
    generation: int
    observed_generation: int | None
    ready: bool
    state: str

    @property
    def settled(self) -> bool:
        return self.ready and self.observed_generation is not None and self.observed_generation >= self.generation


def services(dgd: Obj) -> dict[str, Obj]:
    value = (dgd.get("spec") or {}).get("services") or {}
    return dict(value) if isinstance(value, dict) else {}


def role_of(service: Obj) -> str | None:
    """The pool role of a DGD service (prefill/decode/agg), None for frontends and the like."""
    for key in ("subComponentType", "componentType"):
        value = str(service.get(key) or "").lower()
        if value in ROLE_NAMES:
            return ROLE_NAMES[value]
    return None


def services_by_role(dgd: Obj, explicit: dict[str, str]) -> dict[str, str]:
    """Pool role -> service name: the config's mapping, else detected from the service types."""
    names = services(dgd)
    name = dgd["metadata"]["name"]
    if explicit:
        missing = sorted(set(explicit.values()) - set(names))
        if missing:
            raise DgdError(f"DGD {name}: no service {', '.join(missing)} (has {', '.join(sorted(names))})")
        return dict(explicit)
    found: dict[str, str] = {}
    for service_name, service in sorted(names.items()):
        role = role_of(service)
        if role is None:
            continue
        if role in found:
            raise DgdError(f"DGD {name}: services {found[role]} and {service_name} both have role {role}; name them")
        found[role] = service_name
    return found


def _quantity(value: Any) -> int | None:
    """A whole GPU count from a Kubernetes quantity (``2``, ``"2"``); None when it is not one."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 0 else None
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


def gpus_per_replica(dgd: Obj, service_name: str) -> int:
    """GPUs one replica of the service requests; :class:`GpuCountUnreadable` when it cannot be read."""
    service = services(dgd).get(service_name)
    where = f"DGD {dgd['metadata']['name']} service {service_name}"
    if service is None:
        raise GpuCountUnreadable(f"{where}: no such service")
    resources = service.get("resources") or {}
    main = ((service.get("extraPodSpec") or {}).get("mainContainer") or {}).get("resources") or {}
    candidates = [
        ("resources.requests.gpu", (resources.get("requests") or {}).get("gpu")),
        ("resources.limits.gpu", (resources.get("limits") or {}).get("gpu")),
        (
            f"extraPodSpec.mainContainer.resources.requests[{GPU_RESOURCE}]",
            (main.get("requests") or {}).get(GPU_RESOURCE),
        ),
        (f"extraPodSpec.mainContainer.resources.limits[{GPU_RESOURCE}]", (main.get("limits") or {}).get(GPU_RESOURCE)),
    ]
    for field, value in candidates:
        if value is None:
            continue
        count = _quantity(value)
        if count is None or count == 0:
            raise GpuCountUnreadable(f"{where}: {field} = {value!r} is not a whole, positive GPU count")
        nodes = ((service.get("multinode") or {}).get("nodeCount")) or 1
        return count * int(nodes)
    raise GpuCountUnreadable(f"{where}: no GPU request (resources.requests.gpu or the main container's {GPU_RESOURCE})")


ENGINE_ARGS_PATH = ("extraPodSpec", "mainContainer", "args")


def engine_args(dgd: Obj, service_name: str) -> list[str]:
    """The engine's arguments of a service (``extraPodSpec.mainContainer.args``); DgdError when
    the service has none to carry engine knobs."""
    node: Any = services(dgd).get(service_name) or {}
    for key in ENGINE_ARGS_PATH:
        node = node.get(key) if isinstance(node, dict) else None
    if not isinstance(node, list) or not node or not all(isinstance(a, str) for a in node):
        raise DgdError(
            f"DGD {dgd['metadata']['name']} service {service_name}: no {'.'.join(ENGINE_ARGS_PATH)} "
            "(a list of strings) to set engine knobs in"
        )
    return list(node)


def nodes_per_replica(dgd: Obj, service_name: str) -> int:
    return int(((services(dgd).get(service_name) or {}).get("multinode") or {}).get("nodeCount") or 1)


def spec_replicas(dgd: Obj, service_name: str) -> int | None:
    value = (services(dgd).get(service_name) or {}).get("replicas")
    return value if isinstance(value, int) else None


def rollout(dgd: Obj) -> Rollout:
    """Readiness from the ``Ready`` condition; the generation the operator has seen from the
    top-level ``status.observedGeneration`` (newer operators) or the Ready condition's own."""
    status = dgd.get("status") or {}
    ready = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), None)
    observed = status.get("observedGeneration")
    if observed is None and ready is not None:
        observed = ready.get("observedGeneration")
    return Rollout(
        generation=int(dgd["metadata"].get("generation") or 1),
        observed_generation=int(observed) if observed is not None else None,
        ready=ready is not None and ready.get("status") == "True",
        state=str(status.get("state") or ""),
    )


def pod_state(pod: Obj) -> PodState | None:
    """Lifecycle state of a pod as far as GPUs go; None for finished pods (they hold none)."""
    if (pod.get("metadata") or {}).get("deletionTimestamp"):
        return "terminating"
    status = pod.get("status") or {}
    phase = status.get("phase") or "Pending"
    if phase in ("Succeeded", "Failed"):
        return None
    conditions = {c.get("type"): c.get("status") for c in status.get("conditions") or []}
    if phase == "Running" and conditions.get("Ready") == "True":
        return "running"
    if conditions.get("PodScheduled") == "False" and not (pod.get("spec") or {}).get("nodeName"):
        return "pending"  # the scheduler tried and cannot place it (e.g. no GPU free): may never run
    return "starting"  # includes a pod the scheduler has not looked at yet


def pod_gpus(pod: Obj) -> int:
    """GPUs a pod holds: its containers' ``nvidia.com/gpu`` requests (limits when no request)."""
    total = 0
    for container in (pod.get("spec") or {}).get("containers") or []:
        resources = container.get("resources") or {}
        value = (resources.get("requests") or {}).get(GPU_RESOURCE, (resources.get("limits") or {}).get(GPU_RESOURCE))
        total += _quantity(value) or 0
    return total


def pods_by_state(pods: list[Obj], service_name: str) -> dict[PodState, list[Obj]]:
    out: dict[PodState, list[Obj]] = {state: [] for state in POD_STATES}
    for pod in pods:
        if ((pod.get("metadata") or {}).get("labels") or {}).get(COMPONENT_LABEL) != service_name:
            continue
        state = pod_state(pod)
        if state is not None:
            out[state].append(pod)
    return out


def replicas(pod_count: int, nodes: int) -> int:
    """Replicas a number of pods makes up (a multinode replica has ``nodes`` pods; partial counts)."""
    return math.ceil(pod_count / nodes)
