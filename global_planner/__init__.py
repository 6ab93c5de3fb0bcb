"""Global planner: owns the fleet GPU budget and solves one allocation over every pool.

The pure core lives in :mod:`global_planner.allocation` (models, CP-SAT solver, greedy fallback)
and :mod:`global_planner.policy_file` (tenant policy files); adapters (gRPC, leases, metrics)
build on them without adding I/O to the core.
"""
