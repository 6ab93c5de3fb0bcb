"""The Kubernetes connector through kubernetes-asyncio against the test API server: counts from
pods, scaling through the adapter or a guarded DGD patch, 409 retries, fail-closed GPU counts,
watch resync, HTTPRoute weights and the rate-limit policy."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from kubernetes_asyncio import client

from fleet_planner.errors import InputError
from fleet_planner.kube import api_client
from kube_testserver import KubeTestServer
from kube_testserver import fixtures as fx
from local_agent.config import PrometheusQueries, parse_config
from local_agent.connectors.base import ReplicaCounts
from local_agent.connectors.kubernetes import DgdError, GpuCountUnreadable, KubernetesConnectorConfig
from local_agent.connectors.kubernetes import dgd as d
from local_agent.connectors.kubernetes.connector import KubernetesConnector
from local_agent.connectors.kubernetes.gateway import RouteError
from local_agent.observe.prometheus import PrometheusSource
from local_agent.telemetry import AgentMetrics

NS = "default"
SERVICES = {"prefill": "VllmPrefillWorker", "decode": "VllmDecodeWorker"}


class Cluster:
    def __init__(self, server: KubeTestServer, api: client.ApiClient):
        self.server, self.api, self.store = server, api, server.store
        self.controller = fx.FakeController(self.store)

    def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        return self.store.create(self.store.resource_of(obj["kind"]), NS, obj)

    def get(self, kind: str, name: str) -> dict[str, Any]:
        return self.store.get(self.store.resource_of(kind), NS, name)

    def connector(self, **overrides: Any) -> KubernetesConnector:
        cfg = {"kind": "kubernetes", "dgd": "llama", "services": SERVICES, "resync_s": 30, **overrides}
        return KubernetesConnector(
            KubernetesConnectorConfig.model_validate(cfg), "llama", {"prefill": 1, "decode": 2}, api=self.api
        )


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    server = KubeTestServer(token="t")
    url = await server.start()
    api = await api_client(fx.kubeconfig(tmp_path / "kubeconfig", url, "t"))
    c = Cluster(server, api)
    c.create(fx.dgd("llama", {"VllmPrefillWorker": ("prefill", 1, "1"), "VllmDecodeWorker": ("decode", 2, "2")}))
    try:
        yield c
    finally:
        await api.close()
        await server.stop()


async def until(check: Callable[[], Any], timeout_s: float = 3.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not check():
        assert loop.time() < deadline, "condition not reached"
        await asyncio.sleep(0.02)


async def test_counts_come_from_pods_by_state(cluster: Cluster) -> None:
    cluster.create(fx.pod("llama", "VllmDecodeWorker", 0, 2))
    cluster.create(fx.pod("llama", "VllmDecodeWorker", 1, 2, phase="Pending", unschedulable=True))  # pending
    cluster.create(fx.pod("llama", "VllmDecodeWorker", 2, 2, ready=False))  # starting
    cluster.create(fx.pod("llama", "VllmDecodeWorker", 3, 2, phase="Pending"))  # not looked at yet: starting
    cluster.create(fx.pod("llama", "VllmPrefillWorker", 0, 1))
    cluster.create(fx.pod("other", "VllmPrefillWorker", 0, 1))  # another DGD: not ours
    connector = cluster.connector()
    try:
        counts = await connector.observe_replicas()
        # spec asks decode=2: 1 ready, 1 the scheduler cannot place, 2 not ready yet (beyond the spec: still starting)
        assert counts == {"prefill": ReplicaCounts(ready=1), "decode": ReplicaCounts(ready=1, starting=2, pending=1)}
        cluster.store.delete(cluster.store.resource_of("Pod"), NS, "llama-vllmprefillworker-0")  # terminating
        await until(
            lambda: (
                connector._pods is not None
                and connector._pods.objects["llama-vllmprefillworker-0"]["metadata"].get("deletionTimestamp")
            )
        )
        counts = await connector.observe_replicas()
        assert counts["prefill"] == ReplicaCounts(ready=0, starting=1, draining=1)  # its GPU is still held
        gpus = {
            (s.labels["role"], s.labels["state"]): s.value
            for m in connector.registry.collect()
            if m.name == "fleet_agent_pod_gpus"
            for s in m.samples
        }
        assert gpus[("decode", "pending")] == 2 and gpus[("decode", "starting")] == 4
        assert gpus[("decode", "running")] == 2 and gpus[("prefill", "terminating")] == 1
    finally:
        await connector.close()


def test_connector_metrics_join_the_agents_registry(cluster: Cluster) -> None:
    """The live agent publishes the connector's metrics in its own registry: no name may clash."""
    metrics = AgentMetrics()
    cluster.connector().export_metrics(metrics.registry)
    names = {m.name for m in metrics.registry.collect()}
    assert {"fleet_agent_pod_gpus", "fleet_agent_kubernetes_errors", "fleet_agent_admission_limit_rps"} <= names


