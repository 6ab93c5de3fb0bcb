"""The live agent: the pure planning core wired to the world.

Every ``tick_s`` (30 s by default, the interval every simulated and live-demo figure was measured
at): ask the connector what runs, ask the observation source what the pools saw, let
:class:`LocalAgent` decide, export metrics and diagnostics, and — unless advisory — apply the
targets through the connector. A failing tick (Prometheus down, a connector error) is logged and
counted; the next tick runs as usual, so the sidecar never dies of a transient problem.

Next to the loop, an aiohttp server offers the live dashboard, ``/metrics``, ``/api/state`` and the
authenticated ``/api/limits`` (runtime changes of budget, min/max and advisory mode).

With a global planner (``planner:`` in the config, or ``--planner``) each tick is one exchange
(:func:`local_agent.planner_link.exchange.exchange`, the same the simulator runs): the agent
reports its pools' demand curves, applies the planner's grant instead of its own targets and
acknowledges it; while the planner is unreachable it runs its last lease, then its floor (each
pool's ``min``), as :mod:`local_agent.session` defines (never having reached the planner:
``min(floor, running)``). The endpoint's routing weights and admission limit the planner sends
are exported (``/metrics``, ``/api/state``) for the router in front of the endpoint. The channel
is TLS or mutual TLS when the config names a CA or a client certificate; the bearer token comes
from ``planner.token_file`` or the environment variable ``planner.token_env``
(``FLEET_PLANNER_TOKEN`` by default; unset: no token, for planners run without ``--tokens``).

On restart the agent adopts what already runs: the first replica counts become its starting
targets (within the pool bounds), so re-adopted workers are not scaled back to ``initial``. What
it had learned (forecast history, corrections, remembered misses, stabilisation window) comes
back from its checkpoint when there is a usable one (:mod:`local_agent.checkpoint`: written every
``checkpoint.every_s`` and on shutdown), so a restart does not plan from an uncorrected model.
Shutdown (SIGTERM/SIGINT) stops the loop and closes the connector without touching the workers.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager, suppress
from typing import Protocol

import aiohttp
from aiohttp import web
from prometheus_client import Counter, Gauge

from fleet_planner.clock import Clock, MonotonicClock, WallClock
from fleet_planner.errors import unreadable
from fleet_planner.perf import PerfModel
from fleet_planner.planning import DeploymentSpec, PoolObservation, PoolRole
from local_agent.agent import LocalAgent
from local_agent.checkpoint import checkpoint_bytes, load_checkpoint, plan_fingerprint, write_checkpoint
from local_agent.config import AgentConfig, ProcessesConnectorConfig, parse_host_port
from local_agent.connectors.base import Connector, ReplicaCounts
from local_agent.connectors.kubernetes import KubernetesConnectorConfig
from local_agent.connectors.processes import ProcessConnector
from local_agent.connectors.virtual import VirtualConnector
from local_agent.models import AgentDecision, AgentInput, RuntimeLimits
from local_agent.observe.prometheus import PrometheusSource
from local_agent.planner_link.client import PlannerClient, channel_credentials
from local_agent.planner_link.exchange import catch_up, confirm_drains, exchange
from local_agent.session import PoolCounts, TickEffects, TickInput
from local_agent.sizing.shares import max_scale_rps
from local_agent.telemetry import AgentMetrics, DiagnosticsRecorder, LimitsStore, make_app

log = logging.getLogger(__name__)


class ObservationSource(Protocol):
    """What the runtime needs of an observation source (Prometheus live, fakes in tests)."""

    async def observe(
        self, now_s: float, spec: DeploymentSpec, replicas: Mapping[str, ReplicaCounts]
    ) -> list[PoolObservation]: ...


class AgentRuntime:
    """Runs one deployment's agent live; ``tick()`` once, or ``run()`` until stopped."""

    def __init__(
        self,
        config: AgentConfig,
        source: ObservationSource,
        connector: Connector,
        clock: Clock | None = None,
        lease_clock: Clock | None = None,
    ):
        """``clock`` stamps observations and decisions (wall time by default); ``lease_clock``
        times the planner's leases (monotonic by default: a wall-clock jump must not extend one)."""
        self.config = config
        self.spec = config.spec()
        self.source = source
        self.connector = connector
        self.clock: Clock = clock if clock is not None else WallClock()
        self.lease_clock: Clock = lease_clock if lease_clock is not None else MonotonicClock()
        self.models = config.engine_models()
        self.metrics = AgentMetrics()
        self.tick_failures = Counter(
            "fleet_agent_tick_failures",
            "Agent ticks that failed (logged; the agent kept running).",
            ["deployment"],
            registry=self.metrics.registry,
        )
        self.checkpoint_writes = Counter(
            "fleet_agent_checkpoint_writes",
            "Checkpoints of the agent's learned state written (outcome ok) or not (failed, logged).",
            ["deployment", "outcome"],
            registry=self.metrics.registry,
        )
        self.resumed = Gauge(
            "fleet_agent_resumed",
            "1 when the agent planning now resumed its learned state from a checkpoint, 0 when it started cold.",
            ["deployment"],
            registry=self.metrics.registry,
        )
        self.recorder = DiagnosticsRecorder(self.spec.sla, self.spec.name, wall_clock=True)
        self.limits = LimitsStore.for_deployment(
            self.spec, RuntimeLimits(gpu_budget=config.options.gpu_budget, advisory=config.options.advisory)
        )
        self.limits.subscribe(self._limits_changed)
        connector.export_metrics(self.metrics.registry)
        self.agent: LocalAgent | None = None
        self._gpus = {role: pool.gpus_per_replica for role, pool in self.spec.pools.items()}
        self._runner: web.AppRunner | None = None
        self.planner: PlannerClient | None = None
        self.last_effects: TickEffects | None = None
        self.last_decision: AgentDecision | None = None  # what reports between decisions send again
        self._fingerprint = (
            None if config.checkpoint is None else plan_fingerprint(self.spec, config.options, config.tick_s)
        )
        self._checkpointed_s = -float("inf")
        self._on_trial = False  # the agent was resumed and has not stepped yet

    def _planner_client(self) -> PlannerClient | None:
        """The global planner's client, created on first use (gRPC channels want a running loop)."""
        link = self.config.planner
        if link is None:
            return None
        if self.planner is None:
            self.planner = PlannerClient.for_deployment(
                self.spec,
                link.address,
                link.token(),
                credentials=channel_credentials(*link.read_tls()),
                clock=self.lease_clock,
                capacity_rps=max_scale_rps(
                    self.spec, {p.profile_path: self.models[r] for r, p in self.spec.pools.items()}
                ),
            )
        return self.planner

    def _models_by_profile(self) -> dict[str, PerfModel]:
        return {pool.profile_path: self.models[role] for role, pool in self.spec.pools.items()}

    def _tick_input(self, decision: AgentDecision, replicas: Mapping[str, ReplicaCounts]) -> TickInput:
        running: dict[str, PoolCounts] = {role: PoolCounts(**counts.model_dump()) for role, counts in replicas.items()}
        return TickInput(now_s=self.lease_clock.now(), decision=decision, running=running, window_s=self.config.tick_s)

    async def _arbitrated(self, decision: AgentDecision, replicas: Mapping[str, ReplicaCounts]) -> None:
        """One exchange with the planner: report, apply its grant (or the fallback), acknowledge."""
        client = self._planner_client()
        assert client is not None
        await self._took(decision, await exchange(client, self._tick_input(decision, replicas), self.connector.apply))

    async def between_decisions(self) -> None:
        """What the agent sends between its decisions (every ``report_s``), as the simulator's
        agents do: ``AckDrained`` for each pool that has drained to its grant while the planner
        still counts its old replicas, then, while the planner's last answer says GPUs it
        allocated us wait for such drains, the last decision again with the counts of now, so the
        GPUs are granted seconds after they free rather than at the next decision; otherwise,
        where the grant is not what the last decision asked, the targets now, without a bid."""
        client = self._planner_client()
        decision = self.last_decision
        if client is None or decision is None:
            return
        tick = self._tick_input(decision, await self.connector.observe_replicas())
        await confirm_drains(client, tick)
        effects = await catch_up(client, tick, self.connector.apply)
        if effects is not None:
            await self._took(decision, effects)

    async def _took(self, decision: AgentDecision, effects: TickEffects) -> None:
        """An exchange's grant (applied by the exchange): the agent plans its next step from it,
        the router gets the endpoint's weights and limit, metrics and the log say what came."""
        assert self.agent is not None
        for pool in decision.pools:
            self.agent.granted(pool.role, effects.planned(pool.role))  # the grant runs; the agent plans from it
        self.agent.endpoint_share = effects.endpoint_share  # learnt as in replay
        if effects.apply is not None:
            await self.connector.apply_routing(effects.routing, effects.admission_rps)
        self.last_effects = effects
        self.metrics.record_planner(self.spec.name, effects)
        self.recorder.record_planner(effects)
        overruled = "; ".join(
            f"{pool.role}: {why}" for pool in decision.pools if (why := effects.overruled(pool.role, pool.target))
        )
        log.info(
            "planner (%s #%d) grants %s%s",
            effects.source,
            effects.decision_id,
            effects.granted,
            f" (not the bid: {overruled})" if overruled else "",
        )

    def _limits_changed(self, limits: RuntimeLimits) -> None:
        if self.agent is not None:
            self.agent.set_limits(limits)

    def _adopt(self, replicas: Mapping[str, ReplicaCounts], now_s: float, *, resume: bool = True) -> LocalAgent:
        """The agent, on the first tick: resumed from its checkpoint (with ``resume``) or new,
        planning from what already runs (each pool's running count within its bounds; ``initial``
        where none is known). A resumed agent is on trial until its first step succeeds."""
        running: dict[PoolRole, int] = {}
        for role, pool in self.spec.pools.items():
            counts = replicas.get(role)
            running[role] = pool.initial_replicas
            if counts is not None:
                running[role] = min(
                    max(counts.ready + counts.starting + counts.pending, pool.min_replicas), pool.max_replicas
                )
        agent = self._resumed(now_s) if resume else None
        self._on_trial = agent is not None
        self.resumed.labels(self.spec.name).set(int(agent is not None))
        if agent is not None:
            for role, count in running.items():
                agent.granted(role, count)
        else:
            agent = LocalAgent(self.spec, self.models, self.config.options, self.config.tick_s, starting=running)
        agent.set_limits(self.limits.current)
        log.info("planning %s from %s", self.spec.name, running)
        return agent

    def _resumed(self, now_s: float) -> LocalAgent | None:
        """The checkpointed agent if it may be resumed (else None, and the log says why)."""
        checkpoint = self.config.checkpoint
        if checkpoint is None or self._fingerprint is None:
            return None
        restored = load_checkpoint(checkpoint.file, self._fingerprint, now_s, checkpoint.max_age_s)
        if restored.agent is None:
            log.info("starting cold: checkpoint %s: %s", checkpoint.file, restored.reason)
        else:
            log.info("resuming the learned state from checkpoint %s (%s)", checkpoint.file, restored.reason)
        return restored.agent

    async def checkpoint(self, now_s: float, *, due_only: bool = True) -> None:
        """Write the agent's checkpoint (with ``due_only``, only ``checkpoint.every_s`` after the
        last one). A failure is logged, not raised: planning goes on without it."""
        checkpoint = self.config.checkpoint
        if checkpoint is None or self._fingerprint is None or self.agent is None:
            return
        if due_only and now_s - self._checkpointed_s < checkpoint.every_s:
            return
        self._checkpointed_s = now_s
        data = checkpoint_bytes(self.agent, self._fingerprint, now_s)  # here: no handler changes the agent meanwhile
        try:
            await asyncio.to_thread(write_checkpoint, checkpoint.file, data)
        except OSError as exc:
            self.checkpoint_writes.labels(self.spec.name, "failed").inc()
            log.warning("checkpoint not written to %s: %s", checkpoint.file, unreadable(exc))
        else:
            self.checkpoint_writes.labels(self.spec.name, "ok").inc()

    async def tick(self) -> AgentDecision:
        """One observe-decide-apply round; raises what went wrong (``run`` logs it and goes on)."""
        now_s = self.clock.now()
        replicas = await self.connector.observe_replicas()
        if self.agent is None:
            self.agent = self._adopt(replicas, now_s)
        observations = await self.source.observe(now_s, self.spec, replicas)
        tick = AgentInput(now_s=now_s, observations=observations)
        try:
            effects = self.agent.step(tick)
        except Exception:
            if not self._on_trial:
                raise
            log.exception("the agent resumed from its checkpoint failed its first step: starting cold")
            self.agent = self._adopt(replicas, now_s, resume=False)
            effects = self.agent.step(tick)
        self._on_trial = False
        decision = effects.decision
        self.last_decision = decision
        self.metrics.record(decision, observations, self._gpus, now_s)
        self.recorder.record(now_s, observations, decision)
        log.info(
            "%s %s: %s",
            decision.loop,
            "advice" if decision.advisory else "targets",
            ", ".join(f"{p.role} {p.current}->{p.target} ({p.reason.value})" for p in decision.pools),
        )
        if self.config.planner is not None:
            await self._arbitrated(decision, replicas)
        elif not decision.advisory:
            await self.connector.apply({pool.role: pool.target for pool in decision.pools})
        if effects.knobs:  # after the targets: a connector that cannot set knobs must not stop scaling
            await self.connector.apply_knobs({str(role): knobs for role, knobs in effects.knobs.items()})
        await self.checkpoint(now_s)
        telemetry = self.config.telemetry
        if telemetry is not None and telemetry.diagnostics_dir is not None:
            written = await asyncio.to_thread(
                self.recorder.maybe_write, now_s, telemetry.diagnostics_dir, telemetry.diagnostics_every
            )
            if written is not None:
                log.info("diagnostics report written: %s", written)
        return decision

    async def _tick_logged(self) -> None:
        try:
            await self.tick()
        except Exception:
            self.tick_failures.labels(self.spec.name).inc()
            log.exception("tick failed; the agent keeps running and tries again in %.0f s", self.config.tick_s)

    async def start_telemetry(self, token: str) -> tuple[str, int]:
        """Serve dashboard, metrics and control on ``telemetry.listen``; returns the bound address."""
        telemetry = self.config.telemetry
        if telemetry is None:
            raise ValueError("the config has no telemetry section")
        host, port = parse_host_port(telemetry.listen)
        app = make_app(
            self.recorder, self.metrics.registry, self.limits, token, refresh_s=telemetry.dashboard_refresh_s
        )
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port).start()
        bound_host, bound_port = self._runner.addresses[0][:2]
        log.info("dashboard, /metrics and /api/limits on http://%s:%d", bound_host, bound_port)
        return bound_host, bound_port

    async def _between_logged(self) -> None:
        try:
            await self.between_decisions()
        except Exception:
            self.tick_failures.labels(self.spec.name).inc()
            log.exception("report between decisions failed; the agent keeps running")

    async def run(self, stop: asyncio.Event) -> None:
        """Decide every ``tick_s`` (start to start) until ``stop`` is set; with a planner, every
        ``report_s`` between decisions, send what :meth:`between_decisions` says."""
        loop = asyncio.get_running_loop()
        report_s = self.config.between_decisions_s
        next_tick = loop.time()
        while not stop.is_set():
            if loop.time() >= next_tick:
                next_tick = max(next_tick + self.config.tick_s, loop.time())
                await self._tick_logged()
            else:
                await self._between_logged()
            wake = next_tick if report_s is None else min(next_tick, loop.time() + report_s)
            with suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=max(0.0, wake - loop.time()))

    async def close(self) -> None:
        """Checkpoint, stop serving and release the connector; running replicas stay for the next agent."""
        await self.checkpoint(self.clock.now(), due_only=False)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self.planner is not None:
            await self.planner.close()
            self.planner = None
        await self.connector.close()


