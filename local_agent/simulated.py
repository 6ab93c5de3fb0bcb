"""``planner: {policy: local}`` in the simulator: one independent local agent per deployment.

Each agent sees only its own deployment's (delayed) observations and returns its own targets;
nothing is shared between agents, exactly as when they run as separate sidecars."""

from __future__ import annotations

from fleet_planner.perf import PerfModel, load_profile
from fleet_planner.planning import Decision, DeploymentSpec, FleetObservation, Policy, ReplicaTarget
from local_agent.agent import AgentOptions, LocalAgent
from local_agent.models import AgentDecision


class LocalAgentsPolicy(Policy):
    name = "local"

    def __init__(self, deployments: list[DeploymentSpec], tick_s: float, options: AgentOptions):
        super().__init__(deployments, tick_s)
        models: dict[str, PerfModel] = {}
        self.agents: dict[str, LocalAgent] = {}
        for spec in deployments:
            pool_models = {}
            for role, pool in spec.pools.items():
                if pool.profile_path not in models:
                    models[pool.profile_path] = PerfModel(load_profile(pool.profile_path))
                pool_models[role] = models[pool.profile_path]
            self.agents[spec.name] = LocalAgent(spec, pool_models, options, tick_s)
        self.history: list[AgentDecision] = []

    def decide(self, now_s: float, observation: FleetObservation | None) -> Decision:
        targets = []
        observations = observation.pools if observation is not None else None
        for name, agent in self.agents.items():
            record = agent.step(now_s, observations)
            self.history.append(record)
            if record.advisory:
                continue
            for pool in record.pools:
                targets.append(
                    ReplicaTarget(deployment=name, role=pool.role, replicas=pool.target, reason=f"{pool.reason.value}: {pool.detail}".rstrip(": "))
                )
        return Decision(targets=targets)