async def empty_prometheus(request: web.Request) -> web.Response:
    return web.json_response({"status": "success", "data": {"resultType": "vector", "result": []}})


async def test_unschedulable_pods_reach_the_agent_observation(cluster: Cluster, tmp_path: Path) -> None:
    """An unschedulable pod is ``pending`` from the connector into the PoolObservation the agent's
    UNSCHEDULABLE rule reads (the live path: observe_replicas -> PrometheusSource.observe); once
    the scheduler places it, it is starting and pending is back to 0."""
    cluster.create(fx.pod("llama", "VllmDecodeWorker", 0, 2))
    cluster.create(fx.pod("llama", "VllmDecodeWorker", 1, 2, phase="Pending", unschedulable=True))
    profile = str(Path("examples/profiles/llama3.1-8b_h100_vllm_tp1").resolve())
    pools = {
        "prefill": {"profile": profile, "gpu_type": "h100", "max": 4},
        "decode": {"profile": profile, "gpu_type": "h100", "gpus_per_replica": 2, "max": 4},
    }
    deployment = {
        "name": "llama",
        "tenant": "a",
        "endpoint": "chat",
        "mode": "disagg",
        "sla": {"ttft_ms": 800, "itl_ms": 20},
    }
    data = {
        "deployment": {**deployment, "pools": pools},
        "prometheus": {"url": "http://127.0.0.1:9090"},
        "connector": {"kind": "kubernetes", "dgd": "llama"},
    }
    spec = parse_config(data, base_dir=tmp_path).spec()
    app = web.Application()
    app.router.add_get("/api/v1/query", empty_prometheus)
    prometheus = TestServer(app, host="127.0.0.1", port=0)
    await prometheus.start_server()
    connector = cluster.connector()
    try:
        async with aiohttp.ClientSession() as session:
            source = PrometheusSource(str(prometheus.make_url("")).rstrip("/"), PrometheusQueries(), session)
            replicas = await connector.observe_replicas()
            assert replicas["decode"] == ReplicaCounts(ready=1, pending=1)
            decode = next(o for o in await source.observe(1000.0, spec, replicas) if o.role == "decode")
            assert (decode.ready, decode.starting, decode.pending) == (1, 0, 1)
            pods = cluster.store.resource_of("Pod")
            placed = copy.deepcopy(cluster.get("Pod", "llama-vllmdecodeworker-1"))  # the scheduler binds it
            placed["spec"]["nodeName"] = "gpu-node-2"
            del placed["metadata"]["resourceVersion"]  # two writes (spec, then status) without a precondition
            placed["status"]["conditions"] = [{"type": "PodScheduled", "status": "True"}]
            cluster.store.replace(pods, NS, "llama-vllmdecodeworker-1", placed)
            cluster.store.replace(pods, NS, "llama-vllmdecodeworker-1", placed, subresource="status")
            await until(
                lambda: (
                    connector._pods is not None
                    and connector._pods.objects["llama-vllmdecodeworker-1"]["spec"].get("nodeName")
                )
            )
            replicas = await connector.observe_replicas()
            assert replicas["decode"] == ReplicaCounts(ready=1, starting=1)
    finally:
        await connector.close()
        await prometheus.close()


