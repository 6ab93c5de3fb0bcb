"""KV admission on decode and aggregated replicas: a request runs only when its whole KV footprint
(prompt + answer) fits the replica's cache and a batch slot is free; otherwise it waits, in order,
on that replica. Prefill replicas admit everything (their KV leaves with the request)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .state import Replica

if TYPE_CHECKING:
    from .decode import DecodeStage
    from .pool import Pool
    from .prefill import PrefillStage


class KvAdmission:
    """Reserves KV for a request on one replica, or queues it there until capacity frees."""

    def __init__(self, pool: Pool, prefill: PrefillStage, decode: DecodeStage):
        self.pool = pool
        self.sim = pool.sim
        self.prefill = prefill
        self.decode = decode
        self.agg = pool.role == "agg"
        self.max_kv = pool.max_kv
        self.max_num_seqs = pool.knobs.max_num_seqs
        self.reqs = pool.sim.requests

    def admit_or_wait(self, replica: Replica, request: int, now: float) -> None:
        reqs = self.reqs
        need = reqs.input[request] + reqs.output[request]
        if replica.wait_queue or not self.fits(replica, need):
            replica.wait_queue.append(request)
            return
        self._admit(replica, request, need, now)

    def fits(self, replica: Replica, need: int) -> bool:
        admitted = replica.batch + len(replica.prefill_queue)
        # A request larger than the whole cache is admitted alone rather than waiting forever.
        return admitted < self.max_num_seqs and (replica.kv_reserved + need <= self.max_kv or admitted == 0)

    def admit_waiting(self, replica: Replica, now: float) -> None:
        """Admit waiting requests in order while they fit; drop those that waited past the timeout."""
        reqs = self.reqs
        queue = replica.wait_queue
        pool = self.pool
        while queue:
            request = queue[0]
            if pool.expired(request, now):
                queue.popleft()
                pool.drop(replica, request, now, kv_reserved=False)
                continue
            need = reqs.input[request] + reqs.output[request]
            if not self.fits(replica, need):
                return
            queue.popleft()
            self._admit(replica, request, need, now)

    def _admit(self, replica: Replica, request: int, need: int, now: float) -> None:
        replica.kv_reserved += need
        if self.agg:
            self.prefill.enqueue(replica, request, now)
        else:
            self.decode.join(replica, request, now)
