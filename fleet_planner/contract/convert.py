"""Protobuf <-> pydantic at the wire boundary, with validation errors naming the proto field.

Nothing from a message reaches the state machine unless the whole message validated, so a bad
message is rejected without any partial effect.
"""

from __future__ import annotations

import math
from typing import Any, TypeVar

from google.protobuf.message import Message
from pydantic import BaseModel, ValidationError

from fleet_planner.api.v1 import planner_pb2 as pb
from fleet_planner.contract.models import (
    AckApplied,
    AckDrained,
    AgentReport,
    Forecast,
    Observed,
    PoolRegistration,
    PoolReport,
    PoolTarget,
    Registration,
    Targets,
)
from fleet_planner.planning import PoolRole

M = TypeVar("M", bound=BaseModel)

ROLE_FROM_PB: dict[pb.PoolRole, PoolRole] = {
    pb.POOL_ROLE_PREFILL: "prefill",
    pb.POOL_ROLE_DECODE: "decode",
    pb.POOL_ROLE_AGG: "agg",
}
ROLE_TO_PB: dict[PoolRole, pb.PoolRole] = {role: value for value, role in ROLE_FROM_PB.items()}


class InvalidMessage(ValueError):
    """A message that fails validation; ``field`` is the proto path (``pools[0].curve[3]``)."""

    def __init__(self, field: str, problem: str):
        self.field = field
        self.problem = problem
        super().__init__(f"{field}: {problem}" if field else problem)


def _path(loc: tuple[int | str, ...]) -> str:
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


def _validate(model: type[M], data: dict[str, Any]) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as error:
        first = error.errors()[0]
        problem = first["msg"].removeprefix("Value error, ")
        value = first.get("input")
        if (isinstance(value, float) and not math.isfinite(value)) or (
            isinstance(value, int | float) and not isinstance(value, bool)
        ):
            problem += f" (got {value})"
        elif isinstance(value, list | str) and len(value) > 64:
            problem += f" (got length {len(value)})"
        more = len(error.errors()) - 1
        if more:
            problem += f"; and {more} more problem(s)"
        raise InvalidMessage(_path(first["loc"]), problem) from None


def _role(value: int, field: str) -> PoolRole:
    role = ROLE_FROM_PB.get(value)  # type: ignore[call-overload]  # any int may arrive on the wire
    if role is None:
        raise InvalidMessage(field, "must be POOL_ROLE_PREFILL, POOL_ROLE_DECODE or POOL_ROLE_AGG")
    return role


def _optional(message: Message, name: str) -> Any:
    return getattr(message, name) if message.HasField(name) else None


def registration_from_pb(request: pb.RegisterRequest) -> Registration:
    pools = [
        {
            "role": _role(p.role, f"pools[{i}].role"),
            "gpu_type": p.gpu_type,
            "gpus_per_replica": p.gpus_per_replica,
            "min_replicas": p.min_replicas,
            "max_replicas": p.max_replicas,
            "fallback_replicas": p.fallback_replicas,
            "startup_s": _optional(p, "startup_s"),
        }
        for i, p in enumerate(request.pools)
    ]
    return _validate(
        Registration,
        {
            "deployment": request.deployment,
            "tenant": request.tenant,
            "endpoint": request.endpoint,
            "pools": pools,
            "capacity_rps": _optional(request, "capacity_rps"),
        },
    )


def report_from_pb(request: pb.ReportRequest) -> AgentReport:
    data: dict[str, Any] = {
        "deployment": request.deployment,
        "session_id": request.session_id,
        "sequence": request.sequence,
        "agent_time_s": request.agent_time_s,
        "applied_decision_id": request.applied_decision_id,
        "pools": [
            {
                "role": _role(p.role, f"pools[{i}].role"),
                "ready": p.ready,
                "starting": p.starting,
                "draining": p.draining,
                "pending": p.pending,
                "curve": list(p.curve),
                "pessimistic_curve": list(p.pessimistic_curve),
                "replica_capacity_rps": _optional(p, "replica_capacity_rps"),
                "wanted_replicas": _optional(p, "wanted_replicas"),
                "queued_requests": _optional(p, "queued_requests"),
                "late_rps_per_replica": _optional(p, "late_rps_per_replica"),
            }
            for i, p in enumerate(request.pools)
        ],
    }
    if request.HasField("forecast"):
        f = request.forecast
        data["forecast"] = {"mean_rps": f.mean_rps, "upper_rps": f.upper_rps, "horizon_s": f.horizon_s}
    if request.HasField("observed"):
        o = request.observed
        data["observed"] = {
            "window_s": o.window_s,
            **{name: _optional(o, name) for name in ("admitted_rps", "ttft_p90_ms", "itl_p90_ms")},
        }
    return _validate(AgentReport, data)