async def test_scale_through_dgd_patch_and_controller(cluster: Cluster) -> None:
    connector = cluster.connector()
    try:
        cluster.controller.step()
        cluster.controller.step()
        assert await connector.observe_replicas() == {
            "prefill": ReplicaCounts(ready=1),
            "decode": ReplicaCounts(ready=2),
        }
        await connector.apply({"prefill": 3, "decode": 1})
        dgd = cluster.get("DynamoGraphDeployment", "llama")
        assert dgd["spec"]["services"]["VllmPrefillWorker"]["replicas"] == 3
        assert dgd["spec"]["services"]["VllmDecodeWorker"]["replicas"] == 1
        assert dgd["metadata"]["generation"] == 3
        await until(
            lambda: connector._dgds is not None and connector._dgds.objects["llama"]["metadata"]["generation"] == 3
        )
        counts = await connector.observe_replicas()
        assert counts == {"prefill": ReplicaCounts(ready=1, starting=2), "decode": ReplicaCounts(ready=1, draining=1)}
        assert not connector.rollout().settled  # the operator has not seen generation 3 yet
        for _ in range(3):
            cluster.controller.step()
        await until(lambda: connector.rollout().settled)
        await until(lambda: len(connector._pods.objects) == 4 if connector._pods else False)
        assert await connector.observe_replicas() == {
            "prefill": ReplicaCounts(ready=3),
            "decode": ReplicaCounts(ready=1),
        }
        writes = len(cluster.server.requests)
        await connector.apply({"prefill": 3, "decode": 1})  # idempotent: nothing written
        assert not [r for r in cluster.server.requests[writes:] if r[0] == "PATCH"]
    finally:
        await connector.close()


async def test_scale_through_adapter_scale_subresource(cluster: Cluster) -> None:
    cluster.create(fx.adapter("llama", "VllmDecodeWorker", 2))
    connector = cluster.connector()
    try:
        await connector.observe_replicas()
        await connector.apply({"decode": 4})
        assert cluster.get("DynamoGraphDeploymentScalingAdapter", "llama-vllmdecodeworker")["spec"]["replicas"] == 4
        assert cluster.get("DynamoGraphDeployment", "llama")["spec"]["services"]["VllmDecodeWorker"]["replicas"] == 2
        assert (
            "PATCH",
            f"/apis/nvidia.com/v1alpha1/namespaces/{NS}/dynamographdeploymentscalingadapters/"
            "llama-vllmdecodeworker/scale",
        ) in cluster.server.requests
        cluster.controller.step()  # the adapter controller copies it into the DGD
        assert cluster.get("DynamoGraphDeployment", "llama")["spec"]["services"]["VllmDecodeWorker"]["replicas"] == 4
    finally:
        await connector.close()


async def test_conflict_is_retried_on_the_latest_version(cluster: Cluster) -> None:
    store = cluster.store
    res = store.resource_of("DynamoGraphDeployment")
    original_patch = store.patch
    races = {"left": 2}

    def patch_after_a_concurrent_write(resource: Any, namespace: str, name: str, *args: Any) -> dict[str, Any]:
        if resource is res and races["left"]:
            races["left"] -= 1  # someone else writes between our GET and our PATCH
            obj = store.get(res, namespace, name)
            store.replace(
                res, namespace, name, {**obj, "metadata": {**obj["metadata"], "labels": {"n": str(races["left"])}}}
            )
        return original_patch(resource, namespace, name, *args)

    connector = cluster.connector()
    try:
        await connector.observe_replicas()
        store.patch = patch_after_a_concurrent_write  # type: ignore[method-assign,assignment]
        await connector.apply({"prefill": 2})
        dgd = cluster.get("DynamoGraphDeployment", "llama")
        assert dgd["spec"]["services"]["VllmPrefillWorker"]["replicas"] == 2
        assert dgd["metadata"]["labels"] == {"n": "0"}  # the concurrent writes survived
        conflicts = [
            s.value
            for m in connector.registry.collect()
            for s in m.samples
            if s.name == "fleet_agent_kubernetes_errors_total" and s.labels["reason"] == "conflict"
        ]
        assert conflicts == [2.0]
        races["left"] = 10  # more conflicts than retries: the error surfaces, nothing half-applied
        with pytest.raises(client.exceptions.ApiException) as error:
            await connector.apply({"prefill": 3})
        assert error.value.status == 409
        assert cluster.get("DynamoGraphDeployment", "llama")["spec"]["services"]["VllmPrefillWorker"]["replicas"] == 2
    finally:
        await connector.close()


