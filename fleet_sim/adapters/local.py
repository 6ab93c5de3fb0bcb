"""``planner: {policy: local}`` in the simulator: one independent local agent per deployment.

Each agent sees only its own deployment's (delayed) observations and returns its own targets;
nothing is shared between agents, exactly as when they run as separate sidecars."""

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


def step_agents(
    agents: dict[str, LocalAgent], now_s: float, observation: FleetObservation | None
) -> list[AgentDecision]:
    observations = observation.pools if observation is not None else None
    tick = AgentInput(now_s=now_s, observations=observations)
    return [agent.step(tick).decision for agent in agents.values()]


def tuned_knobs(agent: LocalAgent, role: PoolRole) -> EngineKnobs | None:
    """The knobs a tuning agent wants the simulated pool to run with (None: it does not tune)."""
    return agent.knobs[role] if agent.options.tune_knobs else None


def reason_text(pool) -> str:
    return f"{pool.reason.value}: {pool.detail}" if pool.detail else pool.reason.value


class LocalAgentsPolicy(Policy):
    name = "local"

    def __init__(self, deployments: list[DeploymentSpec], tick_s: float, options: AgentOptions):
        super().__init__(deployments, tick_s)
        self.agents = build_agents(deployments, tick_s, options)
        self.history: list[AgentDecision] = []

    def decide(self, now_s: float, observation: FleetObservation | None) -> Decision:
        targets: list[ReplicaTarget] = []
        for record in step_agents(self.agents, now_s, observation):
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
