"""The simulated gateway: which deployment of an endpoint an arrival goes to, and which arrivals it
sheds.

Where several deployments serve one endpoint, a policy's routing weights are a traffic split
(smooth weighted round robin among deployments with a ready entry replica, as a gateway's weighted
split skips upstreams that fail health checks); without weights the gateway joins the shortest
queue per unit of ready capacity. A policy's admission limit (requests/s) is a token bucket with
one second of burst; the excess is rejected on arrival.
"""

from __future__ import annotations

import math
from typing import Literal

from fleet_planner.perf.capacity import REFERENCE_INPUT_TOKENS, REFERENCE_OUTPUT_TOKENS, replica_rps
from fleet_planner.planning import DeploymentSpec, PoolRole
from fleet_sim.engine import Pool


class Gateway:
    """Routes arrivals between deployments and enforces admission limits, per endpoint index."""

    def __init__(
        self,
        specs: list[DeploymentSpec],
        endpoint_index: dict[str, int],
        pools: dict[tuple[str, str], Pool],
        entry_pool: list[Pool],
    ):
        self.specs = specs
        self.endpoint_index = endpoint_index
        self.pools = pools
        self.entry_pool = entry_pool
        # Per endpoint: the deployment indices serving it.
        self.endpoint_deployments: list[list[int]] = [[] for _ in endpoint_index]
        for index, spec in enumerate(specs):
            self.endpoint_deployments[endpoint_index[spec.endpoint]].append(index)
        self.outstanding = [0] * len(specs)  # requests admitted to each deployment and not finished
        self.routing_weights: dict[int, dict[int, float]] = {}
        self._split_credit: dict[int, dict[int, float]] = {}  # smooth weighted round robin state
        self._admission: dict[int, list[float]] = {}  # endpoint -> [rate, tokens, last refill time]
        self._length_sums = [[0, 0, 0] for _ in endpoint_index]  # per endpoint: count, input, output
        self._replica_rps = self._nominal_capacities()

    # ---- what the policy sets ---------------------------------------------------------------
    def set_split(self, endpoint: int, weights: dict[str, float]) -> None:
        """Routing weights by deployment name; deployments of the endpoint not named get 0."""
        self.routing_weights[endpoint] = {
            i: float(weights.get(self.specs[i].name, 0.0)) for i in self.endpoint_deployments[endpoint]
        }

    def set_admission(self, endpoint: int, rate: float | None, now: float) -> None:
        """An admission limit in requests/s (None lifts it); a new bucket starts full."""
        if rate is None:
            self._admission.pop(endpoint, None)
        elif endpoint in self._admission:
            self._admission[endpoint][0] = rate
        else:
            self._admission[endpoint] = [rate, max(rate, 1.0), now]

    def refresh_capacities(self) -> None:
        """Re-derive per-replica capacities from the lengths seen so far (once per planner tick)."""
        self._replica_rps = self._nominal_capacities()

    # ---- per arrival ------------------------------------------------------------------------
    def route(self, endpoint: int, input_tokens: int, output_tokens: int) -> int:
        """The deployment this arrival goes to (its lengths update the endpoint's running means)."""
        sums = self._length_sums[endpoint]
        sums[0] += 1
        sums[1] += input_tokens
        sums[2] += output_tokens
        candidates = self.endpoint_deployments[endpoint]
        if len(candidates) == 1:
            return candidates[0]
        policy_weights = self.routing_weights.get(endpoint)
        if policy_weights:
            live = [d for d in candidates if policy_weights.get(d, 0.0) > 0 and self.entry_pool[d].ready]
            if live:
                return self._weighted_pick(endpoint, candidates, live, policy_weights)
        return self._shortest_queue(candidates)

    def admit(self, endpoint: int, now: float) -> bool:
        """Token bucket at the policy's admission rate, one second of burst (no limit: admit)."""
        bucket = self._admission.get(endpoint)
        if bucket is None:
            return True
        rate, tokens, last = bucket
        tokens = min(max(rate, 1.0), tokens + (now - last) * rate)
        bucket[2] = now
        if tokens >= 1.0:
            bucket[1] = tokens - 1.0
            return True
        bucket[1] = tokens
        return False

    # ---- internals --------------------------------------------------------------------------
    def _weighted_pick(self, endpoint: int, candidates: list[int], live: list[int], weights: dict[int, float]) -> int:
        """Smooth weighted round robin: each deployment receives its share of arrivals."""
        credit = self._split_credit.setdefault(endpoint, dict.fromkeys(candidates, 0.0))
        total = 0.0
        for deployment in live:
            weight = weights[deployment]
            credit[deployment] += weight
            total += weight
        best = max(live, key=lambda d: (credit[d], -d))
        credit[best] -= total
        return best

    def _shortest_queue(self, candidates: list[int]) -> int:
        """Fewest outstanding requests per unit of ready capacity; with nothing ready anywhere, the
        deployment whose targets promise the most capacity, then whose maxima could (requests
        queue where capacity comes; a pair's is its bottleneck pool's, so a deployment whose
        prefill pool may run no replica promises none, however many decode replicas it holds)."""
        best, best_score = -1, math.inf
        for deployment in candidates:
            weight = self._capacity_weight(deployment)
            if weight <= 0:
                continue
            score = (self.outstanding[deployment] + 1) / weight
            if score < best_score:
                best, best_score = deployment, score
        if best < 0:
            best = max(
                candidates, key=lambda d: (self._capacity_weight(d, "target"), self._capacity_weight(d, "max"), -d)
            )
        return best

    def _capacity_weight(self, deployment: int, replicas_by: Literal["ready", "target", "max"] = "ready") -> float:
        """Requests/s the deployment's ready replicas (or its targets', or its maxima's) carry:
        its bottleneck pool's."""
        spec = self.specs[deployment]

        def replicas(role: PoolRole) -> int:
            if replicas_by == "max":
                return spec.pools[role].max_replicas
            pool = self.pools[(spec.name, role)]
            return pool.target if replicas_by == "target" else len(pool.ready)

        return min(replicas(role) * self._replica_rps[(spec.name, role)] for role in spec.pools)

    def _nominal_capacities(self) -> dict[tuple[str, str], float]:
        """Per-replica request rate at the lengths seen *so far* on each endpoint (causal: the
        router must not know future traffic); reference lengths before the first request."""
        capacities: dict[tuple[str, str], float] = {}
        for spec in self.specs:
            count, inputs, outputs = self._length_sums[self.endpoint_index[spec.endpoint]]
            mean_in = inputs / count if count else REFERENCE_INPUT_TOKENS
            mean_out = outputs / count if count else REFERENCE_OUTPUT_TOKENS
            for role in spec.pools:
                pool = self.pools[(spec.name, role)]
                capacities[(spec.name, role)] = replica_rps(
                    pool.model, role, mean_in, mean_out, spec.sla.itl_ms, pool.knobs.max_num_seqs
                )
        return capacities