async def test_unreadable_gpu_count_fails_closed(cluster: Cluster) -> None:
    cluster.create(fx.dgd("nogpu", {"Worker": ("worker", 1, None)}))
    connector = KubernetesConnector(
        KubernetesConnectorConfig(kind="kubernetes", dgd="nogpu"), "nogpu", {"agg": 1}, api=cluster.api
    )
    wrong = cluster.connector()
    wrong.expected_gpus = {"prefill": 1, "decode": 4}  # the config disagrees with the DGD's requests
    try:
        with pytest.raises(GpuCountUnreadable, match="no GPU request"):
            await connector.observe_replicas()
        with pytest.raises(GpuCountUnreadable, match="no GPU request"):
            await connector.apply({"agg": 2})
        assert cluster.get("DynamoGraphDeployment", "nogpu")["spec"]["services"]["Worker"]["replicas"] == 1
        with pytest.raises(GpuCountUnreadable, match="2 GPUs per replica, the agent config says 4"):
            await wrong.observe_replicas()
        errors = [
            s.value
            for m in connector.registry.collect()
            for s in m.samples
            if s.name == "fleet_agent_kubernetes_errors_total" and s.labels["reason"] == "gpu_count"
        ]
        assert errors == [2.0]
    finally:
        await connector.close()
        await wrong.close()


def test_dgd_reading_rules() -> None:
    obj = fx.dgd("x", {"P": ("prefill", 1, "2"), "D": ("decode", 1, "1")})
    assert d.services_by_role(obj, {}) == {"prefill": "P", "decode": "D"}
    obj["spec"]["services"]["D"]["subComponentType"] = "prefill"  # newer operators: subComponentType wins
    with pytest.raises(DgdError, match="both have role prefill"):
        d.services_by_role(obj, {})
    with pytest.raises(DgdError, match="no service Nope"):
        d.services_by_role(obj, {"agg": "Nope"})
    obj["spec"]["services"]["P"]["multinode"] = {"nodeCount": 2}
    assert d.gpus_per_replica(obj, "P") == 4
    obj["spec"]["services"]["P"]["resources"] = {"requests": {"gpu": "half"}}
    with pytest.raises(GpuCountUnreadable, match="not a whole, positive GPU count"):
        d.gpus_per_replica(obj, "P")
    obj["spec"]["services"]["P"]["resources"] = {}
    obj["spec"]["services"]["P"]["extraPodSpec"] = {"mainContainer": {"resources": {"limits": {"nvidia.com/gpu": 8}}}}
    assert d.gpus_per_replica(obj, "P") == 16
    status = {"conditions": [{"type": "Ready", "status": "True", "observedGeneration": 1}]}
    assert not d.rollout({"metadata": {"name": "x", "generation": 2}, "status": status}).settled
    assert d.rollout(
        {"metadata": {"name": "x", "generation": 2}, "status": {**status, "observedGeneration": 2}}
    ).settled


async def test_watch_resyncs_after_compaction(cluster: Cluster) -> None:
    connector = cluster.connector(resync_s=1)
    try:
        await connector.observe_replicas()
        assert connector._pods is not None
        relists = connector._pods.relists
        cluster.store.compact()
        cluster.create(fx.pod("llama", "VllmDecodeWorker", 0, 2))
        pods = connector._pods
        await until(lambda: "llama-vllmdecodeworker-0" in pods.objects, 4)
        await until(lambda: pods.relists > relists, 4)
    finally:
        await connector.close()


