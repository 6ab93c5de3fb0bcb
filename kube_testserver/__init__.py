"""An API-compatible Kubernetes test server (aiohttp) for tests and the demo; never shipped in the image."""

from kube_testserver.server import ApiError, KubeStore, KubeTestServer, Resource

__all__ = ["ApiError", "KubeStore", "KubeTestServer", "Resource"]
