"""Kubernetes connector: DynamoGraphDeployments, their pods, scaling adapters and the endpoint's HTTPRoute.

The connector itself lives in :mod:`local_agent.connectors.kubernetes.connector`; it is not imported
here, so reading an agent config does not pay for importing the Kubernetes client (about 2 s).
"""

from local_agent.connectors.kubernetes.config import KubernetesConnectorConfig
from local_agent.connectors.kubernetes.dgd import DgdError, GpuCountUnreadable

__all__ = ["DgdError", "GpuCountUnreadable", "KubernetesConnectorConfig"]
