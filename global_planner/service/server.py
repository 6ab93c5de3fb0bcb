"""The planner's gRPC front: a grpc.aio servicer over :class:`PlannerState` plus the round loop.

Every RPC is one synchronous step of the state machine (asyncio runs them one at a time), so no
locking is needed around the state. A bad message is rejected before it touches the state and
only its caller sees the error; everyone else keeps being served. Bytes that are not a protobuf
message of the method's type are answered ``INVALID_ARGUMENT`` (before authentication: there is
nothing to authenticate yet), and rejections are logged at most once per ``log_interval_s`` with
a count of the ones suppressed, so no caller can flood the log.

A round solves off the event loop (CP-SAT may take its whole time limit), then settles against
the state *as it is after the solve*, appends the record to the audit log (fsync) and only then
commits it: grants become visible to agents strictly after they are durable.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn, Protocol, TypeVar

import grpc
from google.protobuf.message import DecodeError, Message
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from fleet_planner.api.v1 import planner_pb2 as pb
from fleet_planner.api.v1 import planner_pb2_grpc as pb_grpc
from fleet_planner.clock import Clock, MonotonicClock, WallClock
from fleet_planner.contract import convert
from global_planner.allocation import allocate
from global_planner.policy_file import PolicyWatcher
from global_planner.service.audit import AuditLog
from global_planner.service.auth import AuthError, Identity, TokenAuthenticator, authorize
from global_planner.service.metrics import ServiceMetrics
from global_planner.service.state import (
    Conflict,
    InvalidRequest,
    PlannerState,
    Round,
    Solver,
    StateError,
    UnknownDeployment,
    UnknownSession,
)

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Planner"].full_name
MAX_MESSAGE_BYTES = 1 << 20  # a full report is ~30 KB; anything near this is abuse

R = TypeVar("R", bound=Message)


class LeaderElector(Protocol):
    """What the servicer asks of leader election (:class:`global_planner.service.leader.LeaseElector`)."""

    holder: str | None

    def is_leader(self) -> bool: ...


_STATE_CODES: dict[type[StateError], grpc.StatusCode] = {
    InvalidRequest: grpc.StatusCode.INVALID_ARGUMENT,
    UnknownDeployment: grpc.StatusCode.NOT_FOUND,
    UnknownSession: grpc.StatusCode.NOT_FOUND,
    Conflict: grpc.StatusCode.FAILED_PRECONDITION,
}


class Undecodable:
    """What the tolerant deserializer hands the servicer for bytes that are not a valid message."""

    def __init__(self, problem: str):
        self.problem = problem


def _tolerant(message_type: type[Message]) -> Callable[[bytes], Message | Undecodable]:
    def parse(data: bytes) -> Message | Undecodable:
        try:
            return message_type.FromString(data)
        except (DecodeError, RuntimeWarning, ValueError) as error:
            return Undecodable(f"not a valid {message_type.DESCRIPTOR.full_name}: {error}")

    return parse


class RateLimitedLog:
    """At most one line per ``interval_s``; the next one says how many were suppressed."""

    def __init__(self, logger: logging.Logger, interval_s: float = 10.0, clock: Clock | None = None):
        self.logger, self.interval_s = logger, interval_s
        self.clock: Clock = clock if clock is not None else MonotonicClock()
        self._next_s = float("-inf")
        self.suppressed = 0

    def __call__(self, level: int, message: str, *args: object) -> None:
        now = self.clock.now()
        if now < self._next_s:
            self.suppressed += 1
            return
        if self.suppressed:
            message += f" ({self.suppressed} similar suppressed)"
            self.suppressed = 0
        self._next_s = now + self.interval_s
        self.logger.log(level, message, *args)


class PlannerService(pb_grpc.PlannerServicer):
    """Authenticates, authorises, validates, then applies one state-machine step."""

    def __init__(
        self,
        state: PlannerState,
        auth: TokenAuthenticator | None,
        metrics: ServiceMetrics,
        clock: Clock | None = None,
        audit: AuditLog | None = None,
        leader: LeaderElector | None = None,
    ):
        self.state = state
        self.audit = audit
        self.auth = auth
        self.metrics = metrics
        self.clock: Clock = clock if clock is not None else WallClock()
        self.leader = leader
        self.log_rejection = RateLimitedLog(log)
        # Set by PlannerServer(round_on_ask=True): a report asking for fewer replicas, or for more
        # while GPUs are free now or its pool is observed short, runs a round before it is
        # answered (PlannerState.asks_for_change): its grant is in this reply.
        self.on_ask: Callable[[str, int], Awaitable[object]] | None = None

    def handler(self) -> grpc.GenericRpcHandler:
        """The Planner service with tolerant request parsing (see the module docstring)."""
        methods: dict[str, tuple[Callable[..., Awaitable[Message]], type[Message], type[Message]]] = {
            "Register": (self.Register, pb.RegisterRequest, pb.RegisterResponse),
            "Report": (self.Report, pb.ReportRequest, pb.ReportResponse),
            "AckApplied": (self.AckApplied, pb.AckAppliedRequest, pb.AckResponse),
            "AckDrained": (self.AckDrained, pb.AckDrainedRequest, pb.AckResponse),
        }
        handlers = {
            name: grpc.unary_unary_rpc_method_handler(
                self._decoded(method),
                request_deserializer=_tolerant(request_type),
                response_serializer=response_type.SerializeToString,
            )
            for name, (method, request_type, response_type) in methods.items()
        }
        return grpc.method_handlers_generic_handler(SERVICE_NAME, handlers)

    def _decoded(self, method: Callable[[Any, grpc.aio.ServicerContext], Awaitable[R]]) -> Callable[..., Awaitable[R]]:
        async def call(request: Message | Undecodable, context: grpc.aio.ServicerContext) -> R:
            if isinstance(request, Undecodable):
                await self._reject(context, grpc.StatusCode.INVALID_ARGUMENT, request.problem)
            return await method(request, context)

        return call

    async def _reject(self, context: grpc.aio.ServicerContext, code: grpc.StatusCode, message: str) -> NoReturn:
        self.metrics.rejected.labels(code.name).inc()
        self.log_rejection(logging.INFO, "rejected %s: %s", code.name, message)
        await context.abort(code, message)
        raise AssertionError("abort returns only by raising")

    async def _handle(self, context: grpc.aio.ServicerContext, step: Callable[[Identity | None, float], R]) -> R:
        if self.leader is not None and not self.leader.is_leader():  # only the leader grants
            self.metrics.rejected.labels(grpc.StatusCode.UNAVAILABLE.name).inc()
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"not the leader (leader: {self.leader.holder or 'none'})")
        try:
            identity = self.auth.identify(context.invocation_metadata()) if self.auth is not None else None
            return step(identity, self.clock.now())
        except AuthError as error:
            code, message = error.code, str(error)
        except convert.InvalidMessage as error:
            code, message = grpc.StatusCode.INVALID_ARGUMENT, str(error)
        except StateError as error:
            code, message = _STATE_CODES[type(error)], str(error)
        await self._reject(context, code, message)

    async def Register(self, request: pb.RegisterRequest, context: grpc.aio.ServicerContext) -> pb.RegisterResponse:
        def step(identity: Identity | None, now: float) -> pb.RegisterResponse:
            authorize(identity, request.deployment, request.tenant)
            registration = convert.registration_from_pb(request)
            session_id = uuid.uuid4().hex
            targets = self.state.register(registration, session_id, now)
            return pb.RegisterResponse(
                session_id=session_id,
                planner_time_s=now,
                lease_s=self.state.lease_s,
                report_interval_s=self.state.report_interval_s,
                targets=convert.targets_to_pb(targets),
            )

        return await self._handle(context, step)

    async def Report(self, request: pb.ReportRequest, context: grpc.aio.ServicerContext) -> pb.ReportResponse:
        committed_before = self.state.committed_gpus() if self.on_ask is not None else {}

        def step(identity: Identity | None, now: float) -> pb.ReportResponse:
            authorize(identity, request.deployment)
            targets = self.state.report(convert.report_from_pb(request), now)
            if self.state.checkpoint_due and self.audit is not None:
                checkpoint = self.state.checkpoint(now)  # durable before the holding lease is answered
                self.audit.append(checkpoint.record)
                self.state.commit(checkpoint)
            return pb.ReportResponse(targets=convert.targets_to_pb(targets))

        response = await self._handle(context, step)
        reported_at = self.state.snapshots  # rounds snapshotting from here on hold this report
        now = self.clock.now()
        if self.on_ask is not None and (
            why := self.state.asks_for_change(request.deployment, now)
            or self.state.freed_for_others(request.deployment, committed_before, now)
        ):
            # a whole round (value, priorities, audit record first), not a shortcut
            await self.on_ask(f"report of {request.deployment}: {why}", reported_at)
            targets = self.state.targets(request.deployment, self.clock.now())
            response = pb.ReportResponse(targets=convert.targets_to_pb(targets))
        return response

    async def AckApplied(self, request: pb.AckAppliedRequest, context: grpc.aio.ServicerContext) -> pb.AckResponse:
        def step(identity: Identity | None, now: float) -> pb.AckResponse:
            authorize(identity, request.deployment)
            targets = self.state.ack_applied(convert.ack_applied_from_pb(request), now)
            return pb.AckResponse(targets=convert.targets_to_pb(targets))

        return await self._handle(context, step)

    async def AckDrained(self, request: pb.AckDrainedRequest, context: grpc.aio.ServicerContext) -> pb.AckResponse:
        committed_before = self.state.committed_gpus() if self.on_ask is not None else {}

        def step(identity: Identity | None, now: float) -> pb.AckResponse:
            authorize(identity, request.deployment)
            targets = self.state.ack_drained(convert.ack_drained_from_pb(request), now)
            return pb.AckResponse(targets=convert.targets_to_pb(targets))

        response = await self._handle(context, step)
        confirmed_at = self.state.snapshots
        now = self.clock.now()
        if self.on_ask is not None and (why := self.state.freed_for_others(request.deployment, committed_before, now)):
            await self.on_ask(f"drain of {request.deployment}: {why}", confirmed_at)
            response = pb.AckResponse(targets=convert.targets_to_pb(self.state.targets(request.deployment, now)))
        return response


class PlannerServer:
    """The whole planner process minus argument parsing: gRPC server, health, reflection, rounds."""

    def __init__(
        self,
        state: PlannerState,
        *,
        auth: TokenAuthenticator | None,
        metrics: ServiceMetrics,
        audit: AuditLog | None = None,
        watcher: PolicyWatcher | None = None,
        round_s: float = 5.0,
        clock: Clock | None = None,
        solve: Solver = allocate,
        leader: LeaderElector | None = None,
        round_on_ask: bool = False,
    ):
        self.state = state
        self.leader = leader
        self.metrics = metrics
        self.audit = audit
        self.watcher = watcher
        self.round_s = round_s
        self.clock: Clock = clock if clock is not None else WallClock()
        self._solve = solve
        self.service = PlannerService(state, auth, metrics, self.clock, audit, leader)
        if round_on_ask:
            self.service.on_ask = self.run_round
        self.health = health.aio.HealthServicer()
        self._server: grpc.aio.Server | None = None
        self._loop_task: asyncio.Task[None] | None = None
        self._round_lock = asyncio.Lock()

    async def start(self, listen: str, credentials: grpc.ServerCredentials | None = None) -> int:
        """Bind (port 0 picks a free one), start serving and return the bound port."""
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ]
        )
        server.add_generic_rpc_handlers((self.service.handler(),))
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME), server
        )
        try:
            port = server.add_secure_port(listen, credentials) if credentials else server.add_insecure_port(listen)
        except RuntimeError:  # grpc raises when it cannot bind; the reason is in its own log
            port = 0
        if port == 0:
            raise OSError(f"cannot listen on {listen} (address in use or not local?)")
        await server.start()
        for name in ("", SERVICE_NAME):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        self._server = server
        return port

    def start_rounds(self) -> None:
        """Run an allocation round every ``round_s`` seconds in the background."""
        self._loop_task = asyncio.create_task(self._rounds())

    async def _rounds(self) -> None:
        while True:
            await asyncio.sleep(self.round_s)
            try:
                await self.run_round()
            except Exception:
                self.metrics.round_errors.inc()
                log.exception("allocation round failed; grants unchanged")

    async def run_round(self, trigger: str = "timer", reported_at: int | None = None) -> Round | None:
        """Reload the policy if changed, solve, persist, commit. With no bidder there is nothing
        to decide: no decision id is spent and nothing is logged (lapsed leases need no record:
        a restart re-derives them from the recorded expiry). ``trigger``, what ran the round, is
        recorded (``explain`` prints it). A round on ask (``reported_at``: the state's snapshot
        count when its report was applied) is skipped when a round that snapshotted after that
        report ran while it waited for the lock: asks arriving together cost one round, not one
        each (a fleet short for a while would otherwise queue a round per report)."""
        async with self._round_lock:
            if reported_at is not None and self.state.snapshots > reported_at:
                return None  # a round holding this report already decided
            if self.leader is not None and not self.leader.is_leader():
                return None  # followers decide nothing
            if self.watcher is not None and self.watcher.poll():
                log.info("policy %s reloaded", self.watcher.path)
                self.state.set_policy(self.watcher.policy)
            round_input = self.state.begin_round(self.clock.now())
            if round_input.request is None:
                return None
            allocation = await asyncio.to_thread(self._solve, round_input.request)
            if self.leader is not None and not self.leader.is_leader():
                return None  # leadership lapsed during the solve: the next leader decides
            round_ = self.state.settle(round_input, allocation, self.clock.now(), trigger)
            if self.audit is not None:
                self.audit.append(round_.record)
            self.state.commit(round_)
            self.metrics.observe_round(round_, self.state)
            return round_

    async def wait(self) -> None:
        assert self._server is not None
        await self._server.wait_for_termination()

    async def stop(self, grace_s: float = 1.0) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()
            await asyncio.gather(self._loop_task, return_exceptions=True)
        await self.health.enter_graceful_shutdown()
        if self._server is not None:
            await self._server.stop(grace_s)
        if self.audit is not None:
            self.audit.close()