async def test_stale_cache_is_refused_while_the_api_is_down(cluster: Cluster) -> None:
    connector = cluster.connector(resync_s=1)
    try:
        await connector.observe_replicas()
        cluster.server.unavailable = True
        await until(lambda: connector._pods is not None and connector._pods.last_error is not None, 5)
        with pytest.raises(DgdError, match="Kubernetes API unreadable"):
            await connector.observe_replicas()
        cluster.server.unavailable = False
        informers = (connector._dgds, connector._adapters, connector._pods)
        await until(lambda: all(i.last_error is None for i in informers if i), 5)
        assert await connector.observe_replicas()
    finally:
        await connector.close()


async def test_httproute_weights_and_rate_limit_policy(cluster: Cluster) -> None:
    cluster.create(fx.httproute("chat", ["llama-frontend", "mixtral-frontend", "unrelated"]))
    cluster.create(fx.rate_limit_policy("chat-limit", "chat"))
    connector = cluster.connector(
        httproute={"name": "chat", "backends": {"llama": "llama-frontend", "mixtral": "mixtral-frontend"}},
        rate_limit_policy={"name": "chat-limit"},
    )
    try:
        await connector.apply_routing({"llama": 0.75, "mixtral": 0.25}, 12.5)
        refs = cluster.get("HTTPRoute", "chat")["spec"]["rules"][0]["backendRefs"]
        assert [r["weight"] for r in refs] == [750, 250, 1]
        policy = cluster.get("BackendTrafficPolicy", "chat-limit")["spec"]
        assert policy["rateLimit"] == {
            "type": "Local",
            "local": {"rules": [{"limit": {"requests": 750, "unit": "Minute"}}]},
        }
        assert policy["targetRefs"][0]["name"] == "chat"
        version = cluster.get("HTTPRoute", "chat")["metadata"]["resourceVersion"]
        await connector.apply_routing({"llama": 0.75, "mixtral": 0.25}, 12.5)
        assert cluster.get("HTTPRoute", "chat")["metadata"]["resourceVersion"] == version  # unchanged: not written
        await connector.apply_routing({"llama": 1.0}, None)
        assert "rateLimit" not in cluster.get("BackendTrafficPolicy", "chat-limit")["spec"]
        with pytest.raises(RouteError, match="no backend configured for deployment"):
            await connector.apply_routing({"gemma": 1.0}, None)
        assert cluster.store.unvalidated == {"HTTPRoute": 3, "BackendTrafficPolicy": 3}  # no vendored schema
    finally:
        await connector.close()


def test_agent_config_accepts_kubernetes_connector(tmp_path: Path) -> None:
    profile = Path("examples/profiles/llama3.1-8b_h100_vllm_tp1").resolve()
    data = {
        "deployment": {
            "name": "llama",
            "tenant": "a",
            "endpoint": "chat",
            "mode": "agg",
            "sla": {"ttft_ms": 800, "itl_ms": 20},
            "pools": {"agg": {"profile": str(profile), "gpu_type": "h100", "max": 4}},
        },
        "prometheus": {"url": "http://127.0.0.1:9090"},
        "connector": {"kind": "kubernetes", "dgd": "llama", "kubeconfig": "kc.yaml", "resync_s": "2m"},
        "planner": "planner-0:7070, planner-1:7070",
    }
    config = parse_config(data, base_dir=tmp_path)
    assert isinstance(config.connector, KubernetesConnectorConfig)
    assert config.connector.kubeconfig == tmp_path / "kc.yaml" and config.connector.resync_s == 120
    assert config.planner is not None and config.planner.address == "planner-0:7070,planner-1:7070"
    data["connector"] = {"kind": "kubernetes", "dgd": "llama", "services": {"prefill": "P"}}
    with pytest.raises(InputError, match="connector.services"):
        parse_config(data, base_dir=tmp_path)
    data["connector"] = {"kind": "kubernetes", "dgd": "Not_A_Name"}
    with pytest.raises(InputError, match="connector.dgd"):
        parse_config(data, base_dir=tmp_path)


