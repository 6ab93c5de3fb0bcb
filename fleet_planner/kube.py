"""Kubernetes API access shared by the agent's connector and the planner's leader election.

One way to get a client: an explicit kubeconfig file (and context) when given; otherwise the pod's
service account (in-cluster: ``KUBERNETES_SERVICE_HOST`` and the mounted token), else the default
kubeconfig (``$KUBECONFIG`` or ``~/.kube/config``). Also: reading a watch stream and API errors.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException
from kubernetes_asyncio.config.config_exception import ConfigException

from fleet_planner.errors import InputError

SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"

__all__ = ["JSON_PATCH", "MERGE_PATCH", "ApiException", "api_client", "default_namespace", "patch_as"]


async def api_client(kubeconfig: Path | None = None, context: str | None = None) -> client.ApiClient:
    """An API client: the given kubeconfig, else in-cluster, else the default kubeconfig."""
    configuration = client.Configuration()
    try:
        if kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
            config.load_incluster_config(client_configuration=configuration)
        else:
            await config.load_kube_config(
                config_file=str(kubeconfig) if kubeconfig else None,
                context=context,
                client_configuration=configuration,
            )
    except (ConfigException, OSError) as exc:
        where = str(kubeconfig) if kubeconfig else "in-cluster service account or default kubeconfig"
        raise InputError(f"no usable Kubernetes configuration ({where}): {exc}") from None
    return client.ApiClient(configuration)


def default_namespace(explicit: str | None) -> str:
    """The namespace given, else the pod's own (in-cluster), else ``default``."""
    if explicit:
        return explicit
    try:
        return SERVICE_ACCOUNT_NAMESPACE.read_text(encoding="utf-8").strip() or "default"
    except OSError:
        return "default"


def status_of(exc: BaseException) -> int | None:
    """The HTTP status of an API error (None for anything else)."""
    return exc.status if isinstance(exc, ApiException) else None


def patch_as(content_type: str) -> dict[str, Any]:
    """Keyword arguments forcing a PATCH's content type (the generated client would guess it wrong
    for custom objects: a dict body would go out as a JSON patch)."""
    return {"_content_type": content_type}
