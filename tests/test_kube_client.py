"""How the agent and the planner reach the Kubernetes API: in-cluster service account, kubeconfig,
and a clear error when neither is usable."""

from __future__ import annotations

from pathlib import Path

import certifi
import pytest
from kubernetes_asyncio.config import incluster_config

from fleet_planner import kube
from fleet_planner.errors import InputError
from kube_testserver import fixtures as fx


async def test_in_cluster_service_account(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    token = tmp_path / "token"
    token.write_text("sa-token")
    monkeypatch.setattr(incluster_config, "SERVICE_TOKEN_FILENAME", str(token))
    monkeypatch.setattr(incluster_config, "SERVICE_CERT_FILENAME", certifi.where())  # any real CA bundle
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    namespace = tmp_path / "namespace"
    namespace.write_text("serving\n")
    monkeypatch.setattr(kube, "SERVICE_ACCOUNT_NAMESPACE", namespace)
    api = await kube.api_client()
    try:
        assert api.configuration.host == "https://10.96.0.1:443"
        assert api.configuration.api_key["BearerToken"] == "Bearer sa-token"
        assert kube.default_namespace(None) == "serving" and kube.default_namespace("other") == "other"
    finally:
        await api.close()


async def test_explicit_kubeconfig_wins_over_in_cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    api = await kube.api_client(fx.kubeconfig(tmp_path / "kubeconfig", "http://127.0.0.1:6443", "t"))
    try:
        assert api.configuration.host == "http://127.0.0.1:6443"
    finally:
        await api.close()


async def test_no_configuration_is_one_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(InputError, match="no usable Kubernetes configuration"):
        await kube.api_client(tmp_path / "missing-kubeconfig")


def test_example_kubernetes_agent_config_is_valid() -> None:
    from local_agent.config import load_config
    from local_agent.connectors.kubernetes import KubernetesConnectorConfig

    config = load_config(Path(__file__).resolve().parent.parent / "examples/agent/agent-kubernetes.yaml")
    assert isinstance(config.connector, KubernetesConnectorConfig)
    assert config.connector.services == {"prefill": "VllmPrefillWorker", "decode": "VllmDecodeWorker"}
    assert config.connector.resync_s == 300 and config.connector.httproute is not None
