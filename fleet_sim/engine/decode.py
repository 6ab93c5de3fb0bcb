"""Decode: a replica's continuous batch as one cumulative counter.

``counter`` is the number of tokens emitted per running sequence since the replica started; it
advances at ``rate = 1 / iteration time``. A sequence that joins at ``counter = V0`` with ``k``
tokens left finishes when the counter reaches ``V0 + k``, so a heap of thresholds replaces
per-iteration events: a replica only wakes when its next sequence finishes (or when the batch
changes, which changes the iteration time and re-arms the wake-up). ``epoch`` cancels a wake-up
armed for a batch that has changed since.

While a prefill iteration runs on an aggregated replica the batch moves at that iteration's pace
(``1 / iter_dt``) and its finishes are handled when the iteration ends.
"""

from __future__ import annotations

import heapq
import math
from typing import TYPE_CHECKING

from .state import DRAINING, EV_DECODE, Replica

if TYPE_CHECKING:
    from .admission import KvAdmission
    from .pool import Pool

_EPS = 1e-9


class DecodeStage:
    """Moves one pool's replicas' batches forward, finishes sequences and re-arms wake-ups."""

    admission: KvAdmission  # set by the Pool: a finished sequence frees KV for a waiting request

    def __init__(self, pool: Pool):
        self.pool = pool
        self.sim = pool.sim
        self.stats = pool.stats
        self.model = pool.model
        self.agg = pool.role == "agg"
        self.reqs = pool.sim.requests
        self.schedule = pool.sim.schedule
        self._itl_cache: dict[tuple[int, int], float] = {}

    def advance(self, replica: Replica, now: float) -> None:
        """Bring the counter (and the pool's token count) up to ``now``."""
        rate = replica.rate
        if rate:
            progressed = rate * (now - replica.t_last)
            replica.counter += progressed
            self.stats.tokens += progressed * replica.batch
        replica.t_last = now

    def to_step_boundary(self, replica: Replica) -> float:
        """Seconds until the running batch finishes its current iteration (0 when idle)."""
        if not replica.batch or not replica.rate:
            return 0.0
        progressed = replica.counter + replica.rate * (self.sim.now - replica.t_last)
        return (math.ceil(progressed - 1e-6) - progressed) / replica.rate

    def itl_s(self, replica: Replica) -> float:
        """One decode iteration at the batch's size and mean context, bucketed to 64 tokens."""
        batch = replica.batch
        context = replica.context_sum / batch
        key = (batch, int(context) >> 6)
        cached = self._itl_cache.get(key)
        if cached is None:
            cached = self.model.itl_ms(batch, float((key[1] << 6) + 32)) / 1000.0
            self._itl_cache[key] = cached
        return cached

    def join(self, replica: Replica, request: int, now: float) -> None:
        """The request has its first token; it now decodes ``output - 1`` more tokens. Its TTFT
        counts toward the pool it entered the deployment by."""
        reqs = self.reqs
        reqs.t_first[request] = now
        self.pool.entry_pool.stats.ttft_ms.append((now - reqs.arrival[request]) * 1000.0)
        output = reqs.output[request]
        remaining = output - 1
        if remaining <= 0:
            self.complete(replica, request, now)
            return
        self.advance(replica, now)
        heapq.heappush(replica.finish_heap, (replica.counter + remaining, request))
        replica.batch += 1
        replica.context_sum += reqs.input[request] + 0.5 * output
        if not replica.busy:
            self.reschedule(replica, now)

    def reschedule(self, replica: Replica, now: float) -> None:
        """Recompute the decode rate after the batch or iteration changed; re-arm the next finish."""
        replica.epoch += 1
        if not replica.batch:
            replica.rate = 0.0
            return
        if replica.busy:
            replica.rate = 1.0 / replica.iter_dt  # finishes are handled at the iteration end
            return
        itl = self.itl_s(replica)
        replica.rate = 1.0 / itl
        due = replica.due = replica.finish_heap[0][0]
        gap = due - replica.counter
        self.schedule(now + (0.0 if gap < 0.0 else gap) * itl, EV_DECODE, replica, replica.epoch)

    def on_event(self, replica: Replica, epoch: int, now: float) -> None:
        """The armed wake-up: the batch's next sequence finished."""
        if epoch != replica.epoch:
            return
        self.advance(replica, now)
        # The event was armed for this counter value; rounding of large clock values must not
        # leave it a hair short (that re-arms the same instant forever).
        if replica.counter < replica.due:
            replica.counter = replica.due
        self.finish_due(replica, now)
        if replica.wait_queue:
            self.admission.admit_waiting(replica, now)
        if not replica.busy:
            self.reschedule(replica, now)
        if replica.state == DRAINING:
            self.pool.maybe_retire(replica, now)

    def finish_due(self, replica: Replica, now: float) -> None:
        """Complete every sequence whose threshold the counter reached."""
        heap = replica.finish_heap
        reqs = self.reqs
        limit = replica.counter + _EPS
        pop = heapq.heappop
        complete = self.complete
        while heap and heap[0][0] <= limit:
            _, request = pop(heap)
            replica.batch -= 1
            replica.context_sum -= reqs.input[request] + 0.5 * reqs.output[request]
            complete(replica, request, now)
        if not replica.batch:
            replica.context_sum = 0.0
        if self.agg and replica.wait_queue:
            self.admission.admit_waiting(replica, now)

    def complete(self, replica: Replica, request: int, now: float) -> None:
        reqs = self.reqs
        output = reqs.output[request]
        need = reqs.input[request] + output
        replica.kv_reserved -= need
        replica.load -= need
        reqs.t_finish[request] = now
        if output > 1:
            self.stats.itl_ms.append((now - reqs.t_first[request]) * 1000.0 / (output - 1))
        self.sim.completed(request, now)
