"""The policy interface: the one contract between planning code and the world.

Every planner (static baselines, the clairvoyant oracle, the local agent, the global planner) is a
``Policy``: it is handed the fleet's static description once, then, on each tick, the time and the
latest *delivered* observation, and it returns replica targets. Time is an input, so the same
policy runs on the wall clock, in the simulator and in tests.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from fleet_planner.knobs import DEFAULT_MAX_BATCH_TOKENS, DEFAULT_MAX_NUM_SEQS, EngineKnobs

PoolRole = Literal["prefill", "decode", "agg"]
DeploymentMode = Literal["disagg", "agg"]


class FrozenModel(BaseModel):
    """The one base of every validated record and file model: immutable, unknown keys refused."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class SLA(FrozenModel):
    """Per-request latency targets; a request meets the SLA when both hold."""

    ttft_ms: float = Field(gt=0, allow_inf_nan=False)
    itl_ms: float = Field(gt=0, allow_inf_nan=False)


class PoolSpec(FrozenModel):
    """What a planner knows of one pool before any traffic: its engine, GPUs and bounds."""

    deployment: str
    role: PoolRole
    profile_path: str
    gpu_type: str
    gpus_per_replica: int = Field(ge=1)
    min_replicas: int = Field(ge=0)
    max_replicas: int = Field(ge=0)
    initial_replicas: int = Field(ge=0)
    startup_s: float = Field(ge=0, allow_inf_nan=False)
    # Engine knobs in force (vLLM --max-num-batched-tokens / --max-num-seqs): sizing must use them.
    max_batch_tokens: int = Field(default=DEFAULT_MAX_BATCH_TOKENS, ge=1)
    max_num_seqs: int = Field(default=DEFAULT_MAX_NUM_SEQS, ge=1)


class DeploymentSpec(FrozenModel):
    """One deployment (DGD): the pools that serve one endpoint for one tenant."""

    name: str
    tenant: str
    endpoint: str
    mode: DeploymentMode
    sla: SLA
    pools: dict[PoolRole, PoolSpec]


# Far past any count, token figure or latency (ms) one window of a real fleet shows: a metric
# beyond it is an exporter's slip (1e300 admitted requests), refused at the boundary rather than
# overflowing the agent's forecast and capacity model.
MAX_OBSERVED = 1e12


class Distribution(FrozenModel):
    """Summary of a sample (token lengths or latencies) over an observation window."""

    count: int = Field(ge=0, le=MAX_OBSERVED)
    mean: float
    p50: float
    p90: float
    p99: float

    @field_validator("mean", "p50", "p90", "p99")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value) or not 0 <= value <= MAX_OBSERVED:
            raise ValueError(f"must be finite, >= 0 and <= {MAX_OBSERVED:g}, got {value}")
        return value


class PoolObservation(FrozenModel):
    """What one pool looked like over ``[time_s - window_s, time_s]``.

    Missing data is ``None``, never 0: "no metric" and "no traffic" must not look alike.
    """

    deployment: str
    role: PoolRole
    time_s: float
    window_s: float = Field(gt=0)
    ready: int = Field(ge=0)
    starting: int = Field(ge=0)
    draining: int = Field(ge=0)
    pending: int = Field(ge=0, description="replicas wanted but not schedulable (no free GPUs)")
    admitted: int | None = Field(default=None, ge=0, le=MAX_OBSERVED, description="requests admitted in the window")
    endpoint_admitted: int | None = Field(
        default=None,
        ge=0,
        le=MAX_OBSERVED,
        description="requests admitted by the whole endpoint (all its deployments) in the window",
    )
    endpoint_shed: int | None = Field(
        default=None,
        ge=0,
        le=MAX_OBSERVED,
        description="requests of the whole endpoint its gateway turned away in the window (an admission limit): "
        "demand that was never admitted, which a forecast of admissions alone would lose",
    )
    input_tokens: Distribution | None = None
    output_tokens: Distribution | None = None
    endpoint_input_tokens: Distribution | None = Field(
        default=None,
        description="lengths of the whole endpoint's requests (a gateway's view): what a pool without "
        "traffic of its own sizes on",
    )
    endpoint_output_tokens: Distribution | None = None
    ttft_ms: Distribution | None = None
    itl_ms: Distribution | None = None
    queued_requests: int | None = Field(default=None, ge=0, le=MAX_OBSERVED)
    queued_prefill_tokens: float | None = Field(default=None, ge=0, le=MAX_OBSERVED)
    active_kv_tokens: float | None = Field(default=None, ge=0, le=MAX_OBSERVED)
    kv_capacity_tokens: float | None = Field(default=None, ge=0, le=MAX_OBSERVED)
    iteration_ms: float | None = Field(default=None, ge=0, le=MAX_OBSERVED)
    scheduled_tokens_per_s: float | None = Field(default=None, ge=0, le=MAX_OBSERVED)
    prefix_hit_rate: float | None = Field(
        default=None, ge=0, le=1, description="share of prefilled prompt tokens served from the prefix cache"
    )


class FleetObservation(FrozenModel):
    """All pools' observations as delivered to a planner (already delayed like a metrics scrape)."""

    time_s: float
    pools: list[PoolObservation]


class ReplicaTarget(FrozenModel):
    deployment: str
    role: PoolRole
    replicas: int = Field(ge=0)
    reason: str
    knobs: EngineKnobs | None = Field(
        default=None, description="engine knobs the pool should run with (None: unchanged)"
    )


class Decision(FrozenModel):
    """A policy's output for one tick: targets for the pools it wants changed (or confirmed), and
    optionally per-endpoint routing weights (deployment name -> share of the endpoint's traffic)
    and admission limits (requests/s an endpoint admits; the rest is shed at the gateway)."""

    targets: list[ReplicaTarget] = Field(default_factory=list)
    routing: dict[str, dict[str, float]] = Field(default_factory=dict)
    admission: dict[str, float | None] = Field(
        default_factory=dict, description="endpoint -> admitted requests/s; None lifts an earlier limit"
    )


class Policy(ABC):
    """A planner. ``tick_s`` is how often it wants to be asked; ``clairvoyant`` labels the oracle."""

    name: str = "policy"
    clairvoyant: bool = False
    # How often between ticks the policy wants the replica counts (``between_ticks``); None: never.
    report_s: float | None = None

    def __init__(self, deployments: list[DeploymentSpec], tick_s: float):
        self.deployments = deployments
        self.tick_s = tick_s

    @abstractmethod
    def decide(self, now_s: float, observation: FleetObservation | None) -> Decision:
        """Targets for this tick. ``observation`` is None until the first one is delivered."""

    def replicas_now(self, observation: FleetObservation) -> None:
        """The replica counts as of this tick, before ``decide``: live they come from the
        orchestrator's API, not a metrics scrape, so they are not delayed. Only policies built on
        local agents read them (their observations and reports); the default ignores them."""

    def between_ticks(self, counts: FleetObservation) -> Decision | None:
        """Targets that change between two ticks, on the replica counts as of ``counts.time_s``
        (asked every ``report_s``): live, agents report every few seconds while a tick stands for a
        planner interval. None: nothing changes; the default."""
        return None

    def close(self) -> None:
        """Release what the policy holds (servers, threads); most hold nothing."""
