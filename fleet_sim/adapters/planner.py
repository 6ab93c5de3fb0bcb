"""Fleet-level arbitration in the simulator: the same local agents, only the arbiter differs.

``fcfs`` puts the public anchor's gatekeeper between the agents and the fleet: each agent's wanted
counts are requests, granted first come first served against the per-type ceilings. ``global``
runs the real planner service and its gRPC clients on loopback: agents bid with demand curves and
the CP-SAT allocation decides.

``global`` also injects faults (:class:`PlannerFaults`, ``planner: {faults: {...}}`` in a scenario):
planner restarts from its audit log, windows in which no agent reaches the planner, an agent that
goes silent (or dies), and report messages delivered late. Without faults nothing of this runs.
"""

from __future__ import annotations

import asyncio
import math
import secrets
import socket
import tempfile
import threading
from collections import deque
from pathlib import Path
from typing import Literal

import grpc
from prometheus_client import CollectorRegistry
from pydantic import BaseModel, ConfigDict, Field, model_validator

from fleet_planner.api.v1 import planner_pb2_grpc as pb_grpc
from fleet_planner.clock import Clock, SimulatedClock
from fleet_planner.errors import InputError
from fleet_planner.planning import Decision, DeploymentSpec, FleetObservation, ReplicaTarget
from fleet_sim.adapters.local import AgentsPolicy, build_agents, load_models, reason_text, tuned_knobs
from global_planner.fcfs import FcfsGatekeeper, PoolRequest
from global_planner.policy_file import TenantPolicy
from global_planner.service.audit import AUDIT_FILE, SNAPSHOT_FILE, AuditLog, segments
from global_planner.service.auth import Identity, TokenAuthenticator
from global_planner.service.metrics import ServiceMetrics
from global_planner.service.server import PlannerServer
from global_planner.service.state import PlannerState
from local_agent.agent import AgentOptions
from local_agent.config import AgentConfig
from local_agent.models import AgentDecision
from local_agent.planner_link.client import PlannerClient
from local_agent.planner_link.exchange import catch_up, confirm_drains, exchange
from local_agent.session import Outgoing, PoolCounts, TickEffects, TickInput
from local_agent.sizing.shares import max_scale_rps


class FcfsPolicy(AgentsPolicy):
    name = "fcfs"

    def __init__(
        self, deployments: list[DeploymentSpec], tick_s: float, options: AgentOptions, inventory: dict[str, int]
    ):
        super().__init__(deployments, tick_s)
        self.agents = build_agents(deployments, tick_s, options)
        self.specs = {spec.name: spec for spec in deployments}
        self.gatekeeper = FcfsGatekeeper(
            inventory,
            {
                (spec.name, role): (pool.gpu_type, pool.gpus_per_replica, pool.initial_replicas)
                for spec in deployments
                for role, pool in spec.pools.items()
            },
        )

    def decide(self, now_s: float, observation: FleetObservation | None) -> Decision:
        records = self.step(self.agents, now_s, observation)
        requests = [
            PoolRequest(
                deployment=record.deployment,
                role=pool.role,
                gpu_type=self.specs[record.deployment].pools[pool.role].gpu_type,
                gpus_per_replica=self.specs[record.deployment].pools[pool.role].gpus_per_replica,
                replicas=pool.target,
            )
            for record in records
            for pool in record.pools
        ]
        granted = self.gatekeeper.process(requests)
        targets = []
        for record in records:
            agent = self.agents[record.deployment]
            for pool in record.pools:
                count = granted[(record.deployment, pool.role)]
                agent.granted(pool.role, count)
                reason = reason_text(pool) if count == pool.target else f"fcfs: rejected {pool.target}, kept {count}"
                targets.append(
                    ReplicaTarget(
                        deployment=record.deployment,
                        role=pool.role,
                        replicas=count,
                        reason=reason,
                        knobs=tuned_knobs(agent, pool.role),
                    )
                )
        return Decision(targets=targets)


