from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PoolRole(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    POOL_ROLE_UNSPECIFIED: _ClassVar[PoolRole]
    POOL_ROLE_PREFILL: _ClassVar[PoolRole]
    POOL_ROLE_DECODE: _ClassVar[PoolRole]
    POOL_ROLE_AGG: _ClassVar[PoolRole]
POOL_ROLE_UNSPECIFIED: PoolRole
POOL_ROLE_PREFILL: PoolRole
POOL_ROLE_DECODE: PoolRole
POOL_ROLE_AGG: PoolRole

class PoolSpec(_message.Message):
    __slots__ = ("role", "gpu_type", "gpus_per_replica", "min_replicas", "max_replicas", "fallback_replicas", "startup_s")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    GPU_TYPE_FIELD_NUMBER: _ClassVar[int]
    GPUS_PER_REPLICA_FIELD_NUMBER: _ClassVar[int]
    MIN_REPLICAS_FIELD_NUMBER: _ClassVar[int]
    MAX_REPLICAS_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_REPLICAS_FIELD_NUMBER: _ClassVar[int]
    STARTUP_S_FIELD_NUMBER: _ClassVar[int]
    role: PoolRole
    gpu_type: str
    gpus_per_replica: int
    min_replicas: int
    max_replicas: int
    fallback_replicas: int
    startup_s: float
    def __init__(self, role: _Optional[_Union[PoolRole, str]] = ..., gpu_type: _Optional[str] = ..., gpus_per_replica: _Optional[int] = ..., min_replicas: _Optional[int] = ..., max_replicas: _Optional[int] = ..., fallback_replicas: _Optional[int] = ..., startup_s: _Optional[float] = ...) -> None: ...

class RegisterRequest(_message.Message):
    __slots__ = ("deployment", "tenant", "endpoint", "pools", "capacity_rps")
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    POOLS_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_RPS_FIELD_NUMBER: _ClassVar[int]
    deployment: str
    tenant: str
    endpoint: str
    pools: _containers.RepeatedCompositeFieldContainer[PoolSpec]
    capacity_rps: float
    def __init__(self, deployment: _Optional[str] = ..., tenant: _Optional[str] = ..., endpoint: _Optional[str] = ..., pools: _Optional[_Iterable[_Union[PoolSpec, _Mapping]]] = ..., capacity_rps: _Optional[float] = ...) -> None: ...

class RegisterResponse(_message.Message):
    __slots__ = ("session_id", "planner_time_s", "lease_s", "report_interval_s", "targets")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    PLANNER_TIME_S_FIELD_NUMBER: _ClassVar[int]
    LEASE_S_FIELD_NUMBER: _ClassVar[int]
    REPORT_INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    TARGETS_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    planner_time_s: float
    lease_s: float
    report_interval_s: float
    targets: Targets
    def __init__(self, session_id: _Optional[str] = ..., planner_time_s: _Optional[float] = ..., lease_s: _Optional[float] = ..., report_interval_s: _Optional[float] = ..., targets: _Optional[_Union[Targets, _Mapping]] = ...) -> None: ...

class Forecast(_message.Message):
    __slots__ = ("mean_rps", "upper_rps", "horizon_s")
    MEAN_RPS_FIELD_NUMBER: _ClassVar[int]
    UPPER_RPS_FIELD_NUMBER: _ClassVar[int]
    HORIZON_S_FIELD_NUMBER: _ClassVar[int]
    mean_rps: float
    upper_rps: float
    horizon_s: float
    def __init__(self, mean_rps: _Optional[float] = ..., upper_rps: _Optional[float] = ..., horizon_s: _Optional[float] = ...) -> None: ...

class Observed(_message.Message):
    __slots__ = ("window_s", "admitted_rps", "ttft_p90_ms", "itl_p90_ms")
    WINDOW_S_FIELD_NUMBER: _ClassVar[int]
    ADMITTED_RPS_FIELD_NUMBER: _ClassVar[int]
    TTFT_P90_MS_FIELD_NUMBER: _ClassVar[int]
    ITL_P90_MS_FIELD_NUMBER: _ClassVar[int]
    window_s: float
    admitted_rps: float
    ttft_p90_ms: float
    itl_p90_ms: float
    def __init__(self, window_s: _Optional[float] = ..., admitted_rps: _Optional[float] = ..., ttft_p90_ms: _Optional[float] = ..., itl_p90_ms: _Optional[float] = ...) -> None: ...

class PoolReport(_message.Message):
    __slots__ = ("role", "ready", "starting", "draining", "pending", "curve", "pessimistic_curve", "replica_capacity_rps", "wanted_replicas", "queued_requests", "late_rps_per_replica")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    STARTING_FIELD_NUMBER: _ClassVar[int]
    DRAINING_FIELD_NUMBER: _ClassVar[int]
    PENDING_FIELD_NUMBER: _ClassVar[int]
    CURVE_FIELD_NUMBER: _ClassVar[int]
    PESSIMISTIC_CURVE_FIELD_NUMBER: _ClassVar[int]
    REPLICA_CAPACITY_RPS_FIELD_NUMBER: _ClassVar[int]
    WANTED_REPLICAS_FIELD_NUMBER: _ClassVar[int]
    QUEUED_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    LATE_RPS_PER_REPLICA_FIELD_NUMBER: _ClassVar[int]
    role: PoolRole
    ready: int
    starting: int
    draining: int
    pending: int
    curve: _containers.RepeatedScalarFieldContainer[float]
    pessimistic_curve: _containers.RepeatedScalarFieldContainer[float]
    replica_capacity_rps: float
    wanted_replicas: int
    queued_requests: float
    late_rps_per_replica: float
    def __init__(self, role: _Optional[_Union[PoolRole, str]] = ..., ready: _Optional[int] = ..., starting: _Optional[int] = ..., draining: _Optional[int] = ..., pending: _Optional[int] = ..., curve: _Optional[_Iterable[float]] = ..., pessimistic_curve: _Optional[_Iterable[float]] = ..., replica_capacity_rps: _Optional[float] = ..., wanted_replicas: _Optional[int] = ..., queued_requests: _Optional[float] = ..., late_rps_per_replica: _Optional[float] = ...) -> None: ...

class ReportRequest(_message.Message):
    __slots__ = ("deployment", "session_id", "sequence", "agent_time_s", "applied_decision_id", "forecast", "observed", "pools")
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    AGENT_TIME_S_FIELD_NUMBER: _ClassVar[int]
    APPLIED_DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    FORECAST_FIELD_NUMBER: _ClassVar[int]
    OBSERVED_FIELD_NUMBER: _ClassVar[int]
    POOLS_FIELD_NUMBER: _ClassVar[int]
    deployment: str
    session_id: str
    sequence: int
    agent_time_s: float
    applied_decision_id: int
    forecast: Forecast
    observed: Observed
    pools: _containers.RepeatedCompositeFieldContainer[PoolReport]
    def __init__(self, deployment: _Optional[str] = ..., session_id: _Optional[str] = ..., sequence: _Optional[int] = ..., agent_time_s: _Optional[float] = ..., applied_decision_id: _Optional[int] = ..., forecast: _Optional[_Union[Forecast, _Mapping]] = ..., observed: _Optional[_Union[Observed, _Mapping]] = ..., pools: _Optional[_Iterable[_Union[PoolReport, _Mapping]]] = ...) -> None: ...

class PoolTarget(_message.Message):
    __slots__ = ("role", "replicas", "reason", "headroom_replicas")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    HEADROOM_REPLICAS_FIELD_NUMBER: _ClassVar[int]
    role: PoolRole
    replicas: int
    reason: str
    headroom_replicas: int
    def __init__(self, role: _Optional[_Union[PoolRole, str]] = ..., replicas: _Optional[int] = ..., reason: _Optional[str] = ..., headroom_replicas: _Optional[int] = ...) -> None: ...

class RoutingWeight(_message.Message):
    __slots__ = ("deployment", "weight")
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    deployment: str
    weight: float
    def __init__(self, deployment: _Optional[str] = ..., weight: _Optional[float] = ...) -> None: ...

class Targets(_message.Message):
    __slots__ = ("decision_id", "lease_expires_s", "planner_time_s", "pools", "endpoint", "routing", "admission_rps", "endpoint_share", "waiting_for_gpus")
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_EXPIRES_S_FIELD_NUMBER: _ClassVar[int]
    PLANNER_TIME_S_FIELD_NUMBER: _ClassVar[int]
    POOLS_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    ROUTING_FIELD_NUMBER: _ClassVar[int]
    ADMISSION_RPS_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_SHARE_FIELD_NUMBER: _ClassVar[int]
    WAITING_FOR_GPUS_FIELD_NUMBER: _ClassVar[int]
    decision_id: int
    lease_expires_s: float
    planner_time_s: float
    pools: _containers.RepeatedCompositeFieldContainer[PoolTarget]
    endpoint: str
    routing: _containers.RepeatedCompositeFieldContainer[RoutingWeight]
    admission_rps: float
    endpoint_share: float
    waiting_for_gpus: bool
    def __init__(self, decision_id: _Optional[int] = ..., lease_expires_s: _Optional[float] = ..., planner_time_s: _Optional[float] = ..., pools: _Optional[_Iterable[_Union[PoolTarget, _Mapping]]] = ..., endpoint: _Optional[str] = ..., routing: _Optional[_Iterable[_Union[RoutingWeight, _Mapping]]] = ..., admission_rps: _Optional[float] = ..., endpoint_share: _Optional[float] = ..., waiting_for_gpus: _Optional[bool] = ...) -> None: ...

class ReportResponse(_message.Message):
    __slots__ = ("targets",)
    TARGETS_FIELD_NUMBER: _ClassVar[int]
    targets: Targets
    def __init__(self, targets: _Optional[_Union[Targets, _Mapping]] = ...) -> None: ...

class PoolReplicas(_message.Message):
    __slots__ = ("role", "replicas")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    role: PoolRole
    replicas: int
    def __init__(self, role: _Optional[_Union[PoolRole, str]] = ..., replicas: _Optional[int] = ...) -> None: ...

class AckAppliedRequest(_message.Message):
    __slots__ = ("deployment", "session_id", "decision_id", "applied")
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    APPLIED_FIELD_NUMBER: _ClassVar[int]
    deployment: str
    session_id: str
    decision_id: int
    applied: _containers.RepeatedCompositeFieldContainer[PoolReplicas]
    def __init__(self, deployment: _Optional[str] = ..., session_id: _Optional[str] = ..., decision_id: _Optional[int] = ..., applied: _Optional[_Iterable[_Union[PoolReplicas, _Mapping]]] = ...) -> None: ...

class AckDrainedRequest(_message.Message):
    __slots__ = ("deployment", "session_id", "decision_id", "role", "gpus_freed")
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    GPUS_FREED_FIELD_NUMBER: _ClassVar[int]
    deployment: str
    session_id: str
    decision_id: int
    role: PoolRole
    gpus_freed: int
    def __init__(self, deployment: _Optional[str] = ..., session_id: _Optional[str] = ..., decision_id: _Optional[int] = ..., role: _Optional[_Union[PoolRole, str]] = ..., gpus_freed: _Optional[int] = ...) -> None: ...

class AckResponse(_message.Message):
    __slots__ = ("targets",)
    TARGETS_FIELD_NUMBER: _ClassVar[int]
    targets: Targets
    def __init__(self, targets: _Optional[_Union[Targets, _Mapping]] = ...) -> None: ...
