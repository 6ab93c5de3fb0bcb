"""Agent-side client of the global planner, with the fallback that keeps a deployment safe while
the planner is away.

Fallback contract (mirrored by the planner's accounting in ``global_planner.service.state``):

1. While the last lease is valid (minus ``drain_margin_s``, the time the agent needs to drain
   down), run the last grant.
2. Then run ``min(floor, last grant)`` per pool: the planner keeps exactly that reserved after
   the lease lapses, so the floor never takes GPUs the planner has given to someone else.
3. Before the first allocation round the planner answers with decision 0, a *holding* lease on
   the replicas it has counted from reports; without any lease at all the client runs
   ``min(floor, replicas last reported to the planner)``.

And while scaling up, start new replicas only into room the grant leaves after counting draining
replicas (:func:`replicas_to_start`): draining replicas still hold their GPUs.

Lease times are converted to the local clock conservatively: the lease is taken to run from when
the request was *sent*, so clock offsets between agent and planner never lengthen it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Literal

import grpc
from pydantic import BaseModel, ConfigDict, Field

from fleet_planner.api.v1 import planner_pb2 as pb
from fleet_planner.api.v1 import planner_pb2_grpc as pb_grpc
from fleet_planner.contract import convert
from fleet_planner.contract.models import (
    AgentReport,
    Forecast,
    Observed,
    PoolRegistration,
    PoolReport,
    Registration,
    Targets,
)

log = logging.getLogger(__name__)

TRANSIENT = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNKNOWN,
}


class Lease(BaseModel):
    """The last grant, with its expiry already moved to the agent's clock."""

    model_config = ConfigDict(frozen=True)
    decision_id: int
    replicas: dict[str, int]
    fallback_at: float = Field(description="local time at which the agent must be back at its floor")
    routing: dict[str, float] = Field(default_factory=dict)
    admission_rps: float | None = None


class EffectiveTargets(BaseModel):
    model_config = ConfigDict(frozen=True)
    replicas: dict[str, int]
    source: Literal["planner", "lease", "floor"]
    decision_id: int = 0
    routing: dict[str, float] = Field(default_factory=dict)
    admission_rps: float | None = None


def effective_targets(
    lease: Lease | None, floor: dict[str, int], reported: dict[str, int], now: float
) -> EffectiveTargets:
    """What the agent may run at local time ``now`` without hearing from the planner."""
    if lease is not None and now < lease.fallback_at:
        return EffectiveTargets(
            replicas=dict(lease.replicas),
            source="lease",
            decision_id=lease.decision_id,
            routing=dict(lease.routing),
            admission_rps=lease.admission_rps,
        )
    if lease is not None:
        replicas = {role: min(floor.get(role, 0), granted) for role, granted in lease.replicas.items()}
        return EffectiveTargets(replicas=replicas, source="floor", decision_id=lease.decision_id)
    return EffectiveTargets(replicas={role: min(n, reported.get(role, 0)) for role, n in floor.items()}, source="floor")


def replicas_to_start(target: int, ready: int, starting: int, draining: int) -> int:
    """New replicas an agent may start now: room under ``target`` once draining ones are counted."""
    return max(0, target - ready - starting - draining)


def lease_from_targets(targets: Targets, sent_at: float, drain_margin_s: float) -> Lease:
    """The local-clock lease a response grants."""
    remaining = targets.lease_expires_s - targets.planner_time_s
    return Lease(
        decision_id=targets.decision_id,
        replicas={p.role: p.replicas for p in targets.pools},
        fallback_at=sent_at + remaining - drain_margin_s,
        routing=dict(targets.routing),
        admission_rps=targets.admission_rps,
    )


class PlannerRejected(Exception):
    """The planner refused a message for a reason retrying will not fix (auth, validation)."""

    def __init__(self, code: grpc.StatusCode, details: str):
        self.code = code
        super().__init__(f"{code.name}: {details}")


