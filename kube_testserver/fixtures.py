"""Objects for tests and the demo (every one passes the real schemas), a kubeconfig for the test
server, and a tiny fake controller that plays the Dynamo operator, the scheduler and the kubelet."""

from __future__ import annotations

import asyncio
import copy
from contextlib import suppress
from pathlib import Path
from typing import Any

import yaml

from kube_testserver.server import KubeStore

Obj = dict[str, Any]
DGD_LABEL = "nvidia.com/dynamo-graph-deployment-name"
COMPONENT_LABEL = "nvidia.com/dynamo-component"


def kubeconfig(path: Path, url: str, token: str, namespace: str = "default") -> Path:
    """A kubeconfig file pointing at the test server (what ``kubectl config view`` would write)."""
    data = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "test", "cluster": {"server": url}}],
        "users": [{"name": "test", "user": {"token": token}}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test", "namespace": namespace}}],
        "current-context": "test",
    }
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def dgd(name: str, services: dict[str, tuple[str, int, str | None]], *, namespace: str = "default") -> Obj:
    """A v1alpha1 DGD: service name -> (componentType, replicas, GPUs per replica or None), plus a frontend."""
    spec_services: dict[str, Obj] = {"Frontend": {"componentType": "frontend", "replicas": 1}}
    for service, (component_type, replicas, gpus) in services.items():
        entry: Obj = {"componentType": component_type, "replicas": replicas}
        if gpus is not None:
            entry["resources"] = {"requests": {"gpu": gpus}, "limits": {"gpu": gpus}}
        spec_services[service] = entry
    return {
        "apiVersion": "nvidia.com/v1alpha1",
        "kind": "DynamoGraphDeployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"backendFramework": "vllm", "services": spec_services},
    }


def adapter(dgd_name: str, service: str, replicas: int) -> Obj:
    return {
        "apiVersion": "nvidia.com/v1alpha1",
        "kind": "DynamoGraphDeploymentScalingAdapter",
        "metadata": {"name": f"{dgd_name}-{service.lower()}"},
        "spec": {"dgdRef": {"name": dgd_name, "service": service}, "replicas": replicas},
    }


def httproute(name: str, backends: list[str]) -> Obj:
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": name},
        "spec": {
            "parentRefs": [{"name": "inference-gateway"}],
            "rules": [{"backendRefs": [{"name": b, "port": 8000, "weight": 1} for b in backends]}],
        },
    }


def rate_limit_policy(name: str, route: str) -> Obj:
    return {
        "apiVersion": "gateway.envoyproxy.io/v1alpha1",
        "kind": "BackendTrafficPolicy",
        "metadata": {"name": name},
        "spec": {"targetRefs": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": route}]},
    }


def pod(
    dgd_name: str,
    service: str,
    index: int,
    gpus: int,
    *,
    phase: str = "Running",
    ready: bool = True,
    unschedulable: bool = False,
) -> Obj:
    """A worker pod as the operator labels it, scheduled or not, ready or not; ``unschedulable``:
    a Pending pod the scheduler could not place (``PodScheduled=False``, as kube-scheduler sets it)."""
    status: Obj = {"phase": phase}
    if unschedulable:
        status["conditions"] = [
            {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/4 nodes are available"}
        ]
    spec: Obj = {
        "containers": [
            {
                "name": "main",
                "image": "nvcr.io/nvidia/ai-dynamo/vllm-runtime:0.6.1",
                "resources": {"requests": {"nvidia.com/gpu": str(gpus)}, "limits": {"nvidia.com/gpu": str(gpus)}},
            }
        ]
    }
    if phase == "Running":
        spec["nodeName"] = "gpu-node-1"
        status["conditions"] = [{"type": "Ready", "status": "True" if ready else "False"}]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"{dgd_name}-{service.lower()}-{index}",
            "labels": {DGD_LABEL: dgd_name, COMPONENT_LABEL: service},
        },
        "spec": spec,
        "status": status,
    }


