"""Pure fleet allocation: demand curves in, replica targets and routing weights out."""

from global_planner.allocation.greedy import allocate_greedy
from global_planner.allocation.models import (
    Allocation,
    AllocationRequest,
    AllocationStatus,
    PoolDemand,
    PoolOverride,
    TenantLimits,
)
from global_planner.allocation.solver import allocate

__all__ = [
    "Allocation",
    "AllocationRequest",
    "AllocationStatus",
    "PoolDemand",
    "PoolOverride",
    "TenantLimits",
    "allocate",
    "allocate_greedy",
]
