"""The test API server behaves as the real one where Fleet Planner relies on it (driven through
kubernetes-asyncio, as the connector and the election are), and rejects schema-invalid objects."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import pytest
from kubernetes_asyncio import client, watch
from kubernetes_asyncio.client.exceptions import ApiException

from fleet_planner.kube import JSON_PATCH, MERGE_PATCH, api_client, patch_as
from kube_testserver import KubeTestServer
from kube_testserver import fixtures as fx
from kube_testserver.schemas import SchemaError, validate

G, V, NS = "nvidia.com", "v1alpha1", "default"
DGD, DGDSA = "dynamographdeployments", "dynamographdeploymentscalingadapters"


@pytest.fixture
async def kube(tmp_path: Path) -> AsyncIterator[tuple[KubeTestServer, client.ApiClient]]:
    server = KubeTestServer(token="secret")
    url = await server.start()
    api = await api_client(fx.kubeconfig(tmp_path / "kubeconfig", url, "secret"))
    try:
        yield server, api
    finally:
        await api.close()
        await server.stop()


def test_real_schemas_reject_bad_objects() -> None:
    good = fx.dgd("llama", {"Worker": ("worker", 1, "1")})
    assert validate(good)
    bad_type = fx.dgd("llama", {"Worker": ("worker", 1, "1")})
    bad_type["spec"]["services"]["Worker"]["replicas"] = "two"
    with pytest.raises(SchemaError, match="replicas"):
        validate(bad_type)
    unknown = fx.dgd("llama", {"Worker": ("worker", 1, "1")})
    unknown["spec"]["services"]["Worker"]["replicaz"] = 1
    with pytest.raises(SchemaError, match="replicaz"):
        validate(unknown)
    bad_enum = fx.dgd("llama", {"Worker": ("worker", 1, "1")})
    bad_enum["spec"]["backendFramework"] = "tensorflow"
    with pytest.raises(SchemaError, match="backendFramework"):
        validate(bad_enum)
    adapter = fx.adapter("llama", "Worker", 1)
    del adapter["spec"]["dgdRef"]
    with pytest.raises(SchemaError, match="dgdRef"):
        validate(adapter)
    pod = fx.pod("llama", "Worker", 0, 1)
    assert validate(pod)
    pod["spec"]["containers"][0]["imagePullPolicy"] = 3
    with pytest.raises(SchemaError):
        validate(pod)
    lease = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "x"}, "spec": {"holder": 1}}
    with pytest.raises(SchemaError):
        validate(lease)


async def test_crud_patch_conflict_and_validation(kube: tuple[KubeTestServer, client.ApiClient]) -> None:
    server, api = kube
    custom = client.CustomObjectsApi(api)
    created = await custom.create_namespaced_custom_object(G, V, NS, DGD, fx.dgd("llama", {"W": ("worker", 1, "1")}))
    assert created["metadata"]["generation"] == 1
    with pytest.raises(ApiException) as exists:
        await custom.create_namespaced_custom_object(G, V, NS, DGD, fx.dgd("llama", {"W": ("worker", 1, "1")}))
    assert exists.value.status == 409
    rv = created["metadata"]["resourceVersion"]
    ops = [{"op": "add", "path": "/spec/services/W/replicas", "value": 3}]
    patched = await custom.patch_namespaced_custom_object(G, V, NS, DGD, "llama", ops, **patch_as(JSON_PATCH))
    assert patched["spec"]["services"]["W"]["replicas"] == 3 and patched["metadata"]["generation"] == 2
    stale = [{"op": "replace", "path": "/metadata/resourceVersion", "value": rv}, *ops]
    with pytest.raises(ApiException) as conflict:
        await custom.patch_namespaced_custom_object(G, V, NS, DGD, "llama", stale, **patch_as(JSON_PATCH))
    assert conflict.value.status == 409
    merge = {"spec": {"services": {"W": {"replicas": "many"}}}}
    with pytest.raises(ApiException) as invalid:
        await custom.patch_namespaced_custom_object(G, V, NS, DGD, "llama", merge, **patch_as(MERGE_PATCH))
    assert invalid.value.status == 422
    current = await custom.get_namespaced_custom_object(G, V, NS, DGD, "llama")
    assert current["spec"]["services"]["W"]["replicas"] == 3  # the rejected patch changed nothing
    status = {"status": {"state": "x"}}
    await custom.patch_namespaced_custom_object(G, V, NS, DGD, "llama", status, **patch_as(MERGE_PATCH))
    assert "status" not in await custom.get_namespaced_custom_object(G, V, NS, DGD, "llama")  # status subresource
    assert server.store.validated["DynamoGraphDeployment"] >= 2


async def test_scale_subresource(kube: tuple[KubeTestServer, client.ApiClient]) -> None:
    _, api = kube
    custom = client.CustomObjectsApi(api)
    await custom.create_namespaced_custom_object(G, V, NS, DGDSA, fx.adapter("llama", "W", 1))
    scale = await custom.get_namespaced_custom_object_scale(G, V, NS, DGDSA, "llama-w")
    assert scale["kind"] == "Scale" and scale["spec"]["replicas"] == 1
    body = {"spec": {"replicas": 4}}
    await custom.patch_namespaced_custom_object_scale(G, V, NS, DGDSA, "llama-w", body, **patch_as(MERGE_PATCH))
    assert (await custom.get_namespaced_custom_object(G, V, NS, DGDSA, "llama-w"))["spec"]["replicas"] == 4
    stale = {"metadata": {"resourceVersion": scale["metadata"]["resourceVersion"]}, "spec": {"replicas": 2}}
    with pytest.raises(ApiException) as conflict:
        await custom.patch_namespaced_custom_object_scale(G, V, NS, DGDSA, "llama-w", stale, **patch_as(MERGE_PATCH))
    assert conflict.value.status == 409
    await custom.create_namespaced_custom_object(G, V, NS, DGD, fx.dgd("llama", {"W": ("worker", 1, "1")}))
    with pytest.raises(ApiException) as no_scale:  # the DGD has no scale subresource
        await custom.get_namespaced_custom_object_scale(G, V, NS, DGD, "llama")
    assert no_scale.value.status == 404


async def test_list_watch_from_version_and_410(kube: tuple[KubeTestServer, client.ApiClient]) -> None:
    server, api = kube
    core = client.CoreV1Api(api)
    await core.create_namespaced_pod(NS, cast(Any, fx.pod("a", "W", 0, 1)))
    listed = await core.list_namespaced_pod(NS, label_selector=f"{fx.DGD_LABEL}=a")
    assert [p.metadata.name for p in listed.items] == ["a-w-0"]
    since = listed.metadata.resource_version
    await core.create_namespaced_pod(NS, cast(Any, fx.pod("b", "W", 0, 1)))  # another DGD: filtered out
    await core.create_namespaced_pod(NS, cast(Any, fx.pod("a", "W", 1, 1)))
    await core.delete_namespaced_pod("a-w-0", NS)  # graceful: terminating first
    events = []
    stream = watch.Watch()
    async for event in stream.stream(
        core.list_namespaced_pod, NS, label_selector=f"{fx.DGD_LABEL}=a", resource_version=since, timeout_seconds=1
    ):
        events.append((event["type"], event["raw_object"]["metadata"]["name"]))
    await stream.close()
    assert events == [("ADDED", "a-w-1"), ("MODIFIED", "a-w-0")]
    server.store.compact()
    with pytest.raises(ApiException) as gone:
        async for _ in watch.Watch().stream(core.list_namespaced_pod, NS, resource_version=since, timeout_seconds=1):
            pass
    assert gone.value.status == 410


async def test_auth_required(tmp_path: Path, kube: tuple[KubeTestServer, client.ApiClient]) -> None:
    server, _ = kube
    api = await api_client(fx.kubeconfig(tmp_path / "wrong", server.url, "wrong"))
    with pytest.raises(ApiException) as denied:
        await client.CoreV1Api(api).list_namespaced_pod(NS)
    await api.close()
    assert denied.value.status == 401


async def test_watch_sees_writes_while_open(kube: tuple[KubeTestServer, client.ApiClient]) -> None:
    _, api = kube
    coord = client.CoordinationV1Api(api)
    seen: list[str] = []

    async def follow() -> None:
        async for event in watch.Watch().stream(coord.list_namespaced_lease, NS, timeout_seconds=2):
            seen.append(event["type"])
            if len(seen) == 2:
                return

    task = asyncio.create_task(follow())
    await asyncio.sleep(0.2)
    lease = {"metadata": {"name": "l"}, "spec": {"holderIdentity": "a", "leaseDurationSeconds": 5}}
    created = await coord.create_namespaced_lease(NS, cast(Any, lease))
    created.spec.holder_identity = "b"
    await coord.replace_namespaced_lease("l", NS, created)
    await asyncio.wait_for(task, 3)
    assert seen == ["ADDED", "MODIFIED"]
