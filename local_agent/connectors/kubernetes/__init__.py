"""Kubernetes connector: DynamoGraphDeployments, their pods, scaling adapters and the endpoint's HTTPRoute."""

from local_agent.connectors.kubernetes.config import KubernetesConnectorConfig
from local_agent.connectors.kubernetes.connector import KubernetesConnector
from local_agent.connectors.kubernetes.dgd import DgdError, GpuCountUnreadable

__all__ = ["DgdError", "GpuCountUnreadable", "KubernetesConnector", "KubernetesConnectorConfig"]