def ack_applied_from_pb(request: pb.AckAppliedRequest) -> AckApplied:
    applied = [
        {"role": _role(p.role, f"applied[{i}].role"), "replicas": p.replicas} for i, p in enumerate(request.applied)
    ]
    return _validate(
        AckApplied,
        {
            "deployment": request.deployment,
            "session_id": request.session_id,
            "decision_id": request.decision_id,
            "applied": applied,
        },
    )


def ack_drained_from_pb(request: pb.AckDrainedRequest) -> AckDrained:
    return _validate(
        AckDrained,
        {
            "deployment": request.deployment,
            "session_id": request.session_id,
            "decision_id": request.decision_id,
            "role": _role(request.role, "role"),
            "gpus_freed": request.gpus_freed,
        },
    )


def targets_to_pb(targets: Targets) -> pb.Targets:
    return pb.Targets(
        decision_id=targets.decision_id,
        lease_expires_s=targets.lease_expires_s,
        planner_time_s=targets.planner_time_s,
        pools=[
            pb.PoolTarget(
                role=ROLE_TO_PB[p.role], replicas=p.replicas, reason=p.reason, headroom_replicas=p.headroom_replicas
            )
            for p in targets.pools
        ],
        endpoint=targets.endpoint,
        routing=[pb.RoutingWeight(deployment=name, weight=w) for name, w in sorted(targets.routing.items())],
        admission_rps=targets.admission_rps,
        endpoint_share=targets.endpoint_share,
        waiting_for_gpus=targets.waiting_for_gpus,
    )


def targets_from_pb(message: pb.Targets, deployment: str) -> Targets:
    return Targets(
        deployment=deployment,
        decision_id=message.decision_id,
        lease_expires_s=message.lease_expires_s,
        planner_time_s=message.planner_time_s,
        pools=[
            PoolTarget(
                role=ROLE_FROM_PB[p.role], replicas=p.replicas, reason=p.reason, headroom_replicas=p.headroom_replicas
            )
            for p in message.pools
        ],
        endpoint=message.endpoint,
        routing={r.deployment: r.weight for r in message.routing},
        admission_rps=_optional(message, "admission_rps"),
        endpoint_share=_optional(message, "endpoint_share"),
        waiting_for_gpus=message.waiting_for_gpus,
    )


def registration_to_pb(registration: Registration) -> pb.RegisterRequest:
    return pb.RegisterRequest(
        deployment=registration.deployment,
        tenant=registration.tenant,
        endpoint=registration.endpoint,
        pools=[_pool_spec_to_pb(p) for p in registration.pools],
        capacity_rps=registration.capacity_rps,
    )


def _pool_spec_to_pb(pool: PoolRegistration) -> pb.PoolSpec:
    return pb.PoolSpec(
        role=ROLE_TO_PB[pool.role],
        gpu_type=pool.gpu_type,
        gpus_per_replica=pool.gpus_per_replica,
        min_replicas=pool.min_replicas,
        max_replicas=pool.max_replicas,
        fallback_replicas=pool.fallback_replicas,
        startup_s=pool.startup_s,
    )


def report_to_pb(report: AgentReport) -> pb.ReportRequest:
    message = pb.ReportRequest(
        deployment=report.deployment,
        session_id=report.session_id,
        sequence=report.sequence,
        agent_time_s=report.agent_time_s,
        applied_decision_id=report.applied_decision_id,
        pools=[_pool_report_to_pb(p) for p in report.pools],
    )
    if report.forecast is not None:
        message.forecast.CopyFrom(_forecast_to_pb(report.forecast))
    if report.observed is not None:
        message.observed.CopyFrom(_observed_to_pb(report.observed))
    return message


def _forecast_to_pb(forecast: Forecast) -> pb.Forecast:
    return pb.Forecast(mean_rps=forecast.mean_rps, upper_rps=forecast.upper_rps, horizon_s=forecast.horizon_s)


def _observed_to_pb(observed: Observed) -> pb.Observed:
    return pb.Observed(**observed.model_dump(exclude_none=True))


def _pool_report_to_pb(pool: PoolReport) -> pb.PoolReport:
    message = pb.PoolReport(
        role=ROLE_TO_PB[pool.role],
        ready=pool.ready,
        starting=pool.starting,
        draining=pool.draining,
        pending=pool.pending,
        curve=pool.curve,
        pessimistic_curve=pool.pessimistic_curve,
    )
    if pool.replica_capacity_rps is not None:
        message.replica_capacity_rps = pool.replica_capacity_rps
    if pool.wanted_replicas is not None:
        message.wanted_replicas = pool.wanted_replicas
    if pool.queued_requests is not None:
        message.queued_requests = pool.queued_requests
    if pool.late_rps_per_replica is not None:
        message.late_rps_per_replica = pool.late_rps_per_replica
    return message
