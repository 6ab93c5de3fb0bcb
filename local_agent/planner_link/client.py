"""Agent-side transport to the global planner: register, report, acknowledge — over gRPC, with
TLS or mutual TLS when configured, and a bearer token.

The lease and the fallback rules (last lease, then floor; never reached: ``min(floor, running)``)
are :class:`local_agent.session.AgentSession`'s, a pure object each client carries: the client
hands it every reply and asks it what may run. One tick of the exchange (report -> grant -> apply
-> acknowledge) is :func:`local_agent.planner_link.exchange.exchange`, used by the live agent and
by the simulator alike.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import cast

import grpc

from fleet_planner.api.v1 import planner_pb2 as pb
from fleet_planner.api.v1 import planner_pb2_grpc as pb_grpc
from fleet_planner.clock import Clock, MonotonicClock
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
from fleet_planner.planning import DeploymentSpec, PoolRole
from local_agent.session import AgentSession, EffectiveTargets, Lease

log = logging.getLogger(__name__)

TRANSIENT = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNKNOWN,
}


def channel_credentials(ca: bytes | None, cert: bytes | None, key: bytes | None) -> grpc.ChannelCredentials | None:
    """TLS credentials from PEM bytes: ``ca`` verifies the planner (None: the system's roots),
    ``cert`` with ``key`` proves the agent's identity (mutual TLS). All None: plaintext (None)."""
    if ca is None and cert is None and key is None:
        return None
    if (cert is None) != (key is None):
        raise ValueError("mutual TLS needs both a client certificate and its key")
    return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)


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
        clock: Clock | None = None,
        capacity_rps: float | None = None,
    ):
        """``capacity_rps``: requests/s the deployment serves at its pools' maxima, registered so
        the planner can tell each deployment sharing an endpoint its share."""
        floors = floor if isinstance(floor, dict) else {p.role: floor for p in pools}
        self.registration = Registration(
            deployment=deployment,
            tenant=tenant,
            endpoint=endpoint,
            pools=[p.model_copy(update={"fallback_replicas": floors.get(p.role, 0)}) for p in pools],
            capacity_rps=capacity_rps if capacity_rps else None,
        )
        self.session = AgentSession(self.registration, drain_margin_s=drain_margin_s)
        self.timeout_s = timeout_s
        self.clock: Clock = clock if clock is not None else MonotonicClock()
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self._addresses = [address.strip() for address in target.split(",") if address.strip()]
        self._address = 0
        self._credentials = credentials
        self._connect()
        self.session_id: str | None = None
        self.last_error: str | None = None
        self._sequence = 0

    @classmethod
    def for_deployment(
        cls,
        spec: DeploymentSpec,
        target: str,
        token: str | None,
        *,
        credentials: grpc.ChannelCredentials | None = None,
        clock: Clock | None = None,
        capacity_rps: float | None = None,
    ) -> PlannerClient:
        """The client of one deployment's agent, live or simulated: its pools registered with their
        bounds, each falling back to its ``min`` replicas."""
        pools = [
            PoolRegistration(
                role=role,
                gpu_type=pool.gpu_type,
                gpus_per_replica=pool.gpus_per_replica,
                min_replicas=pool.min_replicas,
                max_replicas=pool.max_replicas,
                startup_s=pool.startup_s,
            )
            for role, pool in spec.pools.items()
        ]
        floor: dict[str, int] = {role: pool.min_replicas for role, pool in spec.pools.items()}
        return cls(
            target,
            token,
            spec.name,
            spec.tenant,
            spec.endpoint,
            pools,
            floor=floor,
            credentials=credentials,
            clock=clock,
            capacity_rps=capacity_rps,
        )

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

    @property
    def floor(self) -> dict[str, int]:
        return self.session.floor

    @property
    def lease(self) -> Lease | None:
        return self.session.lease

    @property
    def applied_decision_id(self) -> int:
        return self.session.applied_decision_id

    def effective_targets(self, now: float | None = None) -> EffectiveTargets:
        """What may run now by the session's lease and floor rules."""
        return self.session.effective(self.clock.now() if now is None else now)

    async def register(self) -> Targets:
        sent_at = self.clock.now()
        response: pb.RegisterResponse = await self._stub.Register(
            convert.registration_to_pb(self.registration), metadata=self._metadata, timeout=self.timeout_s
        )
        self.session_id, self._sequence = response.session_id, 0
        targets = convert.targets_from_pb(response.targets, self.registration.deployment)
        self.session.answered(targets, sent_at, None)
        return targets

    async def report(
        self, pools: list[PoolReport], forecast: Forecast | None = None, observed: Observed | None = None
    ) -> EffectiveTargets:
        """Send a report; on a transient failure answer from the lease or the floor instead."""
        answered = await self.send(pools, forecast, observed)
        effective = self.effective_targets()
        fresh = answered and effective.source == "lease"
        return effective.model_copy(update={"source": "planner"}) if fresh else effective

    async def send(
        self, pools: list[PoolReport], forecast: Forecast | None = None, observed: Observed | None = None
    ) -> bool:
        """Send a report and hand the reply to the session; False when the planner did not answer
        (a transient failure), :class:`PlannerRejected` when it refused.

        With several planner addresses (``HOST:PORT,HOST:PORT``, one per replica), an UNAVAILABLE
        answer (a follower, or a replica that is gone) moves on to the next address at once."""
        for attempt in range(len(self._addresses)):
            try:
                await self._report_registered(pools, forecast, observed)
                return True
            except grpc.aio.AioRpcError as error:
                if error.code() != grpc.StatusCode.UNAVAILABLE or attempt + 1 == len(self._addresses):
                    self._failed(error)
                    return False
                await self._next_address()
        raise AssertionError("unreachable: the last attempt returns")

    async def _report_registered(
        self, pools: list[PoolReport], forecast: Forecast | None, observed: Observed | None
    ) -> None:
        try:
            await self._report_once(pools, forecast, observed)
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.NOT_FOUND:  # planner restarted or session replaced
                raise
            await self.register()
            await self._report_once(pools, forecast, observed)

    async def _report_once(self, pools: list[PoolReport], forecast: Forecast | None, observed: Observed | None) -> None:
        if self.session_id is None:
            await self.register()
        assert self.session_id is not None
        self._sequence += 1
        report = AgentReport(
            deployment=self.registration.deployment,
            session_id=self.session_id,
            sequence=self._sequence,
            agent_time_s=self.clock.now(),
            applied_decision_id=self.applied_decision_id,
            forecast=forecast,
            observed=observed,
            pools=pools,
        )
        sent_at = self.clock.now()
        response: pb.ReportResponse = await self._stub.Report(
            convert.report_to_pb(report), metadata=self._metadata, timeout=self.timeout_s
        )
        self.last_error = None
        targets = convert.targets_from_pb(response.targets, self.registration.deployment)
        self.session.answered(targets, sent_at, pools)

    def _failed(self, error: grpc.aio.AioRpcError) -> None:
        code = error.code()
        if code not in TRANSIENT:
            raise PlannerRejected(code, error.details() or "")
        self.last_error = f"{code.name}: {error.details()}"
        log.warning("planner unreachable (%s); running on %s", self.last_error, self.effective_targets().source)

    async def ack_applied(self, decision_id: int, applied: Mapping[str, int]) -> None:
        """Tell the planner a decision's targets are set; later reports carry it as applied."""
        self.session.acked(decision_id)
        request = pb.AckAppliedRequest(
            deployment=self.registration.deployment,
            session_id=self.session_id or "",
            decision_id=decision_id,
            applied=[
                pb.PoolReplicas(role=convert.ROLE_TO_PB[cast(PoolRole, r)], replicas=n)
                for r, n in sorted(applied.items())
            ],
        )
        await self._send(self._stub.AckApplied, request)

    async def refresh(self) -> bool:
        """Ask for this deployment's targets without bidding (its last applied decision is
        acknowledged again; the answer carries the targets now) and hand them to the session;
        False when the planner did not answer (never registered, or a transient failure)."""
        if self.session_id is None:
            return False
        request = pb.AckAppliedRequest(
            deployment=self.registration.deployment, session_id=self.session_id, decision_id=self.applied_decision_id
        )
        sent_at = self.clock.now()
        try:
            response: pb.AckResponse = await self._stub.AckApplied(
                request, metadata=self._metadata, timeout=self.timeout_s
            )
        except grpc.aio.AioRpcError as error:
            if error.code() not in TRANSIENT and error.code() != grpc.StatusCode.NOT_FOUND:
                raise PlannerRejected(error.code(), error.details() or "") from error
            self.last_error = f"{error.code().name}: {error.details()}"
            return False
        self.session.answered(convert.targets_from_pb(response.targets, self.registration.deployment), sent_at, None)
        return True

    async def ack_drained(self, decision_id: int, role: PoolRole, gpus_freed: int) -> None:
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
