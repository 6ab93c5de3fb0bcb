"""Fleet-level arbitration in the simulator: the same local agents, only the arbiter differs.

``fcfs`` puts the public anchor's gatekeeper between the agents and the fleet: each agent's wanted
counts are requests, granted first come first served against the per-type ceilings. ``global``
runs the real planner service and its gRPC clients on loopback: agents bid with demand curves and
the CP-SAT allocation decides.
"""

from __future__ import annotations

import asyncio
import secrets
import threading

from prometheus_client import CollectorRegistry

from fleet_planner.planning import Decision, DeploymentSpec, FleetObservation, Policy, ReplicaTarget
from global_planner.client import EffectiveTargets, PlannerClient
from global_planner.fcfs import FcfsGatekeeper, PoolRequest
from global_planner.policy_file import TenantPolicy
from global_planner.service.auth import Identity, TokenAuthenticator
from global_planner.service.metrics import ServiceMetrics
from global_planner.service.models import Forecast, PoolRegistration, PoolReport
from global_planner.service.server import PlannerServer
from global_planner.service.state import PlannerState
from local_agent.agent import AgentOptions
from local_agent.models import AgentDecision
from local_agent.simulated import build_agents, reason_text, step_agents


class FcfsPolicy(Policy):
    name = "fcfs"

    def __init__(self, deployments: list[DeploymentSpec], tick_s: float, options: AgentOptions, inventory: dict[str, int]):
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
        records = step_agents(self.agents, now_s, observation)
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
                targets.append(ReplicaTarget(deployment=record.deployment, role=pool.role, replicas=count, reason=reason))
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


class GlobalPolicy(Policy):
    """``planner: {policy: global, policy_file: tenants.yaml}``: the real planner service and one
    real gRPC client per agent on loopback, on the simulated clock.

    Each tick the planner first runs an allocation round on the reports it has (from the previous
    tick), then every agent plans, reports its demand curves and receives its grant in the reply:
    a grant reaches the fleet one tick after the demand that caused it, as live.
    """

    name = "global"

    def __init__(self, deployments: list[DeploymentSpec], tick_s: float, options: AgentOptions, policy: TenantPolicy, lease_ticks: int = 4):
        super().__init__(deployments, tick_s)
        self.agents = build_agents(deployments, tick_s, options)
        self.specs = {spec.name: spec for spec in deployments}
        self.now = 0.0
        clock = lambda: self.now  # noqa: E731 - the simulated clock, shared by planner and clients
        self.state = PlannerState(policy, lease_s=lease_ticks * tick_s, report_interval_s=tick_s)
        tokens = {secrets.token_hex(16): Identity(deployment=spec.name, tenant=spec.tenant) for spec in deployments}
        self.server = PlannerServer(
            self.state, auth=TokenAuthenticator(tokens), metrics=ServiceMetrics(CollectorRegistry()), round_s=tick_s, clock=clock
        )
        self._io = _LoopThread()
        port = self._io.run(self.server.start("127.0.0.1:0"))
        token_of = {identity.deployment: token for token, identity in tokens.items()}
        self.clients = {spec.name: self._io.run(self._client(spec, f"127.0.0.1:{port}", token_of[spec.name], clock)) for spec in deployments}
        self.rounds = 0

    @staticmethod
    async def _client(spec: DeploymentSpec, target: str, token: str, clock) -> PlannerClient:
        pools = [
            PoolRegistration(
                role=role, gpu_type=pool.gpu_type, gpus_per_replica=pool.gpus_per_replica,
                min_replicas=pool.min_replicas, max_replicas=pool.max_replicas,
            )
            for role, pool in spec.pools.items()
        ]
        floor = {role: pool.min_replicas for role, pool in spec.pools.items()}
        return PlannerClient(target, token, spec.name, spec.tenant, spec.endpoint, pools, floor=floor, clock=clock)

    def decide(self, now_s: float, observation: FleetObservation | None) -> Decision:
        self.now = now_s
        if self._io.run(self.server.run_round()) is not None:
            self.rounds += 1
        records = step_agents(self.agents, now_s, observation)
        observed = {(o.deployment, o.role): o for o in observation.pools} if observation is not None else {}
        targets: list[ReplicaTarget] = []
        routing: dict[str, dict[str, float]] = {}
        for record in records:
            spec = self.specs[record.deployment]
            effective = self._io.run(self._exchange(record, observed))
            agent = self.agents[record.deployment]
            for pool in record.pools:
                count = effective.replicas.get(pool.role, agent.targets()[pool.role])
                agent.granted(pool.role, count)
                reason = f"global ({effective.source} #{effective.decision_id}): agent wanted {pool.target}"
                targets.append(ReplicaTarget(deployment=record.deployment, role=pool.role, replicas=count, reason=reason))
            if effective.routing:
                routing.setdefault(spec.endpoint, {}).update(effective.routing)
        return Decision(targets=targets, routing=routing)

    async def _exchange(self, record: AgentDecision, observed: dict) -> EffectiveTargets:
        client = self.clients[record.deployment]
        reports = []
        target = self.agents[record.deployment].options.target_attainment
        for pool in record.pools:
            obs = observed.get((record.deployment, pool.role))
            # Before the first observation the agent knows only what it asked for.
            ready = obs.ready if obs else pool.current
            # Attainment above the SLO target is worth no GPU: the curves are capped at it, so
            # the planner buys the target at least cost and trades only in a shortage.
            curve = [min(value, target) for value in pool.curve]
            low = [min(value, target) for value in pool.curve_low] if len(pool.curve_low) == len(pool.curve) else []
            reports.append(
                PoolReport(
                    role=pool.role,
                    ready=ready,
                    starting=obs.starting if obs else 0,
                    draining=obs.draining if obs else 0,
                    pending=obs.pending if obs else 0,
                    curve=curve,
                    pessimistic_curve=low,
                )
            )
        forecast = None
        if record.forecast_rps is not None and record.forecast_upper_rps is not None:
            forecast = Forecast(mean_rps=record.forecast_rps, upper_rps=max(record.forecast_upper_rps, record.forecast_rps))
        effective = await client.report(reports, forecast=forecast)
        if effective.decision_id:
            await client.ack_applied(effective.decision_id, effective.replicas)
        return effective

    def close(self) -> None:
        for client in self.clients.values():
            self._io.run(client.close())
        self._io.run(self.server.stop(0))
        self._io.close()
