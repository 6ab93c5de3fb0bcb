"""The live agent: the pure planning core wired to the world.

Every ``tick_s``: ask the connector what runs, ask the observation source what the pools saw, let
:class:`LocalAgent` decide, export metrics and diagnostics, and — unless advisory — apply the
targets through the connector. A failing tick (Prometheus down, a connector error) is logged and
counted; the next tick runs as usual, so the sidecar never dies of a transient problem.

Next to the loop, an aiohttp server offers the live dashboard, ``/metrics``, ``/api/state`` and the
authenticated ``/api/limits`` (runtime changes of budget, min/max and advisory mode).

With a global planner (``planner: HOST:PORT`` in the config, or ``--planner``) the agent reports
its pools' demand curves each tick and applies the planner's grant instead of its own targets;
while the planner is unreachable it runs its last lease, then its floor (each pool's ``min``), as
:mod:`local_agent.planner_link.client` defines (never having reached the planner: ``min(floor, running)``). The planner's bearer token is read from the environment
variable ``FLEET_PLANNER_TOKEN`` (unset: no token, for planners run without ``--tokens``).

On restart the agent adopts what already runs: the first replica counts become its starting
targets (within the pool bounds), so re-adopted workers are not scaled back to ``initial``.
Shutdown (SIGTERM/SIGINT) stops the loop and closes the connector without touching the workers.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager, suppress
from typing import Protocol

import aiohttp
from aiohttp import web
from prometheus_client import Counter

from fleet_planner.planning import DeploymentSpec, PoolObservation, PoolRole, PoolSpec
from local_agent.planner_link.reports import forecast_of, pool_report
from local_agent.planner_link.client import EffectiveTargets, PlannerClient, effective_targets
from fleet_planner.contract.models import PoolRegistration
from local_agent.agent import LocalAgent
from local_agent.config import AgentConfig, ProcessesConnectorConfig, parse_host_port
from local_agent.connectors.base import Connector, ReplicaCounts
from local_agent.connectors.processes import ProcessConnector
from local_agent.connectors.virtual import VirtualConnector
from local_agent.models import AgentDecision, AgentInput, RuntimeLimits
from local_agent.observe.prometheus import PrometheusSource
from local_agent.telemetry import AgentMetrics, DiagnosticsRecorder, LimitsStore, make_app

log = logging.getLogger(__name__)

PLANNER_TOKEN_ENV = "FLEET_PLANNER_TOKEN"


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
        clock: Callable[[], float] = time.time,
    ):
        self.config = config
        self.spec = config.spec()
        self.source = source
        self.connector = connector
        self.clock = clock
        self.models = config.engine_models()
        self.metrics = AgentMetrics()
        self.tick_failures = Counter(
            "fleet_agent_tick_failures",
            "Agent ticks that failed (logged; the agent kept running).",
            ["deployment"],
            registry=self.metrics.registry,
        )
        self.recorder = DiagnosticsRecorder(self.spec.sla, self.spec.name, wall_clock=True)
        self.limits = LimitsStore.for_deployment(
            self.spec, RuntimeLimits(gpu_budget=config.options.gpu_budget, advisory=config.options.advisory)
        )
        self.limits.subscribe(self._limits_changed)
        self.agent: LocalAgent | None = None
        self._gpus = {role: pool.gpus_per_replica for role, pool in self.spec.pools.items()}
        self._runner: web.AppRunner | None = None
        self.planner: PlannerClient | None = None
        self.last_effective: EffectiveTargets | None = None

    def _planner_client(self) -> PlannerClient | None:
        """The global planner's client, created on first use (gRPC channels want a running loop)."""
        if self.config.planner is None:
            return None
        if self.planner is None:
            pools = [
                PoolRegistration(
                    role=role,
                    gpu_type=pool.gpu_type,
                    gpus_per_replica=pool.gpus_per_replica,
                    min_replicas=pool.min_replicas,
                    max_replicas=pool.max_replicas,
                )
                for role, pool in self.spec.pools.items()
            ]
            floor = {role: pool.min_replicas for role, pool in self.spec.pools.items()}
            token = os.environ.get(PLANNER_TOKEN_ENV, "").strip() or None
            self.planner = PlannerClient(
                self.config.planner,
                token,
                self.spec.name,
                self.spec.tenant,
                self.spec.endpoint,
                pools,
                floor=floor,
                clock=self.clock,
            )
        return self.planner

    async def _arbitrated(self, decision: AgentDecision, replicas: Mapping[str, ReplicaCounts]) -> dict[str, int]:
        """Report the step's demand to the planner and return what it (or the fallback) allows."""
        client = self._planner_client()
        assert client is not None and self.agent is not None
        reports = []
        for pool in decision.pools:
            counts = replicas.get(pool.role)
            reports.append(
                pool_report(
                    pool,
                    ready=counts.ready if counts is not None else pool.current,
                    starting=counts.starting if counts is not None else 0,
                    draining=counts.draining if counts is not None else 0,
                )
            )
        effective = await client.report(reports, forecast=forecast_of(decision))
        if effective.source == "floor" and client.lease is None and not client.reported:
            # Never heard from the planner (e.g. it is down while this agent starts): the client
            # would run min(floor, 0). Count what runs instead, so a restarting agent does not
            # scale its deployment to zero; the planner keeps the floor of pools it knew.
            running = {p.role: p.in_use for p in reports}
            effective = effective_targets(None, client.floor, running, self.clock())
        self.last_effective = effective
        # The grant is what runs, and the agent plans its next step from it (its bid is its curves).
        granted = {pool.role: effective.replicas.get(pool.role, pool.target) for pool in decision.pools}
        for role, count in granted.items():
            self.agent.granted(role, count)
        log.info("planner (%s #%d) grants %s", effective.source, effective.decision_id, granted)
        return granted

    def _limits_changed(self, limits: RuntimeLimits) -> None:
        if self.agent is not None:
            self.agent.set_limits(limits)

    def _adopt(self, replicas: Mapping[str, ReplicaCounts]) -> LocalAgent:
        """The agent, created on the first tick with what already runs as its starting targets."""
        pools: dict[PoolRole, PoolSpec] = {}
        for role, pool in self.spec.pools.items():
            counts = replicas.get(role)
            initial = pool.initial_replicas
            if counts is not None:
                initial = min(max(counts.ready + counts.starting, pool.min_replicas), pool.max_replicas)
            pools[role] = PoolSpec.model_validate({**pool.model_dump(), "initial_replicas": initial})
        agent = LocalAgent(
            self.spec.model_copy(update={"pools": pools}), self.models, self.config.options, self.config.tick_s
        )
        agent.set_limits(self.limits.current)
        log.info("planning %s from %s", self.spec.name, {role: p.initial_replicas for role, p in pools.items()})
        return agent

    async def tick(self) -> AgentDecision:
        """One observe-decide-apply round; raises what went wrong (``run`` logs it and goes on)."""
        now_s = self.clock()
        replicas = await self.connector.observe_replicas()
        if self.agent is None:
            self.agent = self._adopt(replicas)
        observations = await self.source.observe(now_s, self.spec, replicas)
        decision = self.agent.step(AgentInput(now_s=now_s, observations=observations)).decision
        self.metrics.record(decision, observations, self._gpus, now_s)
        self.recorder.record(now_s, observations, decision)
        log.info(
            "%s %s: %s",
            decision.loop,
            "advice" if decision.advisory else "targets",
            ", ".join(f"{p.role} {p.current}->{p.target} ({p.reason.value})" for p in decision.pools),
        )
        if self.config.planner is not None:
            targets = await self._arbitrated(decision, replicas)
        else:
            targets = {pool.role: pool.target for pool in decision.pools}
        if not decision.advisory:
            await self.connector.apply(targets)
            if self.planner is not None and self.last_effective is not None and self.last_effective.decision_id:
                await self.planner.ack_applied(self.last_effective.decision_id, targets)
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

    async def run(self, stop: asyncio.Event) -> None:
        """Tick every ``tick_s`` (start to start) until ``stop`` is set."""
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            started = loop.time()
            await self._tick_logged()
            with suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=max(0.0, self.config.tick_s - (loop.time() - started)))

    async def close(self) -> None:
        """Stop serving and release the connector; running replicas stay for the next agent."""
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
            dict(connector.roles),
            connector.state_file,
            run_dir=connector.run_dir,
            drain_timeout_s=connector.drain_timeout_s,
        )
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
async def open_runtime(config: AgentConfig, clock: Callable[[], float] = time.time) -> AsyncIterator[AgentRuntime]:
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
