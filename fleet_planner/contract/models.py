"""Validated boundary records of the planner service: what agents send, what the planner answers
and what each allocation round writes to the audit log.

Field names match the protobuf fields one to one, so a validation error's location *is* the
field path an agent author sees in the .proto (``pools[0].curve[3]``). Every numeric field is
bounded: a single bad message must not be able to poison the allocation or exhaust memory.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, StringConstraints, model_validator

from fleet_planner.bounds import MAX_GPUS_PER_REPLICA, MAX_REPLICAS, MAX_STARTUP_S, EndpointName, Name
from fleet_planner.planning import FrozenModel, PoolRole

MAX_CURVE_POINTS = 1024
MAX_RATE = 1e9

SessionId = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]
Count = Annotated[int, Field(ge=0, le=MAX_REPLICAS)]
Attainment = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]
Rate = Annotated[float, Field(ge=0.0, le=MAX_RATE, allow_inf_nan=False)]
Millis = Annotated[float, Field(ge=0.0, le=1e9, allow_inf_nan=False)]
DecisionId = Annotated[int, Field(ge=0, lt=2**63)]


def _unique_roles(roles: list[PoolRole], what: str) -> None:
    if len(set(roles)) != len(roles):
        raise ValueError(f"{what}: each role may appear once (got {', '.join(roles)})")


class PoolRegistration(FrozenModel):
    role: PoolRole
    gpu_type: Name
    gpus_per_replica: int = Field(ge=1, le=MAX_GPUS_PER_REPLICA)
    min_replicas: Count
    max_replicas: Count
    fallback_replicas: Count = 0
    startup_s: float | None = Field(
        default=None,
        ge=0.0,
        le=MAX_STARTUP_S,
        allow_inf_nan=False,
        description="cold start of one replica (s); None: the planner's policy or default",
    )

    @model_validator(mode="after")
    def _ordered(self) -> PoolRegistration:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas {self.min_replicas} > max_replicas {self.max_replicas}")
        if self.fallback_replicas > self.max_replicas:
            raise ValueError(f"fallback_replicas {self.fallback_replicas} > max_replicas {self.max_replicas}")
        return self


class Registration(FrozenModel):
    deployment: Name
    tenant: Name
    endpoint: EndpointName
    pools: list[PoolRegistration] = Field(min_length=1, max_length=3)
    capacity_rps: float | None = Field(
        default=None, gt=0.0, le=MAX_RATE, allow_inf_nan=False, description="requests/s at max_replicas"
    )

    @model_validator(mode="after")
    def _roles(self) -> Registration:
        roles = [p.role for p in self.pools]
        _unique_roles(roles, "pools")
        if "agg" in roles and len(roles) > 1:
            raise ValueError("pools: an 'agg' pool cannot be combined with prefill/decode pools")
        return self


class Forecast(FrozenModel):
    mean_rps: Rate
    upper_rps: Rate
    horizon_s: float = Field(default=0.0, ge=0.0, le=1e7, allow_inf_nan=False)

    @model_validator(mode="after")
    def _ordered(self) -> Forecast:
        if self.upper_rps < self.mean_rps:
            raise ValueError(f"upper_rps {self.upper_rps} < mean_rps {self.mean_rps}")
        return self


class Observed(FrozenModel):
    window_s: float = Field(gt=0.0, le=86_400.0, allow_inf_nan=False)
    admitted_rps: Rate | None = Field(
        default=None, description="requests/s that arrived: admitted, plus those the gateway shed (demand)"
    )
    ttft_p90_ms: Millis | None = None
    itl_p90_ms: Millis | None = None


class PoolReport(FrozenModel):
    role: PoolRole
    ready: Count = 0
    starting: Count = 0
    draining: Count = 0
    pending: Count = 0
    curve: list[Attainment] = Field(default_factory=list, max_length=MAX_CURVE_POINTS)
    pessimistic_curve: list[Attainment] = Field(default_factory=list, max_length=MAX_CURVE_POINTS)
    replica_capacity_rps: float | None = Field(default=None, gt=0.0, le=MAX_RATE, allow_inf_nan=False)
    wanted_replicas: Count | None = None
    queued_requests: float | None = Field(default=None, ge=0.0, le=1e12, allow_inf_nan=False)
    late_rps_per_replica: float | None = Field(default=None, gt=0.0, le=MAX_RATE, allow_inf_nan=False)

    @model_validator(mode="after")
    def _curves(self) -> PoolReport:
        if self.pessimistic_curve and len(self.pessimistic_curve) != len(self.curve):
            raise ValueError(
                "pessimistic_curve must be empty or as long as curve"
                f" ({len(self.pessimistic_curve)} vs {len(self.curve)})"
            )
        return self

    @property
    def in_use(self) -> int:
        """Replicas holding GPUs right now: running, starting or still draining."""
        return self.ready + self.starting + self.draining


class AgentReport(FrozenModel):
    deployment: Name
    session_id: SessionId
    sequence: int = Field(ge=0, lt=2**64)
    agent_time_s: float = Field(default=0.0, allow_inf_nan=False)
    applied_decision_id: DecisionId = 0
    forecast: Forecast | None = None
    observed: Observed | None = None
    pools: list[PoolReport] = Field(default_factory=list, max_length=3)

    @model_validator(mode="after")
    def _roles(self) -> AgentReport:
        _unique_roles([p.role for p in self.pools], "pools")
        return self


class PoolReplicas(FrozenModel):
    role: PoolRole
    replicas: Count


class AckApplied(FrozenModel):
    deployment: Name
    session_id: SessionId
    decision_id: DecisionId
    applied: list[PoolReplicas] = Field(default_factory=list, max_length=3)

    @model_validator(mode="after")
    def _roles(self) -> AckApplied:
        _unique_roles([p.role for p in self.applied], "applied")
        return self


class AckDrained(FrozenModel):
    deployment: Name
    session_id: SessionId
    decision_id: DecisionId
    role: PoolRole
    gpus_freed: int = Field(ge=0, le=MAX_REPLICAS * MAX_GPUS_PER_REPLICA)


class PoolTarget(FrozenModel):
    role: PoolRole
    replicas: int = Field(ge=0)
    reason: str = ""
    headroom_replicas: int = Field(
        default=0, ge=0, description="replicas of `replicas` lent from idle GPUs above the ask (fill_idle)"
    )

    @model_validator(mode="after")
    def _headroom_within_grant(self) -> PoolTarget:
        if self.headroom_replicas > self.replicas:
            raise ValueError(f"headroom_replicas {self.headroom_replicas} > replicas {self.replicas}")
        return self


class Targets(FrozenModel):
    """What one deployment may run: replicas per pool until ``lease_expires_s`` (planner time)."""

    deployment: str
    decision_id: int = 0
    lease_expires_s: float = 0.0
    planner_time_s: float
    pools: list[PoolTarget] = Field(default_factory=list)
    endpoint: str = ""
    routing: dict[str, float] = Field(default_factory=dict)
    admission_rps: float | None = Field(
        default=None,
        ge=0.0,
        allow_inf_nan=False,
        description="the endpoint admits at most this many requests/s; excess is shed",
    )
    endpoint_share: float | None = Field(
        default=None, ge=0.0, le=1.0, description="share of the endpoint's traffic to plan for; None: alone"
    )
    waiting_for_gpus: bool = Field(
        default=False,
        description="the last round allocated more than it could grant yet and the last report asked for no more: "
        "the same report again receives the rest once other pools' drains free the GPUs",
    )


class DemandSummary(FrozenModel):
    """What a pool bid with in a round, as much as ``explain`` needs to say why it got what it got."""

    forecast_rps: float | None
    upper_rps: float | None
    demand_weight: float
    ready: int
    starting: int
    draining: int
    curve_points: int
    attainment_at_grant: float | None
    pessimistic_at_grant: float | None


class PoolRecord(FrozenModel):
    role: PoolRole
    gpu_type: str
    gpus_per_replica: int
    min_replicas: int
    max_replicas: int
    fallback_replicas: int
    startup_s: float | None = Field(default=None, description="cold start the agent registered (s)")
    granted: int
    usage: int = Field(description="replicas possibly holding GPUs (grant + unconfirmed drains)")
    pending_release: int | None = Field(description="decision whose scale-down is not yet confirmed")
    grant_decision_id: int
    allocated: int | None = Field(description="the allocator's answer; granted is lower while drains gate it")
    reason: str
    demand: DemandSummary | None = None
    moved_by: str | None = Field(
        default=None,
        description="the allocator term that moved the grant: unchanged, bid, others, bounds or idle (None: not "
        "allocated)",
    )
    headroom: int = Field(
        default=0, ge=0, description="replicas of the grant lent from idle GPUs above the agent's ask (fill_idle)"
    )


class DeploymentRecord(FrozenModel):
    deployment: str
    tenant: str
    endpoint: str
    lease_expires_s: float
    decision_id: int = Field(description="latest decision that issued this deployment targets (0 = none)")
    bidding: bool
    pools: list[PoolRecord]


class SplitRecord(FrozenModel):
    """How a shared endpoint's rate is split among its deployments after a round, and why."""

    shares: dict[str, float]
    moved: bool = Field(description="the split changed in this round")
    reason: str
    changes: int = Field(default=0, ge=0, description="moves of this endpoint's split since the planner started")


class RoundRecord(FrozenModel):
    """One line of ``decisions.jsonl``: enough to explain the round and to restart from it."""

    decision_id: int
    time_s: float
    status: str
    trigger: str = Field(
        default="timer", description="what ran the round: the timer, or the report that asked (round on ask)"
    )
    objective: float | None = None
    gap: float | None = None
    solve_ms: float | None = None
    inventory: dict[str, int]
    held_gpus: dict[str, int] = Field(description="GPUs off the allocator's budget (drains, silent agents)")
    committed_gpus: dict[str, int] = Field(description="granted + draining GPUs per type after the round")
    tenant_gpus: dict[str, dict[str, int]] = Field(description="committed GPUs per tenant and type")
    routing: dict[str, dict[str, float]] = Field(default_factory=dict)
    admission_rps: dict[str, float] = Field(
        default_factory=dict, description="endpoints shedding load: admitted requests/s"
    )
    splits: dict[str, SplitRecord] = Field(
        default_factory=dict, description="shared endpoints: each deployment's share of the rate"
    )
    deployments: list[DeploymentRecord]