async def test_engine_knobs_go_into_the_services_engine_args_for_the_next_rollout(cluster: Cluster) -> None:
    """Knobs replace the engine flags in ``extraPodSpec.mainContainer.args`` (a list, or one
    ``sh -c`` command line) by a guarded patch; the spec's generation moves (the operator's next
    rollout), the rest of the args is kept, and the same knobs again write nothing."""
    from fleet_planner.knobs import EngineKnobs

    body = fx.dgd("knobbed", {"VllmPrefillWorker": ("prefill", 1, "1"), "VllmDecodeWorker": ("decode", 2, "2")})
    body["spec"]["services"]["VllmPrefillWorker"]["extraPodSpec"] = {
        "mainContainer": {"args": ["--model", "m", "--max-num-batched-tokens", "8192", "--enforce-eager"]}
    }
    line = "python3 -m dynamo.vllm --model m --max-num-seqs=256 --is-decode-worker"
    body["spec"]["services"]["VllmDecodeWorker"]["extraPodSpec"] = {
        "mainContainer": {"command": ["/bin/sh", "-c"], "args": [line]}
    }
    cluster.create(body)
    connector = cluster.connector(dgd="knobbed")
    try:
        await connector.observe_replicas()
        generation = cluster.get("DynamoGraphDeployment", "knobbed")["metadata"]["generation"]
        await connector.apply_knobs(
            {"prefill": EngineKnobs(max_batch_tokens=16384), "decode": EngineKnobs(max_num_seqs=96)}
        )
        dgd = cluster.get("DynamoGraphDeployment", "knobbed")
        services = dgd["spec"]["services"]
        assert services["VllmPrefillWorker"]["extraPodSpec"]["mainContainer"]["args"] == [
            "--model",
            "m",
            "--enforce-eager",
            "--max-num-batched-tokens",
            "16384",
            "--max-num-seqs",
            "256",
        ]
        assert services["VllmDecodeWorker"]["extraPodSpec"]["mainContainer"]["args"] == [
            "python3 -m dynamo.vllm --model m --max-num-seqs=96 --is-decode-worker --max-num-batched-tokens 8192"
        ]
        assert services["VllmDecodeWorker"]["extraPodSpec"]["mainContainer"]["command"] == ["/bin/sh", "-c"]
        assert services["VllmDecodeWorker"]["replicas"] == 2  # knobs leave the replica counts alone
        assert dgd["metadata"]["generation"] == generation + 2
        await until(
            lambda: (
                connector._dgds is not None
                and connector._dgds.objects["knobbed"]["metadata"]["generation"] == generation + 2
            )
        )
        assert not connector.rollout().settled  # the operator rolls the pods out next
        writes = len(cluster.server.requests)
        await connector.apply_knobs({"decode": EngineKnobs(max_num_seqs=96)})
        assert not [r for r in cluster.server.requests[writes:] if r[0] == "PATCH"]
        with pytest.raises(ValueError, match="unknown role"):
            await connector.apply_knobs({"agg": EngineKnobs()})
    finally:
        await connector.close()


async def test_engine_knobs_need_engine_args_in_the_dgd(cluster: Cluster) -> None:
    from fleet_planner.knobs import EngineKnobs

    connector = cluster.connector()
    try:
        await connector.observe_replicas()
        with pytest.raises(DgdError, match=r"no extraPodSpec\.mainContainer\.args"):
            await connector.apply_knobs({"decode": EngineKnobs(max_num_seqs=96)})
        assert (
            "extraPodSpec" not in cluster.get("DynamoGraphDeployment", "llama")["spec"]["services"]["VllmDecodeWorker"]
        )
    finally:
        await connector.close()