class PlannerClient:
    """One deployment's connection to the planner: register, report, ack, and fall back.

    ``floor`` (replicas per role, or one number for every pool) is sent as each pool's
    ``fallback_replicas`` so the planner reserves what this client falls back to.
    """

    def __init__(
        self,
        target: str,
        token: str | None,
        deployment: str,
        tenant: str,
        endpoint: str,
        pools: list[PoolRegistration],
        *,
        floor: int | dict[str, int] = 0,
        drain_margin_s: float = 0.0,
        timeout_s: float = 2.0,
        credentials: grpc.ChannelCredentials | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        floors = floor if isinstance(floor, dict) else {p.role: floor for p in pools}
        self.registration = Registration(
            deployment=deployment,
            tenant=tenant,
            endpoint=endpoint,
            pools=[p.model_copy(update={"fallback_replicas": floors.get(p.role, 0)}) for p in pools],
        )
        self.floor = {p.role: p.fallback_replicas for p in self.registration.pools}
        self.drain_margin_s = drain_margin_s
        self.timeout_s = timeout_s
        self.clock = clock
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self._addresses = [address.strip() for address in target.split(",") if address.strip()]
        self._address = 0
        self._credentials = credentials
        self._connect()
        self.session_id: str | None = None
        self.lease: Lease | None = None
        self.reported: dict[str, int] = {}
        self.applied_decision_id = 0
        self.last_error: str | None = None
        self._sequence = 0

    async def __aenter__(self) -> PlannerClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _connect(self) -> None:
        target = self._addresses[self._address]
        self._channel = (
            grpc.aio.secure_channel(target, self._credentials)
            if self._credentials
            else grpc.aio.insecure_channel(target)
        )
        self._stub = pb_grpc.PlannerStub(self._channel)

    async def _next_address(self) -> None:
        """A follower (or a dead replica) answered UNAVAILABLE: move on to the next planner address."""
        await self._channel.close()
        self._address = (self._address + 1) % len(self._addresses)
        self._connect()

    async def close(self) -> None:
        await self._channel.close()

    def effective_targets(self, now: float | None = None) -> EffectiveTargets:
        return effective_targets(self.lease, self.floor, self.reported, self.clock() if now is None else now)

    def _accept(self, message: pb.Targets, sent_at: float, *, holding: bool) -> Targets:
        """Adopt a newer lease. A holding lease (decision 0) only counts after a report: before
        one the planner has counted none of our replicas."""
        targets = convert.targets_from_pb(message, self.registration.deployment)
        if targets.decision_id == 0 and not holding:
            return targets
        lease = lease_from_targets(targets, sent_at, self.drain_margin_s)
        if self.lease is None or lease.decision_id >= self.lease.decision_id:
            self.lease = lease
        return targets

    async def register(self) -> Targets:
        sent_at = self.clock()
        response: pb.RegisterResponse = await self._stub.Register(
            convert.registration_to_pb(self.registration), metadata=self._metadata, timeout=self.timeout_s
        )
        self.session_id, self._sequence = response.session_id, 0
        return self._accept(response.targets, sent_at, holding=False)

    async def report(
        self, pools: list[PoolReport], forecast: Forecast | None = None, observed: Observed | None = None
    ) -> EffectiveTargets:
        """Send a report; on a transient failure answer from the lease or the floor instead.

        With several planner addresses (``HOST:PORT,HOST:PORT``, one per replica), an UNAVAILABLE
        answer (a follower, or a replica that is gone) moves on to the next address at once.
        """
        for attempt in range(len(self._addresses)):
            try:
                return await self._report_registered(pools, forecast, observed)
            except grpc.aio.AioRpcError as error:
                if error.code() != grpc.StatusCode.UNAVAILABLE or attempt + 1 == len(self._addresses):
                    return self._failed(error)
                await self._next_address()
        raise AssertionError("unreachable: the last attempt returns")

    async def _report_registered(
        self, pools: list[PoolReport], forecast: Forecast | None, observed: Observed | None
    ) -> EffectiveTargets:
        try:
            return await self._report_once(pools, forecast, observed)
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.NOT_FOUND:  # planner restarted or session replaced
                raise
            await self.register()
            return await self._report_once(pools, forecast, observed)

    async def _report_once(
        self, pools: list[PoolReport], forecast: Forecast | None, observed: Observed | None
    ) -> EffectiveTargets:
        if self.session_id is None:
            await self.register()
        assert self.session_id is not None
        self._sequence += 1
        report = AgentReport(
            deployment=self.registration.deployment,
            session_id=self.session_id,
            sequence=self._sequence,
            agent_time_s=self.clock(),
            applied_decision_id=self.applied_decision_id,
            forecast=forecast,
            observed=observed,
            pools=pools,
        )
        sent_at = self.clock()
        response: pb.ReportResponse = await self._stub.Report(
            convert.report_to_pb(report), metadata=self._metadata, timeout=self.timeout_s
        )
        self.reported = {p.role: p.in_use for p in pools}
        self.last_error = None
        self._accept(response.targets, sent_at, holding=True)
        effective = self.effective_targets()
        return effective.model_copy(update={"source": "planner"}) if effective.source == "lease" else effective

    def _failed(self, error: grpc.aio.AioRpcError) -> EffectiveTargets:
        code = error.code()
        if code not in TRANSIENT:
            raise PlannerRejected(code, error.details() or "")
        self.last_error = f"{code.name}: {error.details()}"
        log.warning("planner unreachable (%s); running on %s", self.last_error, self.effective_targets().source)
        return self.effective_targets()

    async def ack_applied(self, decision_id: int, applied: dict[str, int]) -> None:
        """Tell the planner a decision's targets are set; later reports carry it as applied."""
        self.applied_decision_id = max(self.applied_decision_id, decision_id)
        request = pb.AckAppliedRequest(
            deployment=self.registration.deployment,
            session_id=self.session_id or "",
            decision_id=decision_id,
            applied=[pb.PoolReplicas(role=convert.ROLE_TO_PB[r], replicas=n) for r, n in sorted(applied.items())],
        )
        await self._send(self._stub.AckApplied, request)

    async def ack_drained(self, decision_id: int, role: str, gpus_freed: int) -> None:
        """A pool finished draining to ``decision_id``'s target: its GPUs may go elsewhere now."""
        request = pb.AckDrainedRequest(
            deployment=self.registration.deployment,
            session_id=self.session_id or "",
            decision_id=decision_id,
            role=convert.ROLE_TO_PB[role],
            gpus_freed=gpus_freed,
        )
        await self._send(self._stub.AckDrained, request)

    async def _send(self, method: Callable[..., object], request: object) -> None:
        """Acks are best effort: the next report carries the same facts."""
        try:
            await method(request, metadata=self._metadata, timeout=self.timeout_s)  # type: ignore[misc]
        except grpc.aio.AioRpcError as error:
            if error.code() not in TRANSIENT and error.code() != grpc.StatusCode.NOT_FOUND:
                raise PlannerRejected(error.code(), error.details() or "") from error
            self.last_error = f"{error.code().name}: {error.details()}"
