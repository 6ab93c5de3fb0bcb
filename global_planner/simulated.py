"""Fleet-level arbitration in the simulator: the same local agents, only the arbiter differs.

``fcfs`` puts the public anchor's gatekeeper between the agents and the fleet: each agent's wanted
counts are requests, granted first come first served against the per-type ceilings.
"""

from __future__ import annotations

from fleet_planner.planning import Decision, DeploymentSpec, FleetObservation, Policy, ReplicaTarget
from global_planner.fcfs import FcfsGatekeeper, PoolRequest
from local_agent.agent import AgentOptions
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
