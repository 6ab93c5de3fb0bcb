"""The discrete-event core: replicas, pools, the router and the event loop.

Speed comes from the decode model: a replica's continuous batch is one cumulative counter ``V``
(tokens emitted per running sequence since the replica started) advancing at ``1/iteration time``.
A sequence that joins at ``V0`` with ``k`` tokens left finishes when ``V`` reaches ``V0 + k``, so a
heap of thresholds replaces per-iteration events: the loop only wakes on arrivals, prefill
iterations, KV transfers, decode completions, replica starts and planner ticks.

All times are seconds; engine profiles speak milliseconds and are converted at the call site.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass

from fleet_planner.perf import PerfModel

# Replica states
STARTING, READY, DRAINING, RETIRED = range(4)

# Event kinds
EV_READY, EV_ITER_END, EV_DECODE, EV_KV_ARRIVE, EV_START, EV_CALL = range(6)

_EPS = 1e-9
PREFIX_BLOCK_TOKENS = 512  # tokens per prefix-cache block (Mooncake ``hash_ids`` granularity)


@dataclass(frozen=True)
class EngineKnobs:
    """Serving-engine settings that shape latency but are not in the profile."""

    max_batch_tokens: int = 8192  # prefill token budget per iteration (chunked prefill)
    max_num_seqs: int = 256  # decode batch cap
    kv_bytes_per_token: int = 131072  # KV cache size of one token (Llama-3.1-8B, fp16: 128 KiB)
    kv_transfer_gbps: float = 50.0  # prefill -> decode KV transfer bandwidth
    prefix_cache: bool = True  # prefill/agg replicas reuse cached KV prefixes (needs trace hash_ids)
    prefix_cache_blocks: int | None = None  # LRU capacity in 512-token blocks; None: max KV tokens / 512


class Requests:
    """Per-request state as parallel Python lists (fast scalar access; grows for closed loops)."""

    __slots__ = ("arrival", "deployment", "endpoint", "hashes", "input", "output", "rejected", "t_finish", "t_first")

    def __init__(self) -> None:
        self.arrival: list[float] = []
        self.input: list[int] = []
        self.output: list[int] = []
        self.endpoint: list[int] = []
        self.deployment: list[int] = []
        self.t_first: list[float] = []
        self.t_finish: list[float] = []
        self.rejected: list[bool] = []
        self.hashes: list[list[int] | None] | None = None  # prefix-block ids per request, if any

    def add(self, arrival: float, input_tokens: int, output_tokens: int, endpoint: int) -> int:
        self.arrival.append(arrival)
        self.input.append(input_tokens)
        self.output.append(output_tokens)
        self.endpoint.append(endpoint)
        self.deployment.append(-1)
        self.t_first.append(math.nan)
        self.t_finish.append(math.nan)
        self.rejected.append(False)
        if self.hashes is not None:
            self.hashes.append(None)
        return len(self.arrival) - 1

    def __len__(self) -> int:
        return len(self.arrival)


class PoolStats:
    """Per-interval accumulators a pool fills while running; read and reset at each collection."""

    __slots__ = (
        "admitted",
        "input_tokens",
        "iteration_s",
        "iterations",
        "itl_ms",
        "output_tokens",
        "prefill_input_tokens",
        "prefix_hit_tokens",
        "tokens",
        "ttft_ms",
    )

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.admitted = 0
        self.input_tokens: list[int] = []
        self.output_tokens: list[int] = []
        self.ttft_ms: list[float] = []
        self.itl_ms: list[float] = []
        self.iterations = 0
        self.iteration_s = 0.0
        self.tokens = 0.0
        self.prefix_hit_tokens = 0  # prompt tokens served from the prefix cache
        self.prefill_input_tokens = 0  # prompt tokens of requests whose prefill started


class Replica:
    """One engine instance. Prefill replicas run token-budget iterations; decode replicas run a
    continuous batch; aggregated replicas mix prefill chunks into decode iterations."""

    __slots__ = (
        "batch",
        "busy",
        "context_sum",
        "counter",
        "created_at",
        "due",
        "epoch",
        "finish_heap",
        "iter_dt",
        "kv_reserved",
        "load",
        "plan",
        "pool",
        "prefill_queue",
        "prefix_cache",
        "queued_prefill_tokens",
        "rate",
        "ready_at",
        "start_pending",
        "state",
        "t_last",
        "wait_queue",
    )

    def __init__(self, pool: Pool, now: float):
        self.pool = pool
        self.state = STARTING
        self.created_at = now
        self.ready_at = now + pool.startup_s
        self.prefill_queue: deque[list] = deque()  # [request, tokens_done]
        self.queued_prefill_tokens = 0
        self.busy = False
        self.plan: list[tuple[list, int]] = []
        self.iter_dt = 0.0
        self.counter = 0.0
        self.rate = 0.0
        self.t_last = now
        self.finish_heap: list[tuple[float, int]] = []
        self.batch = 0
        self.context_sum = 0.0
        self.kv_reserved = 0  # KV tokens reserved by running + queued requests
        self.wait_queue: deque[int] = deque()  # requests waiting for KV capacity / batch slot
        self.epoch = 0
        self.load = 0  # outstanding tokens assigned here (router's least-load key)
        self.start_pending = False  # an iteration start is scheduled at the next step boundary
        self.due = 0.0  # counter value the armed decode event is for
        # LRU of cached prefix-block ids (prefill-capable replicas with the cache enabled only).
        self.prefix_cache: OrderedDict[int, None] | None = OrderedDict() if pool.prefix_blocks else None

    def idle(self) -> bool:
        return not self.busy and self.batch == 0 and not self.prefill_queue and not self.wait_queue


class Pool:
    """A set of identical replicas of one role in one deployment, with its router and stats."""

    def __init__(
        self,
        sim: Simulator,
        deployment_index: int,
        deployment: str,
        role: str,
        model: PerfModel,
        gpu_type: str,
        gpus_per_replica: int,
        startup_s: float,
        knobs: EngineKnobs,
        max_input_tokens: int | None,
        queue_timeout_s: float | None = None,
    ):
        self.sim = sim
        self.queue_timeout_s = queue_timeout_s
        self.deployment_index = deployment_index
        self.deployment = deployment
        self.role = role
        self.model = model
        self.gpu_type = gpu_type
        self.gpus_per_replica = gpus_per_replica
        self.startup_s = startup_s
        self.knobs = knobs
        limits = [v for v in (max_input_tokens, model.max_context) if v]
        self.max_input_tokens = min(limits) if limits else None
        self.max_kv = int(model.max_kv_tokens)
        self.overhead_s = model.prefill_overhead_ms / 1000.0
        self.kv_transfer_s_per_token = knobs.kv_bytes_per_token * 8 / (knobs.kv_transfer_gbps * 1e9)
        self.prefix_blocks = 0  # prefix-cache capacity per replica, blocks (0: no cache)
        if knobs.prefix_cache and role in ("prefill", "agg"):
            blocks = knobs.prefix_cache_blocks
            self.prefix_blocks = max(0, blocks if blocks is not None else self.max_kv // PREFIX_BLOCK_TOKENS)
        self.replicas: list[Replica] = []  # alive: starting, ready, draining
        self.ready: list[Replica] = []
        self.pending = 0  # replicas wanted but waiting for free GPUs
        self.target = 0
        self.queue: deque[int] = deque()  # requests waiting for any ready replica
        self.next_pool: Pool | None = None  # prefill -> decode hand-off
        self.entry_pool: Pool = self  # where the deployment's requests enter (TTFT is its metric)
        self.gpus_held = 0
        self.gpu_seconds = 0.0
        self._gpu_t = 0.0
        self.stats = PoolStats()
        self._itl_cache: dict[tuple[int, int], float] = {}

    # ---- accounting -------------------------------------------------------------------------
    def _account(self, now: float, delta_gpus: int) -> None:
        self.gpu_seconds += self.gpus_held * (min(now, self.sim.end_s) - min(self._gpu_t, self.sim.end_s))
        self._gpu_t = now
        self.gpus_held += delta_gpus
        self.sim.gpu_delta(self.gpu_type, delta_gpus)

    def counts(self) -> tuple[int, int, int]:
        starting = ready = draining = 0
        for r in self.replicas:
            if r.state == READY:
                ready += 1
            elif r.state == STARTING:
                starting += 1
            elif r.state == DRAINING:
                draining += 1
        return ready, starting, draining

    def active_count(self) -> int:
        """Replicas that count toward the target: ready, starting and pending (not draining)."""
        return sum(1 for r in self.replicas if r.state in (READY, STARTING)) + self.pending

    # ---- scaling ----------------------------------------------------------------------------
    def set_target(self, target: int, now: float) -> None:
        self.target = target
        current = self.active_count()
        if target > current:
            self.pending += target - current
            self.sim.start_pending(now)
        elif target < current:
            self._shrink(current - target, now)

    def start_replica(self, now: float) -> None:
        replica = Replica(self, now)
        self.replicas.append(replica)
        self._account(now, self.gpus_per_replica)
        self.sim.schedule(replica.ready_at, EV_READY, replica)

    def _shrink(self, count: int, now: float) -> None:
        cancel = min(count, self.pending)
        self.pending -= cancel
        count -= cancel
        # Replicas still starting hold GPUs but no work: stop the newest first.
        for replica in sorted((r for r in self.replicas if r.state == STARTING), key=lambda r: -r.created_at):
            if count == 0:
                break
            self._retire(replica, now)
            count -= 1
        # Ready replicas drain: no new work, in-flight work finishes, GPUs held until empty.
        for replica in sorted(self.ready, key=lambda r: r.load):
            if count == 0:
                break
            replica.state = DRAINING
            self.ready.remove(replica)
            count -= 1
            if replica.idle():
                self._retire(replica, now)

    def _retire(self, replica: Replica, now: float) -> None:
        replica.state = RETIRED
        replica.epoch += 1
        self.replicas.remove(replica)
        self._account(now, -self.gpus_per_replica)
        self.sim.start_pending(now)

    def on_ready(self, replica: Replica, now: float) -> None:
        if replica.state != STARTING:
            return
        replica.state = READY
        replica.t_last = now
        self.ready.append(replica)
        queued, self.queue = self.queue, deque()
        for request in queued:
            if self._expired(request, now):
                self._drop(None, request, now, kv_reserved=False)
            else:
                self._dispatch(request, now)

    def _expired(self, request: int, now: float) -> bool:
        timeout = self.queue_timeout_s
        return timeout is not None and now - self.sim.requests.arrival[request] > timeout

    def _drop(self, replica: Replica | None, request: int, now: float, kv_reserved: bool) -> None:
        """A request timed out while queued: the frontend gave up on it (counted as rejected)."""
        reqs = self.sim.requests
        if replica is not None:
            replica.load -= (
                reqs.input[request] if self.role == "prefill" else reqs.input[request] + reqs.output[request]
            )
            if kv_reserved:
                replica.kv_reserved -= reqs.input[request] + reqs.output[request]
        reqs.rejected[request] = True
        self.sim.completed(request, now)

    def maybe_retire(self, replica: Replica, now: float) -> None:
        if replica.state == DRAINING and replica.idle():
            self._retire(replica, now)

    # ---- routing ----------------------------------------------------------------------------
    def submit(self, request: int, now: float) -> None:
        stats = self.stats
        stats.admitted += 1
        reqs = self.sim.requests
        stats.input_tokens.append(reqs.input[request])
        stats.output_tokens.append(reqs.output[request])
        self._dispatch(request, now)

    def _dispatch(self, request: int, now: float) -> None:
        if not self.ready:
            self.queue.append(request)
            return
        reqs = self.sim.requests
        best = self.ready[0]
        if len(self.ready) > 1:
            hashes = reqs.hashes[request] if self.prefix_blocks and reqs.hashes is not None else None
            if hashes:
                # KV-aware (like Dynamo's router): most cached prefix tokens net of queued work.
                limit = reqs.input[request] - 1
                best_score = -math.inf
                for replica in self.ready:
                    cached = _cached_prefix(replica.prefix_cache, hashes, limit)
                    score = cached - replica.load
                    if score > best_score:
                        best, best_score = replica, score
            else:
                best_load = best.load
                for replica in self.ready:
                    if replica.load < best_load:
                        best, best_load = replica, replica.load
        if self.role == "prefill":
            best.load += reqs.input[request]
            self._enqueue_prefill(best, request, now)
        else:
            best.load += reqs.input[request] + reqs.output[request]
            self._admit_or_wait(best, request, now)

    # ---- prefill ----------------------------------------------------------------------------
    def _enqueue_prefill(self, replica: Replica, request: int, now: float) -> None:
        replica.prefill_queue.append([request, 0])
        replica.queued_prefill_tokens += self.sim.requests.input[request]
        if not replica.busy and not replica.start_pending:
            # The scheduler picks up new prompts at the next step boundary, so prompts that arrive
            # together are prefilled together (as in a real engine), not one by one.
            replica.start_pending = True
            self.sim.schedule(now + self._to_step_boundary(replica), EV_START, replica)

    def _to_step_boundary(self, replica: Replica) -> float:
        if not replica.batch or not replica.rate:
            return 0.0
        progressed = replica.counter + replica.rate * (self.sim.now - replica.t_last)
        return (math.ceil(progressed - 1e-6) - progressed) / replica.rate

    def on_start(self, replica: Replica, now: float) -> None:
        replica.start_pending = False
        if not replica.busy and replica.prefill_queue and replica.state != RETIRED:
            self._start_iteration(replica, now)

    def _start_iteration(self, replica: Replica, now: float) -> None:
        """Plan one iteration: prefill chunks up to the token budget (+ one decode step in agg)."""
        self._advance(replica, now)
        budget = self.knobs.max_batch_tokens - replica.batch
        if budget < 1:
            budget = 1
        if self.queue_timeout_s is not None:
            self._drop_expired_prompts(replica, now)
            if not replica.prefill_queue:
                replica.busy = False
                self._reschedule(replica, now)
                self.maybe_retire(replica, now)
                return
        inputs = self.sim.requests.input
        chunk_ms = self.model.prefill_chunk_ms
        cache = replica.prefix_cache
        hashes = self.sim.requests.hashes if cache is not None else None
        stats = self.stats
        plan = []
        prefill_ms = 0.0
        for item in replica.prefill_queue:
            if not item[1]:  # first planned here: count it, reuse its cached prefix
                stats.prefill_input_tokens += inputs[item[0]]
                if hashes is not None and hashes[item[0]]:
                    hit = self._prefix_hit(cache, hashes[item[0]], inputs[item[0]])
                    if hit:
                        item[1] = hit
                        replica.queued_prefill_tokens -= hit
                        stats.prefix_hit_tokens += hit
            remaining = inputs[item[0]] - item[1]
            take = remaining if remaining < budget else budget
            prefill_ms += chunk_ms(item[1], take)
            plan.append((item, take))
            budget -= take
            if budget <= 0:
                break
        dt = prefill_ms / 1000.0
        if replica.batch:
            dt += self._itl_s(replica)
        else:
            dt += self.overhead_s
        replica.busy = True
        replica.plan = plan
        replica.iter_dt = dt
        self._reschedule(replica, now)
        self.sim.schedule(now + dt, EV_ITER_END, replica)

    def _drop_expired_prompts(self, replica: Replica, now: float) -> None:
        """Queued prompts not started yet that waited past the timeout (FIFO: the oldest come
        first, so the scan stops at the first one still in time)."""
        kept = deque()
        queue = replica.prefill_queue
        while queue:
            item = queue[0]
            if item[1] > 0:  # started: it finishes
                kept.append(queue.popleft())
                continue
            if not self._expired(item[0], now):
                break
            queue.popleft()
            replica.queued_prefill_tokens -= self.sim.requests.input[item[0]]
            self._drop(replica, item[0], now, kv_reserved=self.role == "agg")
        queue.extendleft(reversed(kept))

    def on_iteration_end(self, replica: Replica, now: float) -> None:
        self._advance(replica, now)
        stats = self.stats
        stats.iterations += 1
        stats.iteration_s += replica.iter_dt
        reqs = self.sim.requests
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
                if reqs.hashes[request]:
                    self._prefix_insert(cache, reqs.hashes[request])
        # Still busy while completions run: callbacks that enqueue work must not start a second
        # iteration; the next one is started below.
        if self.role == "prefill":
            for request in done:
                replica.load -= reqs.input[request]
                self.sim.schedule(
                    now + reqs.input[request] * self.kv_transfer_s_per_token, EV_KV_ARRIVE, request, self.next_pool
                )
        else:
            self._finish_due(replica, now)
            for request in done:
                self._join_decode(replica, request, now)
        replica.busy = False
        if replica.prefill_queue:
            self._start_iteration(replica, now)
        else:
            self._reschedule(replica, now)
            self.maybe_retire(replica, now)

    # ---- prefix cache -----------------------------------------------------------------------
    def _prefix_hit(self, cache: OrderedDict, hashes: list[int], input_tokens: int) -> int:
        """Prompt tokens already cached: the request's leading blocks found (stop at the first
        miss), at most ``input - 1`` (the last token is always computed); hits become most recent."""
        hit = 0
        for block in hashes:
            if block not in cache:
                break
            cache.move_to_end(block)
            hit += PREFIX_BLOCK_TOKENS
        return min(hit, input_tokens - 1)

    def _prefix_insert(self, cache: OrderedDict, hashes: list[int]) -> None:
        """A prompt's blocks become cached once its prefill completed (blocks being computed are
        not shareable yet, as in vLLM); least recently used blocks are evicted past capacity."""
        for block in hashes:
            cache[block] = None
            cache.move_to_end(block)
        excess = len(cache) - self.prefix_blocks
        for _ in range(excess):
            cache.popitem(last=False)

    # ---- decode -----------------------------------------------------------------------------
    def _admit_or_wait(self, replica: Replica, request: int, now: float) -> None:
        reqs = self.sim.requests
        need = reqs.input[request] + reqs.output[request]
        if replica.wait_queue or not self._fits(replica, need):
            replica.wait_queue.append(request)
            return
        self._admit(replica, request, need, now)

    def _fits(self, replica: Replica, need: int) -> bool:
        admitted = replica.batch + len(replica.prefill_queue)
        # A request larger than the whole cache is admitted alone rather than waiting forever.
        return admitted < self.knobs.max_num_seqs and (replica.kv_reserved + need <= self.max_kv or admitted == 0)

    def _admit(self, replica: Replica, request: int, need: int, now: float) -> None:
        replica.kv_reserved += need
        if self.role == "agg":
            self._enqueue_prefill(replica, request, now)
        else:
            self._join_decode(replica, request, now)

    def _admit_waiting(self, replica: Replica, now: float) -> None:
        reqs = self.sim.requests
        queue = replica.wait_queue
        while queue:
            request = queue[0]
            if self._expired(request, now):
                queue.popleft()
                self._drop(replica, request, now, kv_reserved=False)
                continue
            need = reqs.input[request] + reqs.output[request]
            if not self._fits(replica, need):
                return
            queue.popleft()
            self._admit(replica, request, need, now)

    def _join_decode(self, replica: Replica, request: int, now: float) -> None:
        """The request has its first token; it now decodes ``output - 1`` more tokens."""
        reqs = self.sim.requests
        reqs.t_first[request] = now
        self.sim.first_token(request, self, now)
        remaining = reqs.output[request] - 1
        if remaining <= 0:
            self._complete(replica, request, now)
            return
        self._advance(replica, now)
        heapq.heappush(replica.finish_heap, (replica.counter + remaining, request))
        replica.batch += 1
        replica.context_sum += reqs.input[request] + 0.5 * reqs.output[request]
        if not replica.busy:
            self._reschedule(replica, now)

    def _advance(self, replica: Replica, now: float) -> None:
        if replica.rate:
            progressed = replica.rate * (now - replica.t_last)
            replica.counter += progressed
            self.stats.tokens += progressed * replica.batch
        replica.t_last = now

    def _itl_s(self, replica: Replica) -> float:
        batch = replica.batch
        context = replica.context_sum / batch
        key = (batch, int(context) >> 6)
        cached = self._itl_cache.get(key)
        if cached is None:
            cached = self.model.itl_ms(batch, float((key[1] << 6) + 32)) / 1000.0
            self._itl_cache[key] = cached
        return cached

    def _reschedule(self, replica: Replica, now: float) -> None:
        """Recompute the decode rate after the batch or iteration changed; re-arm the next finish."""
        replica.epoch += 1
        if not replica.batch:
            replica.rate = 0.0
            return
        if replica.busy:
            replica.rate = 1.0 / replica.iter_dt  # finishes are handled at the iteration end
            return
        itl = self._itl_s(replica)
        replica.rate = 1.0 / itl
        replica.due = replica.finish_heap[0][0]
        gap = replica.due - replica.counter
        self.sim.schedule(now + max(gap, 0.0) * itl, EV_DECODE, replica, replica.epoch)

    def on_decode_event(self, replica: Replica, epoch: int, now: float) -> None:
        if epoch != replica.epoch:
            return
        self._advance(replica, now)
        # The event was armed for this counter value; rounding of large clock values must not
        # leave it a hair short (that re-arms the same instant forever).
        if replica.counter < replica.due:
            replica.counter = replica.due
        self._finish_due(replica, now)
        self._admit_waiting(replica, now)
        if not replica.busy:
            self._reschedule(replica, now)
        self.maybe_retire(replica, now)

    def _finish_due(self, replica: Replica, now: float) -> None:
        heap = replica.finish_heap
        reqs = self.sim.requests
        limit = replica.counter + _EPS
        while heap and heap[0][0] <= limit:
            _, request = heapq.heappop(heap)
            replica.batch -= 1
            replica.context_sum -= reqs.input[request] + 0.5 * reqs.output[request]
            self._complete(replica, request, now)
        if not replica.batch:
            replica.context_sum = 0.0
        if self.role == "agg" and replica.wait_queue:
            self._admit_waiting(replica, now)

    def _complete(self, replica: Replica, request: int, now: float) -> None:
        reqs = self.sim.requests
        need = reqs.input[request] + reqs.output[request]
        replica.kv_reserved -= need
        replica.load -= need
        reqs.t_finish[request] = now
        output = reqs.output[request]
        if output > 1:
            self.stats.itl_ms.append((now - reqs.t_first[request]) * 1000.0 / (output - 1))
        self.sim.completed(request, now)


def _cached_prefix(cache: OrderedDict | None, hashes: list[int], limit: int) -> int:
    """Prompt tokens of ``hashes`` cached on a replica (leading blocks only), without touching LRU order."""
    if not cache:
        return 0
    hit = 0
    for block in hashes:
        if block not in cache:
            break
        hit += PREFIX_BLOCK_TOKENS
    return min(hit, limit)


class Simulator:
    """Event loop, GPU inventory and the hooks that connect pools to the traffic source."""

    def __init__(self, inventory: dict[str, int], end_s: float):
        self.inventory = dict(inventory)
        self.gpus_in_use = dict.fromkeys(inventory, 0)
        self.max_gpus_in_use = dict.fromkeys(inventory, 0)
        self.end_s = end_s
        self.now = 0.0
        self.requests = Requests()
        self.pools: list[Pool] = []
        self._heap: list[tuple] = []
        self._seq = itertools.count()
        self.on_complete: Callable[[int, float], None] | None = None
        self._next_arrival = 0

    def schedule(self, time: float, kind: int, a: object = None, b: object = None) -> None:
        heapq.heappush(self._heap, (time, next(self._seq), kind, a, b))

    def gpu_delta(self, gpu_type: str, delta: int) -> None:
        used = self.gpus_in_use.get(gpu_type, 0) + delta
        self.gpus_in_use[gpu_type] = used
        if used > self.max_gpus_in_use.get(gpu_type, 0):
            self.max_gpus_in_use[gpu_type] = used

    def start_pending(self, now: float) -> None:
        """Start wanted replicas, in pool order, while their GPU type has free GPUs.

        Like a pending pod, a replica that does not fit waits; the inventory is never exceeded."""
        for pool in self.pools:
            while pool.pending:
                free = self.inventory.get(pool.gpu_type, 0) - self.gpus_in_use.get(pool.gpu_type, 0)
                if free < pool.gpus_per_replica:
                    break
                pool.pending -= 1
                pool.start_replica(now)

    def first_token(self, request: int, pool: Pool, now: float) -> None:
        pool.entry_pool.stats.ttft_ms.append((now - self.requests.arrival[request]) * 1000.0)

    def completed(self, request: int, now: float) -> None:
        if self.on_complete is not None:
            self.on_complete(request, now)

    def run(self, stop_s: float, arrivals: list[float], on_arrival: Callable[[int, float], None]) -> None:
        """Process events and arrivals up to ``stop_s`` (resumable: call again with a later stop).

        ``arrivals`` is sorted; request ``i`` arrives at ``arrivals[i]`` and is handed to
        ``on_arrival``. Merging this pointer with the heap keeps arrivals out of the heap."""
        heap = self._heap
        pop = heapq.heappop
        index = self._next_arrival
        count = len(arrivals)
        inf = math.inf
        while True:
            t_arrival = arrivals[index] if index < count else inf
            t_event = heap[0][0] if heap else inf
            if t_arrival <= t_event:
                if t_arrival > stop_s:
                    break
                self.now = t_arrival
                on_arrival(index, t_arrival)
                index += 1
                continue
            if t_event > stop_s:
                break
            now, _, kind, a, b = pop(heap)
            self.now = now
            if kind == EV_DECODE:
                a.pool.on_decode_event(a, b, now)
            elif kind == EV_ITER_END:
                a.pool.on_iteration_end(a, now)
            elif kind == EV_KV_ARRIVE:
                b.submit(a, now)
            elif kind == EV_START:
                a.pool.on_start(a, now)
            elif kind == EV_READY:
                a.pool.on_ready(a, now)
            else:
                a(now)
        self._next_arrival = index
        self.now = max(self.now, stop_s) if stop_s < inf else self.now

    def idle(self) -> bool:
        """True when no request is in flight anywhere."""
        return all(not pool.queue and all(r.idle() for r in pool.replicas) for pool in self.pools) and not any(
            kind == EV_KV_ARRIVE for _, _, kind, _, _ in self._heap
        )
