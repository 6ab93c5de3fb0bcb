"""The public anchor's global planner, reproduced as a baseline: a first-come-first-served gatekeeper.

Local agents ask for absolute replica counts. Scale-downs are always accepted (and applied first);
a scale-up is accepted only if its GPUs fit under the GPU type's ceiling right now, otherwise it is
rejected and cached. Cached requests are retried before new ones as soon as scale-downs free GPUs
(pairing a rejected request with later opposite requests). There is no value model: whoever asks
first gets the GPUs, whatever the priority or the SLA at stake.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PoolRequest:
    deployment: str
    role: str
    gpu_type: str
    gpus_per_replica: int
    replicas: int


class FcfsGatekeeper:
    """Pure: requests in, granted counts out; ``granted`` is the state between rounds."""

    def __init__(self, ceilings: dict[str, int], initial: dict[tuple[str, str], tuple[str, int, int]]):
        """``initial``: (deployment, role) -> (gpu_type, gpus_per_replica, replicas running now)."""
        self.ceilings = dict(ceilings)
        self.granted = {key: replicas for key, (_, _, replicas) in initial.items()}
        self._shape = {key: (gpu, per) for key, (gpu, per, _) in initial.items()}
        self.cache: list[PoolRequest] = []  # rejected scale-ups, oldest first

    def used(self, gpu_type: str) -> int:
        return sum(
            count * self._shape[key][1] for key, count in self.granted.items() if self._shape[key][0] == gpu_type
        )

    def process(self, requests: list[PoolRequest]) -> dict[tuple[str, str], int]:
        """Apply one round of requests in arrival order; returns the granted count of every pool."""
        fresh = {(r.deployment, r.role): r for r in requests}
        # A pool's newer request replaces its cached one.
        self.cache = [r for r in self.cache if (r.deployment, r.role) not in fresh]
        for request in requests:
            key = (request.deployment, request.role)
            if request.replicas <= self.granted.get(key, 0):
                self.granted[key] = request.replicas
        pending = self.cache + [r for r in requests if r.replicas > self.granted.get((r.deployment, r.role), 0)]
        self.cache = []
        for request in pending:
            key = (request.deployment, request.role)
            extra = (request.replicas - self.granted.get(key, 0)) * request.gpus_per_replica
            if extra <= 0:
                continue
            if self.used(request.gpu_type) + extra <= self.ceilings.get(request.gpu_type, 0):
                self.granted[key] = request.replicas
            else:
                self.cache.append(request)
        return dict(self.granted)