class _LoopThread:
    """An asyncio loop on a background thread: the simulator is synchronous, gRPC here is async."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="global-planner-sim", daemon=True)
        self.thread.start()

    def run(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)


class DropAgent(BaseModel):
    """From ``at_s`` on, ``deployment``'s agent no longer reaches the planner.

    ``silent``: the agent lives on, cut off (a network partition): it runs its last lease, then
    its floor, exactly as the client's fallback contract says. ``dead``: the agent process is gone
    and its pods stay at its last applied target. The planner cannot tell the two apart, so once
    the lease lapses it keeps counting what the pods may hold until something confirms it free.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    deployment: str = Field(min_length=1)
    at_s: float = Field(ge=0)
    mode: Literal["silent", "dead"] = "silent"


class PlannerFaults(BaseModel):
    """Faults injected into a ``global`` run (times in simulated seconds)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    planner_restart_at_s: list[float] = Field(
        default_factory=list,
        description="kill the planner (its in-memory state is lost) and start a new one that resumes from "
        "the audit log",
    )
    planner_down_s: list[tuple[float, float]] = Field(
        default_factory=list, description="[start, end) windows in which no agent reaches the planner (UNAVAILABLE)"
    )
    drop_agent: DropAgent | None = None
    delay_s: float = Field(default=0.0, ge=0, description="report delivery delay, rounded up to whole ticks")
    state_dir: str | None = Field(
        default=None, description="keep the planner's audit log (decisions.jsonl) here; default a temporary folder"
    )

    @model_validator(mode="after")
    def _windows(self) -> PlannerFaults:
        for start, end in self.planner_down_s:
            if not 0 <= start < end:
                raise ValueError(f"planner_down_s: window ({start}, {end}) must have 0 <= start < end")
        return self

    def down(self, now_s: float) -> bool:
        return any(start <= now_s < end for start, end in self.planner_down_s)


# How often a live agent reports between its decisions (its default report_s); a simulated tick is a decision.
LIVE_REPORT_S: float = AgentConfig.model_fields["report_s"].default


class GlobalPolicy(AgentsPolicy):
    """``planner: {policy: global, policy_file: tenants.yaml}``: the real planner service and one
    real gRPC client per agent on loopback, on the simulated clock.

    Each tick the planner first runs an allocation round on the reports it has (from the previous
    tick), then every agent plans, reports its demand curves and replica counts as of the tick and
    receives its grant in the reply: a grant reaches the fleet one tick after the demand that caused
    it, as live. After the tick's reports each agent does what a live agent does between its
    decisions (:meth:`_catch_up`), and so it does every 5 s between ticks (:meth:`between_ticks`).
    """

    name = "global"

    def __init__(
        self,
        deployments: list[DeploymentSpec],
        tick_s: float,
        options: AgentOptions,
        policy: TenantPolicy,
        lease_ticks: int = 4,
        faults: PlannerFaults | None = None,
    ):
        super().__init__(deployments, tick_s)
        models = load_models(deployments)
        # Like live agents, they learn their endpoint share from the planner (see _register_all).
        self.agents = build_agents(deployments, tick_s, options, models, shares=False)
        self.specs = {spec.name: spec for spec in deployments}
        self.faults = faults if faults is not None and faults != PlannerFaults() else None
        if (
            self.faults is not None
            and self.faults.drop_agent is not None
            and self.faults.drop_agent.deployment not in self.specs
        ):
            raise ValueError(f"faults.drop_agent.deployment: no deployment {self.faults.drop_agent.deployment!r}")
        missing = sorted({spec.tenant for spec in deployments} - set(policy.tenants))
        if missing:  # the planner rejects tenants its policy does not name
            raise InputError(f"tenant(s) {', '.join(missing)} not in the tenant policy", field="planner.policy_file")
        self.clock = SimulatedClock()  # shared by the planner and the agents' clients
        self._policy = policy
        self._lease_s = lease_ticks * tick_s
        tokens = {secrets.token_hex(16): Identity(deployment=spec.name, tenant=spec.tenant) for spec in deployments}
        self._auth = TokenAuthenticator(tokens)
        # Faults need the audit log (a restart resumes from it); the default path keeps none.
        self._state_dir: str | None = None
        self._temp_dir: tempfile.TemporaryDirectory | None = None
        if self.faults is not None and self.faults.state_dir is not None:
            self._state_dir = self.faults.state_dir
            folder = Path(self._state_dir)
            for old in [folder / AUDIT_FILE, folder / SNAPSHOT_FILE, *segments(folder)]:  # this run's log only
                old.unlink(missing_ok=True)
        elif self.faults is not None:
            self._temp_dir = tempfile.TemporaryDirectory(prefix="fleet-planner-sim-")
            self._state_dir = self._temp_dir.name
        self._io = _LoopThread()
        self.port_bound = 0
        self.server = self._start_planner(0)
        self.state = self.server.state
        self.port = self.port_bound
        token_of = {identity.deployment: token for token, identity in tokens.items()}
        target = f"127.0.0.1:{self.port}"
        self.clients = {
            spec.name: self._io.run(
                self._client(spec, target, token_of[spec.name], self.clock, max_scale_rps(spec, models))
            )
            for spec in deployments
        }
        self._register_all()
        self.rounds = 0
        self.last_effects: dict[str, TickEffects] = {}  # each agent's last exchange, for inspection
        self._restarts_due = sorted(self.faults.planner_restart_at_s) if self.faults is not None else []
        self._delay_ticks = math.ceil(self.faults.delay_s / tick_s - 1e-9) if self.faults is not None else 0
        # Delayed delivery queues one report per tick: no reports between ticks then.
        self.report_s = LIVE_REPORT_S if tick_s > LIVE_REPORT_S and not self._delay_ticks else None
        self._records: dict[str, AgentDecision] = {}  # each reporting agent's decision of the last tick
        self._outbox: dict[str, deque[Outgoing]] = {name: deque() for name in self.specs}
        self._real_stubs: dict[str, object] = {}
        self._cut_off: set[str] = set()
        self._blackhole: grpc.aio.Channel | None = None

    def _start_planner(self, port: int) -> PlannerServer:
        """A planner process: a fresh state (resumed from the audit log, when there is one) and its
        gRPC server on ``port`` (0: any free port, kept in ``port_bound``)."""
        state = PlannerState(self._policy, lease_s=self._lease_s, report_interval_s=self.tick_s)
        audit = None
        if self._state_dir is not None:
            audit = AuditLog(self._state_dir)
            state.resume(audit.recovery, self.clock.now())  # what ``fleet-planner serve`` does on start
        server = PlannerServer(
            state,
            auth=self._auth,
            metrics=ServiceMetrics(CollectorRegistry()),
            audit=audit,
            round_s=self.tick_s,
            clock=self.clock,
            round_on_ask=True,
        )
        self.port_bound = self._io.run(server.start(f"127.0.0.1:{port}"))
        return server

    @staticmethod
    async def _client(
        spec: DeploymentSpec, target: str, token: str, clock: Clock, capacity_rps: float
    ) -> PlannerClient:
        """Created on the I/O loop: gRPC channels belong to the loop that makes them."""
        return PlannerClient.for_deployment(spec, target, token, clock=clock, capacity_rps=capacity_rps)

    def _register_all(self) -> None:
        """Every agent registers before the first tick, as a fleet's agents are up before the
        replay starts: each one's first reply already divides its endpoint among all of them."""
        for client in self.clients.values():
            self._io.run(client.register())

    # ------------------------------------------------------------------ faults

    def _restart_planner(self) -> None:
        """Kill the planner (no graceful anything: its memory is gone) and start a new one."""
        self._io.run(self.server.stop(0))
        self.server = self._start_planner(self.port)
        self.state = self.server.state

    def _cut(self, name: str, cut: bool) -> None:
        """Point a client at a closed port (every call fails UNAVAILABLE), or back at the planner."""
        client = self.clients[name]
        if cut and name not in self._cut_off:
            if self._blackhole is None:
                self._blackhole = self._io.run(_closed_channel())
            self._real_stubs[name] = client._stub
            client._stub = pb_grpc.PlannerStub(self._blackhole)
            self._cut_off.add(name)
        elif not cut and name in self._cut_off:
            client._stub = self._real_stubs.pop(name)
            self._cut_off.discard(name)

    def _apply_faults(self, now_s: float) -> set[str]:
        """Faults due at ``now_s``; returns the dead agents (not stepped, their pods left as they are)."""
        assert self.faults is not None
        while self._restarts_due and self._restarts_due[0] <= now_s + 1e-9:
            self._restarts_due.pop(0)
            self._restart_planner()
        drop = self.faults.drop_agent
        dropped = drop is not None and now_s >= drop.at_s - 1e-9
        down = self.faults.down(now_s)
        for name in self.specs:
            self._cut(name, down or (dropped and drop is not None and name == drop.deployment))
        return {drop.deployment} if dropped and drop is not None and drop.mode == "dead" else set()

    # -------------------------------------------------------------------- tick

    def decide(self, now_s: float, observation: FleetObservation | None) -> Decision:
        self.clock.set(now_s)
        dead = self._apply_faults(now_s) if self.faults is not None else set()
        if self._io.run(self.server.run_round()) is not None:
            self.rounds += 1
        agents = {name: agent for name, agent in self.agents.items() if name not in dead}
        records = self.step(agents, now_s, observation)
        self._records = {record.deployment: record for record in records}
        # What agents report to the planner runs on counts as of now, as the live agent's come
        # from the orchestrator's API (and so does their planning, ``counts_now``).
        now_counts = self._counts if self._counts is not None else observation
        observed = {(o.deployment, o.role): o for o in now_counts.pools} if now_counts is not None else {}
        for record in records:
            self._deliver(record, now_s, observed)
        self._catch_up(records, now_s, observed)
        # The gateway balances an endpoint's deployments by load, as under fcfs and local (only
        # the arbiter differs); the planner's weights stay in its answer (``last_effects``) for a
        # gateway that can only split statically. Measured on soft-shortage with the evidence
        # gate: following them (smooth weighted round robin) 90.54% total, balancing 92.46%.
        return self._granted(records)

    def between_ticks(self, counts: FleetObservation) -> Decision | None:
        """What the agents send between their decisions, as live (``report_s``): each pool that
        has drained to its grant while the planner still counts its old replicas is confirmed
        (``AckDrained``), then every agent the planner's last answer told it waits for GPUs still
        held sends its last decision again, so round on ask grants them the freed GPUs now instead
        of at the next tick. Simulated ``fcfs`` needs no confirmation (its new pods wait Pending
        until the GPUs are free): without this every handover under ``global`` took a tick more
        than under ``fcfs`` (sweep seed 108 ``s23``: a decode replica 30 s later in an 11-minute
        run). The planner says an agent waits only where its report asked for no more than the
        round allocated, so the report sent again asks for nothing the round refused (sweep seed
        111 ``s21``). Drains are confirmed first, so the order of the agents does not decide
        whether a handover takes one report or two. An agent whose grant is not what it asked
        fetches its targets (without a bid), so a grant a round between ticks moved runs now."""
        reporting = [record for name, record in self._records.items() if name not in self._cut_off]
        self.clock.set(counts.time_s)
        observed = {(o.deployment, o.role): o for o in counts.pools}
        for record in reporting:
            tick = self._tick_input(record, counts.time_s, observed)
            self._io.run(confirm_drains(self.clients[record.deployment], tick))
        answered = dict(self.last_effects)
        self._catch_up(reporting, counts.time_s, observed)
        changed = [
            record
            for record in reporting
            if self.last_effects[record.deployment] is not answered.get(record.deployment)
        ]
        return self._granted(changed) if changed else None

    def _granted(self, records: list[AgentDecision]) -> Decision:
        """The targets and admission limits of these agents' last exchanges."""
        targets: list[ReplicaTarget] = []
        admission: dict[str, float | None] = {}
        for record in records:
            effects = self.last_effects[record.deployment]
            agent = self.agents[record.deployment]
            if effects.apply is not None:
                source = f"global ({effects.source} #{effects.decision_id}): agent bid for "
                targets.extend(
                    ReplicaTarget(
                        deployment=record.deployment,
                        role=pool.role,
                        replicas=effects.apply[pool.role],
                        reason=_granted_reason(source, effects, pool.role, pool.target),
                        knobs=tuned_knobs(agent, pool.role),
                    )
                    for pool in record.pools
                )
            # Any member's answer sets the endpoint's limit (they come from the same round).
            admission[self.specs[record.deployment].endpoint] = effects.admission_rps
        return Decision(targets=targets, admission=admission)

    def _deliver(self, record: AgentDecision, now_s: float, observed: dict) -> None:
        """One agent's exchange; the grant runs and the agent plans its next step from it."""
        self._took(record, self._io.run(self._exchange(record, now_s, observed)))

    def _took(self, record: AgentDecision, effects: TickEffects) -> None:
        """An exchange's grant runs and the agent plans its next step from it."""
        self.last_effects[record.deployment] = effects
        agent = self.agents[record.deployment]
        agent.endpoint_share = effects.endpoint_share  # learnt from the planner, as live
        for pool in record.pools:
            agent.granted(pool.role, effects.planned(pool.role))

    def _catch_up(self, records: list[AgentDecision], now_s: float, observed: dict) -> None:
        """After the tick's reports, each agent does what it does between decisions
        (:func:`catch_up`): an agent a later report's round left waiting for GPUs it allocated
        sends its decision again, and one whose grant is not its ask fetches its targets, so a
        grant a later report's round raised runs this tick (live, within a report interval), not
        at the next. The agents report one after another within a tick; without this the order
        decided whether a handover took one tick or two (``shortage``: an A100 a tick late)."""
        if self._delay_ticks:
            return  # delayed delivery queues one report per tick; a second would shift the queue
        for record in records:
            client = self.clients[record.deployment]
            tick = self._tick_input(record, now_s, observed)
            effects = self._io.run(catch_up(client, tick, _applied_by_the_decision))
            if effects is not None:
                self._took(record, effects)

    def _tick_input(self, record: AgentDecision, now_s: float, observed: dict) -> TickInput:
        """The agent's decision with the replica counts of ``now_s``, as the exchange takes them."""
        running: dict[str, PoolCounts] = {
            pool.role: PoolCounts(ready=obs.ready, starting=obs.starting, draining=obs.draining, pending=obs.pending)
            for pool in record.pools
            if (obs := observed.get((record.deployment, pool.role))) is not None
        }
        return TickInput(now_s=now_s, decision=record, running=running, window_s=self.tick_s)

    async def _exchange(self, record: AgentDecision, now_s: float, observed: dict) -> TickEffects:
        """The same exchange the live agent runs; applying is the Decision this tick returns."""
        tick = self._tick_input(record, now_s, observed)
        transit = (lambda sent: self._delayed(record.deployment, sent)) if self._delay_ticks else None
        return await exchange(self.clients[record.deployment], tick, _applied_by_the_decision, transit)

    def _delayed(self, deployment: str, sent: Outgoing) -> Outgoing | None:
        """Reports reach the planner ``_delay_ticks`` ticks late; until one arrives the agent has
        no reply and runs what its last lease (or floor) allows."""
        outbox = self._outbox[deployment]
        outbox.append(sent)
        return outbox.popleft() if len(outbox) > self._delay_ticks else None

    def close(self) -> None:
        for client in self.clients.values():
            self._io.run(client.close())
        if self._blackhole is not None:
            self._io.run(self._blackhole.close())
        self._io.run(self.server.stop(0))
        self._io.close()
        if self._temp_dir is not None:
            self._temp_dir.cleanup()


async def _applied_by_the_decision(targets: dict[str, int]) -> None:
    """In replay the targets are applied by the Decision ``decide`` returns, at this same time."""


async def _closed_channel() -> grpc.aio.Channel:
    """A channel to a loopback port nobody listens on: calls fail fast with UNAVAILABLE."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return grpc.aio.insecure_channel(f"127.0.0.1:{port}")


def _granted_reason(source: str, effects: TickEffects, role: str, bid: int) -> str:
    """The decision row's reason: who granted, the bid, and why the planner did not grant the bid."""
    overruled = effects.overruled(role, bid)
    return f"{source}{bid}" + (f"; planner: {overruled}" if overruled else "")
