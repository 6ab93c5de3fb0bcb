"""The pool's router: which ready replica a request goes to.

With prefix hashes and a prefix cache it routes KV-aware (like Dynamo's router): the replica with
the most cached prefix tokens net of its outstanding tokens. Otherwise it picks the least-loaded
replica (outstanding tokens). While no replica is ready, requests wait in the pool's queue.
"""

from __future__ import annotations

import math
from collections import deque
from typing import TYPE_CHECKING

from .state import Replica

if TYPE_CHECKING:
    from .admission import KvAdmission
    from .pool import Pool
    from .prefill import PrefillStage


class Router:
    """Counts a pool's admitted requests and sends each to a ready replica's first stage."""

    def __init__(self, pool: Pool, prefill: PrefillStage, admission: KvAdmission):
        self.pool = pool
        self.sim = pool.sim
        self.stats = pool.stats
        self.prefill = prefill
        self.admission = admission
        self.prefill_only = pool.role == "prefill"  # a prefill replica's load is the prompt alone
        self.prefix_aware = pool.prefix_blocks > 0
        self.ready = pool.ready  # the pool's ready replicas (the same list, kept current by the pool)
        self.queue: deque[int] = deque()  # requests waiting for any ready replica
        self.reqs = pool.sim.requests

    def submit(self, request: int, now: float) -> None:
        """A request enters the pool (from the frontend, or as KV arriving from prefill)."""
        stats = self.stats
        stats.admitted += 1
        reqs = self.reqs
        stats.input_tokens.append(reqs.input[request])
        stats.output_tokens.append(reqs.output[request])
        self.dispatch(request, now)

    def dispatch(self, request: int, now: float) -> None:
        ready = self.ready
        if not ready:
            self.queue.append(request)
            return
        reqs = self.reqs
        best = ready[0]
        if len(ready) > 1:
            hashes = reqs.hashes[request] if self.prefix_aware and reqs.hashes is not None else None
            if hashes:
                best = _most_cached(ready, hashes, reqs.input[request] - 1)
            else:  # least outstanding tokens, the first such replica on ties (inline: the hot path)
                best_load = best.load
                for replica in ready:
                    if replica.load < best_load:
                        best, best_load = replica, replica.load
        if self.prefill_only:
            best.load += reqs.input[request]
            self.prefill.enqueue(best, request, now)
        else:
            best.load += reqs.input[request] + reqs.output[request]
            self.admission.admit_or_wait(best, request, now)

    def flush(self, now: float) -> None:
        """A replica became ready: route what queued meanwhile, dropping what waited too long."""
        pool = self.pool
        queued, self.queue = self.queue, deque()
        for request in queued:
            if pool.expired(request, now):
                pool.drop(None, request, now, kv_reserved=False)
            else:
                self.dispatch(request, now)


def _most_cached(ready: list[Replica], hashes: list[int], limit: int) -> Replica:
    """Most cached prefix tokens net of queued work (the first such replica on ties)."""
    best = ready[0]
    best_score = -math.inf
    for replica in ready:
        cache = replica.prefix_cache
        score = (cache.peek(hashes, limit) if cache is not None else 0) - replica.load
        if score > best_score:
            best, best_score = replica, score
    return best
