"""Analytical capacity model: SLA attainment of a pool for every replica count (demand curves).

Used by the simulator's static-peak and oracle baselines, by the local agent's predictive sizing
and, through the curves, by the global planner. Queueing approximations are documented in
:mod:`local_agent.sizing.curves`.
"""

from local_agent.sizing.curves import (
    CurveDetail,
    EngineModel,
    PoolCurve,
    agg_curve,
    decode_curve,
    kv_transfer_ms,
    prefill_curve,
)
from local_agent.sizing.deployment import (
    cheapest_pair,
    deployment_curves,
    replicas_for,
    size_deployment,
)
from local_agent.sizing.load import Calibration, LoadEstimate

__all__ = [
    "Calibration",
    "CurveDetail",
    "EngineModel",
    "LoadEstimate",
    "PoolCurve",
    "agg_curve",
    "cheapest_pair",
    "decode_curve",
    "deployment_curves",
    "kv_transfer_ms",
    "prefill_curve",
    "replicas_for",
    "size_deployment",
]
