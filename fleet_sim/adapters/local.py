"""``planner: {policy: local}`` in the simulator: one independent local agent per deployment.

Each agent sees only its own deployment's observations and returns its own targets; nothing is
shared between agents, exactly as when they run as separate sidecars. An agent's observation is
built as the live runtime builds it: the scrape-delayed window's metrics with the replica counts as
of now (:func:`counts_now`)."""

from __future__ import annotations

from fleet_planner.knobs import EngineKnobs
from fleet_planner.perf import PerfModel, load_profile
from fleet_planner.planning import Decision, DeploymentSpec, FleetObservation, Policy, PoolRole, ReplicaTarget
from local_agent.agent import AgentOptions, LocalAgent
from local_agent.models import AgentDecision, AgentInput
from local_agent.sizing.shares import endpoint_shares


def load_models(deployments: list[DeploymentSpec]) -> dict[str, PerfModel]:
    """Each engine profile's performance model, loaded once and shared (keyed by profile path)."""
    models: dict[str, PerfModel] = {}
    for spec in deployments:
        for pool in spec.pools.values():
            if pool.profile_path not in models:
                models[pool.profile_path] = PerfModel(load_profile(pool.profile_path))
    return models


def build_agents(
    deployments: list[DeploymentSpec],
    tick_s: float,
    options: AgentOptions,
    models: dict[str, PerfModel] | None = None,
    *,
    shares: bool = True,
) -> dict[str, LocalAgent]:
    """One agent per deployment. ``shares``: give deployments sharing an endpoint their share of
    it now (without a planner to tell them); False: they learn it from the planner's replies."""
    models = models if models is not None else load_models(deployments)
    endpoint_share = endpoint_shares(deployments, models) if shares else {}
    agents = {}
    for spec in deployments:
        pool_models = {role: models[pool.profile_path] for role, pool in spec.pools.items()}
        agents[spec.name] = LocalAgent(spec, pool_models, options, tick_s, endpoint_share=endpoint_share.get(spec.name))
    return agents


def counts_now(observation: FleetObservation | None, now: FleetObservation | None) -> FleetObservation | None:
    """The delayed ``observation`` with each pool's replica counts taken from ``now``.

    Live, the agent reads its counts from the orchestrator's API (``Connector.observe_replicas``)
    and only its metrics from the scrape, so replicas it has just asked for show as starting at the
    next tick. With the scrape's counts the simulated agent did not see them, read a window served
    by the old count as pressure on the new target and asked for one more (the four-deployment day
    cell's aggregated pool: 4 -> 6 on its forecast, then 6 -> 7 on the window before)."""
    if observation is None or now is None:
        return observation
    counts = {(o.deployment, o.role): o for o in now.pools}
    pools = []
    for pool in observation.pools:
        current = counts.get((pool.deployment, pool.role))
        if current is not None:
            pool = pool.model_copy(
                update={
                    "ready": current.ready,
                    "starting": current.starting,
                    "draining": current.draining,
                    "pending": current.pending,
                }
            )
        pools.append(pool)
    return observation.model_copy(update={"pools": pools})


class AgentsPolicy(Policy):
    """A policy whose decisions start from local agents: it keeps the counts as of the tick
    (:meth:`replicas_now`) for the agents' observations and for what they report."""

    def __init__(self, deployments: list[DeploymentSpec], tick_s: float):
        super().__init__(deployments, tick_s)
        self._counts: FleetObservation | None = None

    def replicas_now(self, observation: FleetObservation) -> None:
        self._counts = observation

    def step(
        self, agents: dict[str, LocalAgent], now_s: float, observation: FleetObservation | None
    ) -> list[AgentDecision]:
        """Every agent's step on the delayed metrics with the counts as of now."""
        seen = counts_now(observation, self._counts)
        tick = AgentInput(now_s=now_s, observations=seen.pools if seen is not None else None)
        return [agent.step(tick).decision for agent in agents.values()]


def tuned_knobs(agent: LocalAgent, role: PoolRole) -> EngineKnobs | None:
    """The knobs a tuning agent wants the simulated pool to run with (None: it does not tune)."""
    return agent.knobs[role] if agent.options.tune_knobs else None


def reason_text(pool) -> str:
    return f"{pool.reason.value}: {pool.detail}" if pool.detail else pool.reason.value


class LocalAgentsPolicy(AgentsPolicy):
    name = "local"

    def __init__(self, deployments: list[DeploymentSpec], tick_s: float, options: AgentOptions):
        super().__init__(deployments, tick_s)
        self.agents = build_agents(deployments, tick_s, options)
        self.history: list[AgentDecision] = []

    def decide(self, now_s: float, observation: FleetObservation | None) -> Decision:
        targets: list[ReplicaTarget] = []
        for record in self.step(self.agents, now_s, observation):
            self.history.append(record)
            if record.advisory:
                continue
            agent = self.agents[record.deployment]
            targets.extend(
                ReplicaTarget(
                    deployment=record.deployment,
                    role=pool.role,
                    replicas=pool.target,
                    reason=reason_text(pool),
                    knobs=tuned_knobs(agent, pool.role),
                )
                for pool in record.pools
            )
        return Decision(targets=targets)
