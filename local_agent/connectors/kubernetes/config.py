"""The ``kind: kubernetes`` connector section of the agent config."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo

from fleet_planner.durations import Duration


def _resolved(value: Path, info: ValidationInfo) -> Path:
    """Relative to the config file's folder, like every path in the agent config."""
    context = info.context
    base = Path(context["base_dir"]) if isinstance(context, Mapping) and context.get("base_dir") else Path.cwd()
    return (base / value.expanduser()).resolve()


K8sName = Annotated[str, Field(min_length=1, max_length=253, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class HTTPRouteConfig(_Model):
    """The Gateway API HTTPRoute whose weighted ``backendRefs`` split the endpoint between deployments."""

    name: K8sName
    namespace: K8sName | None = Field(default=None, description="default: the connector's namespace")
    backends: dict[str, K8sName] = Field(
        min_length=1, description="deployment name -> backendRef name (its frontend Service or InferencePool)"
    )
    weight_scale: int = Field(default=1000, ge=1, le=1_000_000, description="a routing share of 1.0 is this weight")


class RateLimitPolicyConfig(_Model):
    """An Envoy Gateway ``BackendTrafficPolicy`` whose local rate limit carries the admission limit."""

    name: K8sName
    namespace: K8sName | None = None
    group: str = "gateway.envoyproxy.io"
    version: str = "v1alpha1"
    plural: str = "backendtrafficpolicies"


class KubernetesConnectorConfig(_Model):
    """Scale one DynamoGraphDeployment's services; count GPUs from its pods."""

    kind: Literal["kubernetes"]
    dgd: K8sName = Field(description="the DynamoGraphDeployment's name")
    namespace: K8sName | None = Field(default=None, description="default: the pod's own namespace")
    services: dict[Literal["prefill", "decode", "agg"], str] = Field(
        default_factory=dict,
        description="pool role -> DGD service name; default: detected from subComponentType/componentType",
    )
    kubeconfig: Annotated[Path, AfterValidator(_resolved)] | None = Field(
        default=None, description="default: in-cluster, else ~/.kube/config"
    )
    context: str | None = None
    resync_s: Duration = Field(default=300.0, ge=1.0, description="relist and reopen watches this often")
    conflict_retries: int = Field(default=5, ge=0, description="re-read and retry a 409 Conflict this often")
    use_scaling_adapters: bool = Field(default=True, description="scale through an adapter's scale subresource")
    httproute: HTTPRouteConfig | None = None
    rate_limit_policy: RateLimitPolicyConfig | None = None
