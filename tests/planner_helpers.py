"""Shared by the tests of the planner service over real gRPC: a planner on a loopback port with a
simulated clock, token auth and its own metrics registry."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path

from prometheus_client import CollectorRegistry

from fleet_planner.clock import SimulatedClock
from global_planner.policy_file import TenantPolicy
from global_planner.service.audit import AuditLog
from global_planner.service.auth import Identity, TokenAuthenticator
from global_planner.service.metrics import ServiceMetrics
from global_planner.service.server import PlannerServer
from global_planner.service.state import PlannerState


@asynccontextmanager
async def loopback_planner(
    policy: TenantPolicy, tokens: Mapping[str, Identity], audit_dir: Path
) -> AsyncIterator[PlannerServer]:
    """A started planner (30 s leases, clock at 1000 s); the test reaches it at ``server.target`` and
    moves ``server.test_clock``; ``server.registry`` holds its metrics."""
    clock = SimulatedClock(1000.0)
    registry = CollectorRegistry()
    server = PlannerServer(
        PlannerState(policy, lease_s=30.0),
        auth=TokenAuthenticator(dict(tokens)),
        metrics=ServiceMetrics(registry),
        audit=AuditLog(audit_dir),
        clock=clock,
    )
    port = await server.start("127.0.0.1:0")
    server.target = f"127.0.0.1:{port}"  # type: ignore[attr-defined]
    server.test_clock = clock  # type: ignore[attr-defined]
    server.registry = registry  # type: ignore[attr-defined]
    try:
        yield server
    finally:
        await server.stop(0)
