"""What a simulation run records: the data every output (summary, timeline, report) is made from."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from fleet_planner.planning import DeploymentSpec, PoolRole

# RequestRecords.status values
COMPLETED = 0
REJECTED = 1
UNFINISHED = 2


@dataclass
class RequestRecords:
    """One row per request that arrived (struct of arrays). Latencies are NaN where undefined
    (rejected requests; unfinished ones lack what they did not reach)."""

    endpoint: np.ndarray  # int32 index into SimulationResult.endpoints
    deployment: np.ndarray  # int32 index into SimulationResult.deployments, -1 if never routed
    arrival_s: np.ndarray  # float64
    input_tokens: np.ndarray  # int64
    output_tokens: np.ndarray  # int64
    ttft_ms: np.ndarray  # float64, arrival -> first token (every queue included)
    itl_ms: np.ndarray  # float64, mean inter-token latency after the first token
    e2e_ms: np.ndarray  # float64, arrival -> last token
    status: np.ndarray  # int8: COMPLETED / REJECTED / UNFINISHED


@dataclass
class TimelineRow:
    """One pool over one recording interval ``[time_s - interval_s, time_s]``."""

    time_s: float
    deployment: str
    role: PoolRole
    gpu_type: str
    target: int
    ready: int
    starting: int
    draining: int
    pending: int
    gpus: int  # GPUs held by the pool at time_s (starting + ready + draining replicas)
    gpu_seconds: float  # GPU-seconds the pool held over the interval (the rows add up to the run's)
    arrivals: int  # requests admitted to the pool during the interval
    ttft_p90_ms: float  # NaN when no request got its first token in the interval
    itl_p90_ms: float  # NaN when no request finished in the interval


@dataclass
class DecisionRecord:
    """A replica-target change."""

    time_s: float
    deployment: str
    role: PoolRole
    from_replicas: int
    to_replicas: int
    reason: str


@dataclass
class SimulationResult:
    name: str
    policy: str
    clairvoyant: bool
    seed: int
    duration_s: float
    gpu_inventory: dict[str, int]
    endpoints: list[str]
    endpoint_sla: dict[str, tuple[float, float]]  # endpoint -> (ttft_ms, itl_ms)
    deployments: list[DeploymentSpec]
    requests: RequestRecords
    timeline: list[TimelineRow]
    decisions: list[DecisionRecord]
    gpu_seconds: dict[tuple[str, str], float]  # (deployment, role) -> GPU-seconds held
    scale_events: dict[str, int]  # deployment -> number of replica-target changes
    max_gpus_in_use: dict[str, int]  # per GPU type, the peak held at any instant
    budget_violations: int  # ticks at which the policy's targets asked for more GPUs than the inventory
    wall_seconds: float
    simulated_seconds: float
    notes: list[str] = field(default_factory=list)  # warnings worth showing a user (clamped profiles, ...)
