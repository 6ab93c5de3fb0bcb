"""Pure fleet allocation: demand curves in, replica targets and routing weights out."""

from global_planner.allocation.greedy import allocate_greedy
from global_planner.allocation.models import (
    Allocation,
    AllocationRequest,
    AllocationStatus,
    PoolDemand,
    PoolOverride,
    Stability,
    TenantLimits,
)
from global_planner.allocation.routing import EndpointPlan, endpoint_plans
from global_planner.allocation.solver import allocate

__all__ = [
    "Allocation",
    "AllocationRequest",
    "AllocationStatus",
    "EndpointPlan",
    "PoolDemand",
    "PoolOverride",
    "Stability",
    "TenantLimits",
    "allocate",
    "allocate_greedy",
    "endpoint_plans",
]