def make_connector(config: AgentConfig, source: PrometheusSource) -> Connector:
    """The configured connector (``source`` answers the virtual connector's ready queries)."""
    connector = config.connector
    roles = list(config.deployment.pools)
    if isinstance(connector, ProcessesConnectorConfig):
        return ProcessConnector(
            {str(role): command for role, command in connector.roles.items()},
            connector.state_file,
            run_dir=connector.run_dir,
            drain_timeout_s=connector.drain_timeout_s,
        )
    if isinstance(connector, KubernetesConnectorConfig):
        from local_agent.connectors.kubernetes.connector import KubernetesConnector  # the client is slow to import

        gpus = {role: pool.gpus_per_replica for role, pool in config.deployment.pools.items()}
        return KubernetesConnector(connector, config.deployment.name, gpus)
    ready = connector.ready_query if connector.replicas_from == "prometheus" else None
    return VirtualConnector(
        connector.path,
        config.deployment.name,
        roles,
        prometheus=source if ready is not None else None,
        ready_queries=None
        if ready is None
        else {role: source.render(ready, config.deployment.name, role) for role in roles},
        max_report_age_s=connector.max_report_age_s,
    )


@asynccontextmanager
async def open_runtime(config: AgentConfig, clock: Clock | None = None) -> AsyncIterator[AgentRuntime]:
    """A runtime with its HTTP session, Prometheus source and connector, all closed on exit."""
    async with aiohttp.ClientSession() as session:
        source = PrometheusSource.from_config(config.prometheus, session)
        connector = make_connector(config, source)
        try:
            runtime = AgentRuntime(config, source, connector, clock)
        except BaseException:
            await connector.close()
            raise
        try:
            yield runtime
        finally:
            await runtime.close()


async def serve(config: AgentConfig) -> None:
    """Run the agent live until SIGTERM or SIGINT."""
    token = config.control_token() if config.telemetry is not None else None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        async with open_runtime(config) as runtime:
            if token is not None:
                await runtime.start_telemetry(token)
            else:
                log.warning("no telemetry section: no dashboard, metrics or control endpoint")
            await runtime.run(stop)
            log.info("stopping: workers are left running for the next agent to adopt")
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