class FakeController:
    """Makes pods follow each DGD service's desired replicas (adapter first, else the DGD spec).

    Each pass: an adapter's replicas are copied into the DGD (the adapter controller), missing pods
    are created ready after ``startup_passes`` passes, surplus pods are deleted (terminating) and
    removed one pass later, and the DGD's Ready condition follows its generation.
    """

    def __init__(self, store: KubeStore, namespace: str = "default", *, startup_passes: int = 1):
        self.store = store
        self.namespace = namespace
        self.startup_passes = startup_passes
        self._age: dict[str, int] = {}

    def step(self) -> None:
        store, ns = self.store, self.namespace
        dgd_res = store.resource_of("DynamoGraphDeployment")
        adapter_res = store.resource_of("DynamoGraphDeploymentScalingAdapter")
        pod_res = store.resource_of("Pod")
        for adapter_obj in store.list(adapter_res, ns, {}):
            ref = adapter_obj["spec"]["dgdRef"]
            graph = copy.deepcopy(store.get(dgd_res, ns, ref["name"]))
            if graph["spec"]["services"][ref["service"]].get("replicas") != adapter_obj["spec"]["replicas"]:
                graph["spec"]["services"][ref["service"]]["replicas"] = adapter_obj["spec"]["replicas"]
                store.replace(dgd_res, ns, ref["name"], graph)
            status = {"replicas": adapter_obj["spec"]["replicas"], "selector": f"{DGD_LABEL}={ref['name']}"}
            if adapter_obj.get("status") != status:
                store.replace(
                    adapter_res,
                    ns,
                    adapter_obj["metadata"]["name"],
                    {**adapter_obj, "status": status},
                    subresource="status",
                )
        for graph in store.list(dgd_res, ns, {}):
            self._pods_for(graph, pod_res)
            self._ready_condition(graph, dgd_res)

    def _pods_for(self, graph: Obj, pod_res: Any) -> None:
        store, ns, name = self.store, self.namespace, graph["metadata"]["name"]
        for service, spec in graph["spec"]["services"].items():
            gpus = int(((spec.get("resources") or {}).get("requests") or {}).get("gpu") or 0)
            if not gpus:
                continue
            pods = store.list(pod_res, ns, {DGD_LABEL: name, COMPONENT_LABEL: service})
            for p in pods:
                if p["metadata"].get("deletionTimestamp"):
                    store.remove(pod_res, ns, p["metadata"]["name"])
            live = sorted(
                (p for p in pods if not p["metadata"].get("deletionTimestamp")),
                key=lambda p: int(p["metadata"]["name"].rsplit("-", 1)[1]),
            )
            desired = int(spec.get("replicas") or 0)
            for p in live[desired:]:
                store.delete(pod_res, ns, p["metadata"]["name"])
            used = {int(p["metadata"]["name"].rsplit("-", 1)[1]) for p in live}
            index = 0
            for _ in range(desired - len(live)):
                while index in used:
                    index += 1
                used.add(index)
                store.create(pod_res, ns, pod(name, service, index, gpus, phase="Pending", ready=False))
            for p in live[:desired]:
                key = p["metadata"]["uid"]
                self._age[key] = self._age.get(key, 0) + 1
                if p["status"].get("phase") == "Pending" and self._age[key] >= self.startup_passes:
                    running = pod(name, service, int(p["metadata"]["name"].rsplit("-", 1)[1]), gpus)
                    bound = store.replace(pod_res, ns, p["metadata"]["name"], {**p, "spec": running["spec"]})
                    store.replace(
                        pod_res, ns, p["metadata"]["name"], {**bound, "status": running["status"]}, subresource="status"
                    )

    def _ready_condition(self, graph: Obj, dgd_res: Any) -> None:
        generation = graph["metadata"]["generation"]
        condition = {
            "type": "Ready",
            "status": "True",
            "reason": "AllServicesReady",
            "message": "",
            "lastTransitionTime": "2026-01-01T00:00:00Z",
            "observedGeneration": generation,
        }
        status = {"state": "successful", "conditions": [condition]}
        if graph.get("status") != status:
            self.store.replace(
                dgd_res, self.namespace, graph["metadata"]["name"], {**graph, "status": status}, subresource="status"
            )

    async def run(self, stop: asyncio.Event, every_s: float = 0.2) -> None:
        while not stop.is_set():
            self.step()
            with suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), every_s)
