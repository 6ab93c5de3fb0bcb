"""Prefill: chunked token-budget iterations on prefill and aggregated replicas.

Each iteration takes queued prompts in order up to ``max_batch_tokens`` (a long prompt spans
several iterations) and lasts the profile's prefill time for those chunks; on an aggregated replica
the running batch also takes one decode step in it. A prompt that completes hands its KV to the
decode pool (disaggregated) or joins the replica's own batch (aggregated).
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

from .state import EV_ITER_END, EV_KV_ARRIVE, EV_START, RETIRED, Replica

CHUNK_COSTS_KEPT = 1 << 16  # memoised (tokens done, chunk) costs per pool before the memo starts over

if TYPE_CHECKING:
    from .decode import DecodeStage
    from .pool import Pool


class PrefillStage:
    """Plans and ends one pool's prefill iterations."""

    def __init__(self, pool: Pool, decode: DecodeStage):
        self.pool = pool
        self.sim = pool.sim
        self.stats = pool.stats
        self.decode = decode
        # Completed prompts leave for the decode pool. Only aggregated replicas (no handoff) run a
        # decode batch beside their prefill; a prefill replica's batch is always empty, so its
        # decode bookkeeping is skipped (it would change nothing).
        self.handoff = pool.role == "prefill"
        self.reqs = pool.sim.requests
        self.schedule = pool.sim.schedule
        self.max_batch_tokens = pool.knobs.max_batch_tokens
        self.queue_timeout_s = pool.queue_timeout_s
        self.chunk_ms = pool.model.prefill_chunk_ms
        # (tokens done, chunk) -> ms: the profile is a pure function of both and the same few
        # thousand pairs recur all run long (the cache spares ~2 us of interpolation per chunk).
        self._chunk_ms_cache: dict[tuple[int, int], float] = {}
        self.overhead_s = pool.model.prefill_overhead_ms / 1000.0
        self.kv_transfer_s_per_token = pool.engine.kv_bytes_per_token * 8 / (pool.engine.kv_transfer_gbps * 1e9)

    def enqueue(self, replica: Replica, request: int, now: float) -> None:
        replica.prefill_queue.append([request, 0])
        replica.queued_prefill_tokens += self.reqs.input[request]
        if not replica.busy and not replica.start_pending:
            # The scheduler picks up new prompts at the next step boundary, so prompts that arrive
            # together are prefilled together (as in a real engine), not one by one.
            replica.start_pending = True
            self.schedule(now + self.decode.to_step_boundary(replica), EV_START, replica)

    def on_start(self, replica: Replica, now: float) -> None:
        replica.start_pending = False
        if not replica.busy and replica.prefill_queue and replica.state != RETIRED:
            self._start_iteration(replica, now)

    def _start_iteration(self, replica: Replica, now: float) -> None:
        """Plan one iteration: prefill chunks up to the token budget (+ one decode step in agg)."""
        decodes = not self.handoff
        if decodes:
            self.decode.advance(replica, now)
        budget = self.max_batch_tokens - replica.batch
        if budget < 1:
            budget = 1
        if self.queue_timeout_s is not None:
            self._drop_expired_prompts(replica, now)
            if not replica.prefill_queue:
                replica.busy = False
                if decodes:
                    self.decode.reschedule(replica, now)
                self.pool.maybe_retire(replica, now)
                return
        plan, prefill_ms = self._plan(replica, budget)
        dt = prefill_ms / 1000.0
        if replica.batch:
            dt += self.decode.itl_s(replica)
        else:
            dt += self.overhead_s
        replica.busy = True
        replica.plan = plan
        replica.iter_dt = dt
        if decodes:
            self.decode.reschedule(replica, now)
        self.schedule(now + dt, EV_ITER_END, replica)

    def _plan(self, replica: Replica, budget: int) -> tuple[list[tuple[list[int], int]], float]:
        """Chunks of queued prompts, in order, up to ``budget`` tokens, and their prefill time (ms).
        A prompt planned for the first time is counted and takes its cached prefix."""
        inputs = self.reqs.input
        chunk_ms = self.chunk_ms
        chunk_ms_cache = self._chunk_ms_cache
        cache = replica.prefix_cache
        hashes = self.reqs.hashes if cache is not None else None
        stats = self.stats
        plan = []
        prefill_ms = 0.0
        for item in replica.prefill_queue:
            if not item[1]:  # first planned here: count it, reuse its cached prefix
                stats.prefill_input_tokens += inputs[item[0]]
                if hashes is not None and cache is not None:
                    request_hashes = hashes[item[0]]
                    hit = cache.take(request_hashes, inputs[item[0]]) if request_hashes else 0
                    if hit:
                        item[1] = hit
                        replica.queued_prefill_tokens -= hit
                        stats.prefix_hit_tokens += hit
            done = item[1]
            remaining = inputs[item[0]] - done
            take = remaining if remaining < budget else budget
            key = (done, take)
            cost = chunk_ms_cache.get(key)
            if cost is None:
                if len(chunk_ms_cache) >= CHUNK_COSTS_KEPT:
                    chunk_ms_cache.clear()  # prefix hits make ``done`` arbitrary: keep memory bounded
                cost = chunk_ms_cache[key] = chunk_ms(done, take)
            prefill_ms += cost
            plan.append((item, take))
            budget -= take
            if budget <= 0:
                break
        return plan, prefill_ms

    def _drop_expired_prompts(self, replica: Replica, now: float) -> None:
        """Queued prompts not started yet that waited past the timeout (FIFO: the oldest come
        first, so the scan stops at the first one still in time)."""
        kept: deque[list[int]] = deque()
        queue = replica.prefill_queue
        pool = self.pool
        while queue:
            item = queue[0]
            if item[1] > 0:  # started: it finishes
                kept.append(queue.popleft())
                continue
            if not pool.expired(item[0], now):
                break
            queue.popleft()
            replica.queued_prefill_tokens -= self.reqs.input[item[0]]
            pool.drop(replica, item[0], now, kv_reserved=not self.handoff)
        queue.extendleft(reversed(kept))

    def on_iteration_end(self, replica: Replica, now: float) -> None:
        decode = self.decode
        if not self.handoff:
            decode.advance(replica, now)
        done = self._finish_chunks(replica)
        # Still busy while completions run: callbacks that enqueue work must not start a second
        # iteration; the next one is started below.
        if self.handoff:
            self._hand_off(replica, done, now)
        else:
            decode.finish_due(replica, now)
            for request in done:
                decode.join(replica, request, now)
        replica.busy = False
        if replica.prefill_queue:
            self._start_iteration(replica, now)
        else:
            if not self.handoff:
                decode.reschedule(replica, now)
            self.pool.maybe_retire(replica, now)

    def _finish_chunks(self, replica: Replica) -> list[int]:
        """Credit the iteration's chunks; return the requests whose prompt is now complete (their
        blocks enter the prefix cache)."""
        stats = self.stats
        stats.iterations += 1
        stats.iteration_s += replica.iter_dt
        reqs = self.reqs
        done = []
        for item, take in replica.plan:
            item[1] += take
            replica.queued_prefill_tokens -= take
            stats.tokens += take
            if item[1] >= reqs.input[item[0]]:
                done.append(item[0])
        for _ in done:
            replica.prefill_queue.popleft()
        replica.plan = []
        cache = replica.prefix_cache
        if cache is not None and reqs.hashes is not None:
            for request in done:
                request_hashes = reqs.hashes[request]
                if request_hashes:
                    cache.insert(request_hashes)
        return done

    def _hand_off(self, replica: Replica, done: list[int], now: float) -> None:
        """Disaggregated: each completed prompt's KV travels to the decode pool's router."""
        if not done:
            return
        next_pool = self.pool.next_pool
        if next_pool is None:
            raise RuntimeError(f"prefill pool of {self.pool.deployment} has no decode pool to hand off to")
        inputs = self.reqs.input
        schedule = self.schedule
        router = next_pool.router
        for request in done:
            replica.load -= inputs[request]
            schedule(now + inputs[request] * self.kv_transfer_s_per_token, EV_KV_ARRIVE, request, router)
