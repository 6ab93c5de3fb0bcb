"""What the local agent decides and exports: typed records shared by the planning core, the metrics
exporter, diagnostics reports, the dashboard and (as demand curves) the global planner."""

from __future__ import annotations

from enum import Enum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from fleet_planner.knobs import EngineKnobs
from fleet_planner.planning import PoolObservation, PoolRole


class DecisionReason(str, Enum):
    """Why a pool's target is what it is; exported as a metric label, so a closed set."""

    HOLD = "hold"
    PREDICTIVE_UP = "predictive_scale_up"  # forecast load needs more replicas
    PREDICTIVE_DOWN = "predictive_scale_down"
    REACTIVE_QUEUE = "reactive_queue"  # prefill queue / waiting requests above threshold
    REACTIVE_KV = "reactive_kv"  # KV-cache utilisation above threshold
    REACTIVE_SLA = "reactive_sla"  # observed / estimated TTFT or ITL above the SLA
    REACTIVE_DOWN = "reactive_scale_down"
    CONSOLIDATION_REFUSED = "consolidation_refused"  # survivors could not absorb N/(N-1) of the load
    IDLE_TO_MIN = "idle_to_min"  # traffic stopped: scale to the minimum
    GRACE_PERIOD = "grace_period"  # replicas were just added: no scale-down yet
    MISS_MEMORY = "miss_memory"  # the pool recently missed its SLA at this load per replica
    STABILISING = "stabilising"  # a higher count was recommended within the stabilisation window
    OPENING_CUT = "opening_cut"  # warming up, far above what a wide margin over the load needs: one cut
    STEP_CAPPED = "step_capped"
    BUDGET_CAPPED = "budget_capped"  # local GPU budget or global grant
    MAX_CAPPED = "max_capped"
    MIN_FLOOR = "min_floor"
    UNSCHEDULABLE = "unschedulable"  # wanted replicas cannot be placed: do not ask for more of them
    NO_DATA = "no_data"  # no usable observation yet: keep the current target


class PoolDecision(BaseModel):
    model_config = ConfigDict(frozen=True)

    role: PoolRole
    current: int = Field(ge=0, description="ready + starting replicas when deciding")
    wanted: int = Field(ge=0, description="what the sizing asked for before limits")
    target: int = Field(ge=0)
    reason: DecisionReason
    detail: str = ""
    estimated_ttft_ms: float | None = None
    estimated_itl_ms: float | None = None
    curve: list[float] = Field(
        default_factory=list,
        description="demand curve: attainment for 0..max replicas, averaged over the forecast's uncertainty",
    )
    curve_low: list[float] = Field(
        default_factory=list, description="attainment at the forecast's upper load (pessimistic)"
    )
    replica_capacity_rps: float | None = Field(
        default=None, gt=0, description="requests/s one replica sustains at the SLA"
    )
    queued_requests: int | None = Field(
        default=None, ge=0, description="requests waiting at this pool at the end of the window"
    )
    late_rps_per_replica: float | None = Field(
        default=None, gt=0, description="the lowest load per replica of the windows in a row the pool has been late in"
    )


class AgentDecision(BaseModel):
    """One planning step of one deployment's agent."""

    model_config = ConfigDict(frozen=True)

    time_s: float
    deployment: str
    tenant: str
    loop: Literal["throughput", "load"]
    observed_rps: float | None
    forecast_rps: float | None
    forecast_upper_rps: float | None
    input_tokens_mean: float | None
    output_tokens_mean: float | None
    pools: list[PoolDecision]
    advisory: bool = False
    arrival_scv: float | None = Field(default=None, description="burstiness the sizing assumed (1 = Poisson)")
    ttft_factor: float | None = Field(default=None, description="observed / predicted TTFT the sizing corrects by")


class AgentInput(BaseModel):
    """One tick's input: the time and the pools' observations (None when none could be read)."""

    model_config = ConfigDict(frozen=True)

    now_s: float = Field(allow_inf_nan=False)
    observations: list[PoolObservation] | None = None


class AgentEffects(BaseModel):
    """What one tick decided: the targets to apply (none when advisory), the decision record
    (reasons, estimates, diagnostics) and the demand curves an arbiter trades off."""

    model_config = ConfigDict(frozen=True)

    targets: dict[PoolRole, int]
    decision: AgentDecision
    curves: dict[PoolRole, list[float]] = Field(description="attainment for 0..max replicas, per pool")
    knobs: dict[PoolRole, EngineKnobs] = Field(
        default_factory=dict, description="engine knobs each pool should run with (empty: the agent does not tune)"
    )


class RuntimeLimits(BaseModel):
    """Limits an operator may change at run time through the control endpoint."""

    model_config = ConfigDict(extra="forbid")

    gpu_budget: int | None = Field(default=None, ge=0, description="local GPU budget; None = no local budget")
    min_replicas: dict[PoolRole, int] = Field(default_factory=dict)
    max_replicas: dict[PoolRole, int] = Field(default_factory=dict)
    advisory: bool | None = None
