"""The one interface through which the local agent applies replica targets.

The planning core only ever talks to a ``Connector``; the simulator, local processes and (later)
Kubernetes are adapters behind it, so the same agent code runs in replay, on a laptop and live.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping

from prometheus_client import CollectorRegistry
from pydantic import BaseModel, ConfigDict, Field

from fleet_planner.knobs import EngineKnobs


class ReplicaCounts(BaseModel):
    """Replicas of one pool by lifecycle state; draining replicas still hold GPUs and in-flight work."""

    model_config = ConfigDict(frozen=True)

    ready: int = Field(default=0, ge=0)
    starting: int = Field(default=0, ge=0)
    draining: int = Field(default=0, ge=0)
    pending: int = Field(
        default=0, ge=0, description="wanted but the scheduler cannot place them (no GPUs held; not in starting)"
    )


class Connector(ABC):
    """Applies per-role replica targets and reports what actually runs."""

    @abstractmethod
    async def apply(self, targets: dict[str, int]) -> None:
        """Move each listed role towards its target (role -> replicas).

        Idempotent (calling again with the same targets changes nothing) and quick: it starts the
        change and returns; progress shows up in ``observe_replicas``. Roles not listed are left alone.
        """

    @abstractmethod
    async def observe_replicas(self) -> dict[str, ReplicaCounts]:
        """Current ready/starting/draining counts for every configured role."""

    async def apply_knobs(self, knobs: Mapping[str, EngineKnobs]) -> None:
        """Run each listed role's engines with these knobs (role -> knobs); idempotent and quick
        like ``apply``: the change proceeds in the background (a drained restart, a rollout).

        Default: refused, for a connector that cannot reach the engines' settings."""
        raise NotImplementedError(f"{type(self).__name__} cannot set engine knobs")

    async def apply_routing(self, routing: dict[str, float], admission_rps: float | None) -> None:
        """Apply the planner's routing shares (deployment -> share) and admission limit of the endpoint.

        Default: nothing (the endpoint is routed elsewhere); the Kubernetes connector writes an HTTPRoute.
        """

    def export_metrics(self, registry: CollectorRegistry) -> None:
        """Publish the connector's own metrics in the agent's registry (default: it has none)."""

    @abstractmethod
    async def close(self) -> None:
        """Release the connector's own resources; running replicas are left as they are."""
